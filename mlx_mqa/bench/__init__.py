"""The benchmark: MHA vs GQA vs MQA T5 in MLX (speed, memory, ROUGE) beside the PyTorch reference.

`python -m mlx_mqa.bench --help`. Modules: `cli` (the command), `runner` (one run, step by step: prepare,
speed, write), `quality_steps` (its quality and agreement steps), `state` (what the steps share), `config`
(the run's settings), `variants` (model specs, conversion methods, cached conversions), `speed` (timed runs),
`sweep` (the sweep, its statistics and speedups), `memory` (K/V bytes, traffic model), `quality` and `rouge`
(generation, ROUGE), `torch_reference`, `agreement`, `data`, `deps` (optional packages), `results`, `report`
(tables) and `plots`.
"""
