"""The benchmark: MHA vs GQA vs MQA T5 in MLX (speed, memory, ROUGE) beside the PyTorch reference.

`python -m mlx_mqa.bench --help`. `run.run(BenchConfig)` is the default run end to end; `config` its settings and
checks, `cli` the command. Library: `variants`, `data`, `speed` (one timed run, the traffic model), `sweep`,
`quality` with `rouge` and `agreement`, `torch_reference`, `results` (files, schema) and `report` (tables).
Research runs: `research.budget` (--memory-budget), `research.footprint` and `research.plots`.
"""
