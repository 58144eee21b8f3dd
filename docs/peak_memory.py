"""Peak memory of a whole decode (encoder, cross K/V, greedy steps): MLX MHA, GQA-4 and MQA beside PyTorch's MHA.

Each (implementation, variant, batch) runs in a fresh process (`mlx_mqa.bench.research.footprint`, as
`bench.py --memory-budget` measures): the kernel's peak resident set (VmHWM) minus the resident set after
the imports, so weights, activations, K/V and allocator slack all count, whatever the framework. The
checkpoints are the bench's own: a random t5-base-shaped model (memory depends on shapes only) and its
mean-pooled conversions, cached. input_len tokens in, output_len greedy steps out (EOS ignored), float32.

    .venv/bin/python docs/peak_memory.py                  # writes docs/peak_memory.{json,md}
    .venv/bin/python docs/peak_memory.py --batches 1,8 --input-len 512
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import argparse
from pathlib import Path

from mlx_mqa.bench.research.footprint import Probe, measure
from mlx_mqa.bench.results import environment
from mlx_mqa.bench.variants import VariantSpec, ensure_converted, prepare_source
from mlx_mqa.checkpoint.files import atomic_write_json

HERE = Path(__file__).resolve().parent
MiB = 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:t5-base")
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--kv-heads", default="12,4,1", help="MLX variants; PyTorch runs multi-head")
    p.add_argument("--input-len", type=int, default=2048)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args()
    source = prepare_source(a.model)
    H = source.num_heads
    runs = [(g, "mlx", str(ensure_converted(source, VariantSpec(g, H), "float32"))) for g in _ints(a.kv_heads)]
    runs += [] if a.no_torch else [(H, "torch", str(source.path))]
    rows = []
    for b in _ints(a.batches):
        for g, impl, path in runs:
            f = measure(Probe(path, impl, b, a.input_len, a.output_len))
            rows.append(
                {
                    "impl": impl,
                    "kv_heads": g,
                    "batch": b,
                    "peak_mib": f.peak_bytes / MiB,
                    "kv_mib": f.kv_bytes / MiB,
                    "encoder_s": f.encoder_s,
                    "decode_s": f.decode_s,
                }
            )
            print(rows[-1], flush=True)
    result = {"environment": environment("float32", "cpu"), "settings": {**vars(a), "num_heads": H}, "rows": rows}
    atomic_write_json(HERE / "peak_memory.json", result)
    (HERE / "peak_memory.md").write_text(table(result) + "\n")
    print(table(result))


def _ints(text: str):
    return [int(x) for x in text.split(",")]


def table(result: dict) -> str:
    env, s = result["environment"], result["settings"]
    H = s["num_heads"]

    def label(r):
        name = "MHA" if r["kv_heads"] == H else "MQA" if r["kv_heads"] == 1 else f"GQA-{r['kv_heads']}"
        return ("torch " if r["impl"] == "torch" else "") + name

    lines = [
        f"{s['model']}, {s['input_len']} -> {s['output_len']} tokens, float32; CPU: {env['cpu']}. Peak: VmHWM "
        "minus the resident set after the imports, one fresh process per row.",
        "",
        "| batch | variant | peak MiB | K/V MiB | peak - K/V | encoder s | decode s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} | {label(r)} | {r['peak_mib']:,.0f} | {r['kv_mib']:,.1f} | "
            f"{r['peak_mib'] - r['kv_mib']:,.0f} | {r['encoder_s']:.1f} | {r['decode_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
