"""Encoder time, MLX vs PyTorch, on this machine: t5-small and t5-base shapes at 512 and 2048 tokens, batch 1 and 8.

MLX runs the encoder as decoding does (`mlx_mqa.decoding.state.encode_bounded`: a few inputs at a time,
evaluated); PyTorch runs transformers' T5 encoder under inference_mode with its default threads. Random
weights (speed does not depend on them), float32, the two interleaved: 1 warm-up, then `--repeats` timed
runs each, medians. `--profile` adds where MLX's time goes in one encoder layer at one shape.

    .venv/bin/python docs/encoder_speed.py                # writes docs/encoder_speed.{json,md}

Run it on a quiet machine: it is a timing job.
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "shared" / "t5-configs"


def median_s(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def models(shape: str):
    import torch
    from transformers import T5Config, T5EncoderModel

    from mlx_mqa.models.config import ModelArgs
    from mlx_mqa.models.t5 import Model

    config = json.loads((CONFIGS / f"{shape}.json").read_text())
    mlx_model = Model(ModelArgs.from_dict(config))
    mx.eval(mlx_model.parameters())
    torch.manual_seed(0)
    return mlx_model, T5EncoderModel(T5Config(**config)).eval()


def time_pair(mlx_model, torch_model, batch: int, length: int, repeats: int) -> dict:
    import torch

    try:
        from mlx_mqa.decoding.state import encode_bounded
    except ImportError:  # an older mlx_mqa (--checkout-style comparisons): its one-graph encoder

        def encode_bounded(model, ids, mask):
            return model.encode(ids, mask)

    ids = np.random.default_rng(0).integers(3, 32000, (batch, length)).astype(np.int32)
    mids, tids = mx.array(ids), torch.tensor(ids, dtype=torch.long)

    def run_mlx():
        mx.eval(encode_bounded(mlx_model, mids, None))

    def run_torch():
        with torch.inference_mode():
            torch_model(input_ids=tids)

    m = median_s(run_mlx, 1, repeats)
    t = median_s(run_torch, 1, repeats)
    return {"batch": batch, "length": length, "mlx_s": m, "torch_s": t, "ratio": m / t}


def profile(mlx_model, length: int, repeats: int) -> dict:
    """Median ms of the parts of one encoder layer (block 1) at batch 1, each evaluated alone."""
    from mlx_mqa.models.base import scaled_dot_product_attention as attention

    args, block = mlx_model.args, mlx_model.encoder.block[1]
    att, ff = block.layer[0].SelfAttention, block.layer[1]
    x = mx.random.normal((1, length, args.d_model))
    bias = mlx_model.encoder.bias_owner.position_bias(length, length)
    H, D = args.num_heads, args.d_kv
    q, k, v = (p(x).reshape(1, length, H, D).transpose(0, 2, 1, 3) for p in (att.q, att.k, att.v))
    mx.eval(x, bias, q, k, v)
    parts = {
        "q, k, v, o projections": lambda: mx.eval(att.q(x), att.k(x), att.v(x), att.o(x)),
        "attention (scores, softmax, values)": lambda: mx.eval(attention(q, k, v, bias)),
        "feed-forward layer (norm, 2 matmuls, relu, residual)": lambda: mx.eval(ff(x)),
        "self-attention layer (norm, projections, attention, residual)": lambda: mx.eval(block.layer[0](x, bias)),
        "position bias (once per encoder)": lambda: mx.eval(mlx_model.encoder.bias_owner.position_bias(length, length)),
    }
    return {name: 1e3 * median_s(fn, 1, repeats) for name, fn in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="t5-small,t5-base")
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", default="t5-base:2048", help="SHAPE:LENGTH to profile, or '' for none")
    a = p.parse_args()
    from mlx_mqa.bench.results import environment
    from mlx_mqa.checkpoint.files import atomic_write_json

    rows, prof = [], None
    for shape in a.shapes.split(","):
        mlx_model, torch_model = models(shape)
        for length in (int(x) for x in a.lengths.split(",")):
            for batch in (int(x) for x in a.batches.split(",")):
                rows.append({"shape": shape, **time_pair(mlx_model, torch_model, batch, length, a.repeats)})
                print(rows[-1], flush=True)
        if a.profile and a.profile.split(":")[0] == shape:
            prof = {"at": a.profile, "ms": profile(mlx_model, int(a.profile.split(":")[1]), a.repeats)}
    result = {"environment": environment("float32", "cpu"), "settings": vars(a), "rows": rows, "profile": prof}
    atomic_write_json(HERE / "encoder_speed.json", result)
    (HERE / "encoder_speed.md").write_text(table(result) + "\n")
    print(table(result))


def table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"CPU: {env['cpu']}, {env['cpu_count']} cores; float32, random weights; medians of "
        f"{result['settings']['repeats']} runs after 1 warm-up, MLX and PyTorch interleaved.",
        "",
        "| shape | tokens | batch | MLX s | PyTorch s | MLX / PyTorch | MLX s per input |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['shape']} | {r['length']} | {r['batch']} | {r['mlx_s']:.3f} | {r['torch_s']:.3f} | "
            f"{r['ratio']:.2f}x | {r['mlx_s'] / r['batch']:.3f} |"
        )
    if result["profile"]:
        lines += ["", f"One MLX encoder layer at {result['profile']['at']} (batch 1), median ms:", ""]
        lines += [f"- {name}: {ms:.0f}" for name, ms in result["profile"]["ms"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
