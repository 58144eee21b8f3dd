"""Decode step time on CPU: the compiled step, the eager step, and the eager step with the C attention kernel.

Why: the C kernel reads a decode step's cross K/V once on every core, but cannot run inside a compiled step, and
each call costs a synchronisation; `mlx_mqa.cpu.attention.KERNEL_KV_BYTES` (the K/V size from which the
library's default step is the eager one with the kernel) comes from this table. t5-base shape with random
weights and random cross K/V (speed does not depend on their values), float32, greedy steps with the
self-attention cache filling up; for each setting the three steps run in turn, twice, and the faster median of
`--steps` steps (the first two dropped) is kept.

    .venv/bin/python docs/decode_step.py               # writes docs/decode_step.{json,md}

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

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "shared" / "t5-configs"


def model_of(shape: str, kv_heads: int):
    from mlx_mqa.models.config import ModelArgs
    from mlx_mqa.models.t5 import Model

    config = json.loads((CONFIGS / f"{shape}.json").read_text())
    model = Model(ModelArgs.from_dict({**config, "num_key_value_heads": kv_heads}))
    mx.eval(model.parameters())
    return model


def step_ms(model, cross, mask, steps: int, path: str) -> float:
    """Median ms of `steps` greedy steps after the first two: 'compiled', 'eager' or 'kernel' (eager + C kernel)."""
    from mlx_mqa.cpu import attention
    from mlx_mqa.decoding.compiled import compiled_decode_step
    from mlx_mqa.models.cache import StaticKVCache

    B = mask.shape[0]
    y = mx.zeros((B, 1), dtype=mx.int32)
    keep = attention.KERNEL_KV_BYTES
    attention.KERNEL_KV_BYTES = 0 if path == "kernel" else 2**62
    try:
        times = []
        if path == "compiled":
            G, D = model.args.num_key_value_heads, model.args.d_kv
            cache = [StaticKVCache.empty(B, G, steps, D, mx.float32) for _ in model.layers]
            step = compiled_decode_step(model, (B, steps, *cross[0].keys.shape))
            for _ in range(steps):
                t = time.perf_counter()
                out = step(y, cache[0].offset, [c.keys for c in cache], [c.values for c in cache],
                           [c.keys for c in cross], [c.values for c in cross], mask)  # fmt: skip
                mx.eval(out)
                for c, k, v in zip(cache, out[1], out[2]):
                    c.keys, c.values, c.offset = k, v, c.offset + 1
                times.append(time.perf_counter() - t)
        else:
            cache = model.make_cache(max_size=steps)
            for _ in range(steps):
                t = time.perf_counter()
                mx.eval(model.decode(y, cross, mask, cache))
                times.append(time.perf_counter() - t)
    finally:
        attention.KERNEL_KV_BYTES = keep
    return 1e3 * statistics.median(times[2:])


def time_setting(model, batch: int, length: int, steps: int) -> dict:
    from mlx_mqa.engine import current
    from mlx_mqa.models.cache import CrossKV

    G, D = model.args.num_key_value_heads, model.args.d_kv
    shape = (batch, G, length, D)
    cross = [CrossKV(mx.random.normal(shape), mx.random.normal(shape)) for _ in model.layers]
    mask = mx.ones((batch, length), dtype=mx.int32)
    mx.eval([c.keys for c in cross], [c.values for c in cross], mask)
    runs = [{p: step_ms(model, cross, mask, steps, p) for p in ("compiled", "eager", "kernel")} for _ in range(2)]
    ms = {p: min(r[p] for r in runs) for p in runs[0]}
    return {
        "kv_heads": G,
        "batch": batch,
        "length": length,
        "kv_mib_per_layer": (cross[0].keys.nbytes + cross[0].values.nbytes) / 2**20,
        "default": "kernel" if current().eager_decode_step(cross[0].keys, cross[0].values) else "compiled",
        "ms": ms,
        "kernel_vs_compiled": ms["kernel"] / ms["compiled"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="t5-base")
    p.add_argument("--kv-heads", default="12,4,1")
    p.add_argument("--settings", default="4x2048,16x512,8x2048,16x1024,16x2048,32x1024", help="BATCHxLENGTH,...")
    p.add_argument("--steps", type=int, default=12)
    a = p.parse_args()
    from mlx_mqa.bench.results import environment
    from mlx_mqa.checkpoint.files import atomic_write_json
    from mlx_mqa.cpu.attention import KERNEL_KV_BYTES

    rows = []
    for G in (int(x) for x in a.kv_heads.split(",")):
        model = model_of(a.shape, G)
        for s in a.settings.split(","):
            batch, length = (int(x) for x in s.split("x"))
            rows.append(time_setting(model, batch, length, a.steps))
            print(rows[-1], flush=True)
    result = {
        "environment": environment("float32", "cpu"),
        "settings": vars(a),
        "stream_kv_bytes": KERNEL_KV_BYTES,
        "rows": rows,
    }
    atomic_write_json(HERE / "decode_step.json", result)
    (HERE / "decode_step.md").write_text(table(result) + "\n")
    print(table(result))


def table(result: dict) -> str:
    env, s = result["environment"], result["settings"]
    lines = [
        f"CPU: {env['cpu']}, {env['cpu_count']} cores; {s['shape']} shape, float32, random weights and cross K/V; "
        f"median of {s['steps'] - 2} steps, the faster of 2 rounds. The library's default step is the eager one "
        f"with the kernel from {result['stream_kv_bytes'] / 2**20:.0f} MiB of cross K/V per layer.",
        "",
        "| K/V heads | batch | input tokens | cross K/V MiB per layer | compiled ms | eager ms | eager + C kernel ms "
        "| kernel / compiled | default |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        ms = r["ms"]
        lines.append(
            f"| {r['kv_heads']} | {r['batch']} | {r['length']} | {r['kv_mib_per_layer']:.0f} | {ms['compiled']:.1f} | "
            f"{ms['eager']:.1f} | {ms['kernel']:.1f} | {r['kernel_vs_compiled']:.2f}x | {r['default']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
