"""The benchmark: MHA vs GQA vs MQA T5 in MLX (speed, memory, ROUGE) beside the PyTorch reference.

`python -m mlx_mqa.bench --help`. The default run, end to end: `run` (`run(BenchConfig)`), its settings
`config`, and the command `cli`. The library it runs on: `variants` (model specs, conversion methods, cached
conversions), `data`, `deps` (optional packages), `speed` (one timed run) and `sweep` (the sweep, its
statistics and speedups), `memory` (K/V bytes, the traffic model), `quality` (generation, ROUGE, token
comparison) with `rouge` and `agreement`, `torch_reference`, `results` (environment, files, schema) and
`report` (tables, progress bars). Research runs beside it: `research.budget` (--memory-budget),
`research.footprint` (peak memory in a fresh process) and `research.plots` (figures).
"""
