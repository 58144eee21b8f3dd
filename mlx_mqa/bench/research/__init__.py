"""The benchmark's research runs, apart from the default `python bench.py` run (`mlx_mqa.bench.run`):
`budget` (with --memory-budget: per variant, the largest batch whose peak memory fits, and its tokens/s),
`footprint` (one speed run's peak memory, measured in a fresh process) and `plots` (the figures)."""
