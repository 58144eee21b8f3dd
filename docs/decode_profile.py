"""Where a batched decode step's time goes on CPU: the whole compiled step against its products timed alone.

For each batch size, the median time of: the compiled greedy step of a random-weight model (through
`DecodeState.logits`, as `generate` runs it), the decoder's weight products of one step (every layer's q, k, v, o
of the self-attention, q and o of the cross-attention, the feed-forward's wi and wo, each an [B, d] x [d, n]
float32 matmul timed alone and summed), the LM head's product, and the log-softmax over the logits.

    .venv/bin/python docs/decode_profile.py --out /tmp/profile     # writes /tmp/profile.{json,md}

docs/decode_profile.md holds an A/B of the small-batch products: two rounds of
`MLX_MQA_SMALL_GEMM=0` then `=1`, each `... docs/decode_profile.py --out /tmp/prof_${s}_$r`.

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


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def matmul_ms(B: int, d: int, n: int, repeats: int) -> float:
    x, w = mx.random.normal((B, d)), mx.random.normal((n, d))
    mx.eval(x, w)
    return median_ms(lambda: mx.eval(x @ w.T), repeats)


def step_ms(model, B: int, input_len: int, repeats: int) -> float:
    from mlx_mqa.decoding.state import DecodeState

    ids = mx.array(np.random.default_rng(0).integers(3, 4000, (B, input_len)).astype(np.int32))
    state = DecodeState(model, ids, None, repeats + 2, compiled=True)
    y = mx.zeros((B,), dtype=mx.int32)
    return median_ms(lambda: mx.eval(state.logits(y)), repeats)


def profile(shape: str, batch_sizes, input_len: int, repeats: int) -> list:
    from mlx_mqa.models.config import ModelArgs
    from mlx_mqa.models.t5 import Model

    args = ModelArgs.from_dict(json.loads((CONFIGS / f"{shape}.json").read_text()))
    model = Model(args)
    mx.eval(model.parameters())
    d, inner, ff = args.d_model, args.num_heads * args.d_kv, args.d_ff
    kv = args.num_key_value_heads * args.d_kv
    wi = 2 if args.is_gated else 1
    rows = []
    for B in batch_sizes:
        layer = {  # (d_in, d_out): count per decoder layer
            (d, inner): 2,  # self q, cross q
            (d, kv): 2,  # self k, v
            (inner, d): 2,  # self o, cross o
            (d, ff): wi,
            (ff, d): 1,
        }
        products = sum(c * matmul_ms(B, i, o, repeats) for (i, o), c in layer.items()) * args.num_decoder_layers
        head = matmul_ms(B, d, args.vocab_size, repeats)
        logits = mx.random.normal((B, args.vocab_size))
        mx.eval(logits)
        softmax = median_ms(lambda: mx.eval(logits - mx.logsumexp(logits, axis=-1, keepdims=True)), repeats)
        step = step_ms(model, B, input_len, repeats)
        rows.append(dict(batch=B, step_ms=step, decoder_products_ms=products, head_ms=head, log_softmax_ms=softmax))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="t5-small")
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    from mlx_mqa.checkpoint.files import atomic_write_json
    from mlx_mqa.engine import engine_info

    rows = profile(a.shape, [int(b) for b in a.batch_sizes.split(",")], a.input_len, a.repeats)
    atomic_write_json(
        a.out.with_suffix(".json"), {"settings": vars(a) | {"out": str(a.out)}, "engine": engine_info(), "rows": rows}
    )
    lines = [
        f"{a.shape} shape, random weights, float32, {a.input_len} input tokens; medians of {a.repeats}.",
        "",
        "| batch | step ms | decoder products ms | LM head ms | log-softmax ms | rest ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rest = r["step_ms"] - r["decoder_products_ms"] - r["head_ms"]
        lines.append(
            f"| {r['batch']} | {r['step_ms']:.2f} | {r['decoder_products_ms']:.2f} | {r['head_ms']:.2f} | "
            f"{r['log_softmax_ms']:.2f} | {rest:.2f} |"
        )
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
