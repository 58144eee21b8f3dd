"""The Linux CPU engine: what makes MLX's Linux CPU backend fast, behind one boundary.

MLX's Linux CPU wheel links a reference BLAS and runs elementwise ops (the softmax among them) scalar and
single-threaded. This package puts OpenBLAS under MLX through a C shim (`blas`), runs long attention and
decode steps over a large K/V in a C kernel (`kernel`, `attention`), multiplies many rows by dequantized
weights (`quantized`) and hands freed memory back to the system. The model reaches it only through
`mlx_mqa.engine`; on macOS nothing here is imported. Measurements: docs/linux_cpu_engine.md.

Importing this package imports no MLX: `blas` must load before mlx.core.
"""
