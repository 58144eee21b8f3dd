"""MLX vs PyTorch decode step on CPU, each side alone in its own process, against both in one process.

Why: the bench times MLX and PyTorch in one process, alternately. Both keep worker threads that may still spin
when the other side starts (OpenMP's wait policy, MLX's and OpenBLAS's pools), so one side can pay for the
other's threads. Here every (side, batch, round) runs in a fresh process (`isolated`), in alternating order,
and the same runs are also made in one process holding both models (`shared`, the bench's arrangement), so the
effect is visible side by side. Random weights of a real T5 shape (speed does not depend on their values),
float32, greedy decoding with EOS ignored through the bench's own `mlx_run` / `torch_run`; the step time is the
decode time over the generated tokens; medians over rounds.

    .venv/bin/python docs/mlx_vs_torch_step.py          # writes docs/mlx_vs_torch_step.{json,md}

Run it on a quiet machine: it is a timing job.
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "shared" / "t5-configs"
SIDES = ("mlx MHA", "mlx MQA", "torch MHA")


def make_checkpoint(shape: str, directory: Path) -> None:
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint

    save_random_checkpoint(json.loads((CONFIGS / f"{shape}.json").read_text()), directory)


def load_side(side: str, checkpoint: str):
    """A run function (input ids, new tokens) -> RunSample for one side."""
    from mlx_mqa.bench import speed

    if side.startswith("torch"):
        import torch

        from mlx_mqa.bench.torch_reference import load_reference

        torch.manual_seed(0)
        model = load_reference(checkpoint)
        return lambda ids, n: speed.torch_run(model, ids, n)
    from mlx_mqa import load_model
    from mlx_mqa.conversion import convert_model

    model = load_model(checkpoint, dtype="float32")
    if side.endswith("MQA"):
        model = convert_model(model, 1, "mean")
    return lambda ids, n: speed.mlx_run(model, ids, n)


def time_side(run, batch: int, input_len: int, output_len: int, repeats: int) -> dict:
    """One warm-up, then the median over `repeats` runs of the decode step and the encoder pass (ms)."""
    from mlx_mqa.bench.speed import Setting, random_inputs

    ids = random_inputs(Setting(batch, input_len, output_len), 4000)
    run(ids, output_len)
    samples = [run(ids, output_len) for _ in range(repeats)]
    return {
        "step_ms": 1e3 * statistics.median(s.decode_s / s.steps for s in samples),
        "encoder_ms": 1e3 * statistics.median(s.encoder_s for s in samples),
    }


def child(args) -> None:
    run = load_side(args.child, args.checkpoint)
    print(json.dumps(time_side(run, args.batch, args.input_len, args.output_len, args.repeats)))


def isolated(args, checkpoint: str, side: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--checkpoint", checkpoint, "--batch", str(batch)]
    cmd += ["--input-len", str(args.input_len), "--output-len", str(args.output_len), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args, checkpoint: str) -> dict:
    """{mode: {side: {batch: [per-round results]}}}, the sides' order reversed every round."""
    res = {m: {s: {b: [] for b in args.batch_sizes} for s in SIDES} for m in ("isolated", "shared")}
    runs = {s: load_side(s, checkpoint) for s in SIDES}
    for r in range(args.rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for b in args.batch_sizes:
            for side in order:
                res["isolated"][side][b].append(isolated(args, checkpoint, side, b))
                res["shared"][side][b].append(time_side(runs[side], b, args.input_len, args.output_len, args.repeats))
                print(
                    f"round {r} B={b} {side}: isolated {res['isolated'][side][b][-1]['step_ms']:.2f} ms, "
                    f"shared {res['shared'][side][b][-1]['step_ms']:.2f} ms",
                    flush=True,
                )
    return res


def table(res: dict, batch_sizes) -> str:
    med = {
        (m, s, b): statistics.median(x["step_ms"] for x in res[m][s][b])
        for m in res
        for s in res[m]
        for b in batch_sizes
    }
    head = "| batch | " + " | ".join(f"{s} {m} ms" for m in res for s in SIDES)
    head += " | MLX MHA / PyTorch isolated | MLX MHA / PyTorch shared | MLX MQA / PyTorch isolated |"
    lines = [head, "|" + "---:|" * (1 + 2 * len(SIDES) + 3)]
    for b in batch_sizes:
        cells = [f"{med[(m, s, b)]:.2f}" for m in res for s in SIDES]
        ratios = [
            med[("isolated", "mlx MHA", b)] / med[("isolated", "torch MHA", b)],
            med[("shared", "mlx MHA", b)] / med[("shared", "torch MHA", b)],
            med[("isolated", "mlx MQA", b)] / med[("isolated", "torch MHA", b)],
        ]
        lines.append(f"| {b} | " + " | ".join(cells + [f"{x:.2f}x" for x in ratios]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="t5-small")
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "mlx_vs_torch_step")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    from mlx_mqa.checkpoint.files import atomic_write_json
    from mlx_mqa.engine import engine_info

    with tempfile.TemporaryDirectory() as d:
        make_checkpoint(args.shape, Path(d) / "mha")
        res = measure(args, str(Path(d) / "mha"))
    import mlx.core as mx
    import torch

    settings = {k: v for k, v in vars(args).items() if k not in ("child", "checkpoint", "batch", "out")}
    env = {
        "cpu": cpu_name(),
        "mlx": mx.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "engine": engine_info(),
    }
    atomic_write_json(args.out.with_suffix(".json"), {"settings": settings, "environment": env, "results": res})
    md = (
        f"CPU: {env['cpu']}; {args.shape} shape, random weights, float32, {args.input_len} -> {args.output_len} "
        f"tokens; step = decode time / tokens, median of {args.repeats} runs after a warm-up, median over "
        f"{args.rounds} rounds.\n\n" + table(res, args.batch_sizes) + "\n"
    )
    args.out.with_suffix(".md").write_text(md)
    print(md)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
