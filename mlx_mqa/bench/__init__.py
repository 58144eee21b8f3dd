"""The benchmark: MHA vs GQA vs MQA T5 in MLX (speed, memory, ROUGE) beside the PyTorch reference.

`python -m mlx_mqa.bench --help`. Modules: `cli` (the command), `runner` (one run, step by step), `config`
(its settings), `variants` (model specs, cached conversions), `speed` and `memory` (timed runs, K/V bytes,
traffic model), `quality` and `rouge` (generation, ROUGE), `torch_reference`, `agreement`, `data`, `deps`
(optional packages), `results`, `report` (tables) and `plots`.
"""
