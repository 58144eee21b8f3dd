#!/usr/bin/env bash
# The benchmark runs behind docs/bench/README.md (random weights of real T5 shapes; CPU here).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}

# Fast decoding: t5-small MHA float32 vs 8/4-bit vs transformers, batch 1, 512 in / 128 out; greedy and
# 4-beam generation on real CNN/DailyMail inputs; quantized-vs-float logits agreement.
$PY bench.py --model random:t5-small --kv-heads mha --quantize 8,4 --batch-sizes 1 --lengths 512x128 \
  --warmup 1 --repeats 3 --dataset bundled:cnn_dailymail --limit 6 --quality-lengths 512x64 \
  --num-beams 1,4 --torch-quality mha --bootstrap 200 --no-progress --out results/decode-t5-small

# t5-base: MHA float32 vs transformers, same setting (quantized t5-base left out: MLX's CPU quantized
# kernels are ~3x slower than float32 there, as the t5-small run shows, and take long on 2 cores).
$PY bench.py --model random:t5-base --kv-heads mha --batch-sizes 1 --lengths 512x128 --warmup 1 --repeats 3 \
  --no-quality --no-progress --out results/decode-t5-base

# MHA vs GQA vs MQA sweep: t5-base shape, 2048 in / 64 out, batch 1, 8, 16 (no warm-up: a run at these sizes
# takes tens of seconds, so first-use costs are negligible; one round to fit a 2-core box).
$PY bench.py --model random:t5-base --kv-heads 12,4,1 --batch-sizes 1,8,16 --lengths 2048x64 \
  --warmup 0 --repeats 1 --no-quality --no-progress --out results/sweep-t5-base-2048
# Batch 16, MHA vs PyTorch, 3 rounds: the closest of the sweep's MLX-vs-PyTorch comparisons.
$PY bench.py --model random:t5-base --kv-heads 12 --batch-sizes 16 --lengths 2048x64 --warmup 0 --repeats 3 \
  --no-quality --no-progress --out results/sweep-t5-base-2048-b16
# Decode step: compiled vs eager vs eager with the C kernel, by cross K/V size (sets KERNEL_KV_BYTES).
$PY docs/decode_step.py

# Long inputs (issue 11). Encoder time vs transformers (t5-small/base, 512/2048 tokens, batch 1/8), peak memory
# of MHA/GQA-4/MQA vs transformers at 2048 -> 64 in fresh processes, and the largest batch within 1.75 GiB.
$PY docs/encoder_speed.py
$PY docs/peak_memory.py
$PY bench.py --model random:t5-base --kv-heads 12,4,1 --lengths 2048x128 --memory-budget 1.75GB --no-speed \
  --no-quality --no-progress --out results/budget-t5-base-2048
