"""Uptraining throughput on this machine: 1 process vs 2 ranks (mlx.launch, ring backend), and the cost of
distillation (the same step with a multi-head teacher of the same size, w = 0.5).

The model is the 12 M T5 of experiments/ (GQA-2 after conversion; random weights: speed does not depend on
them), span corruption of random token windows, per-rank batch 16 x 128 input tokens, Adafactor, float32.
Each configuration runs 3 warm-up steps and 12 timed steps (median). The all-reduce share is the median
time of one all_sum of a gradient-sized tree alone, over the median step of the same 2-rank run; the bytes
all-reduced per step are the float32 gradients (4 bytes per trainable parameter).

    .venv/bin/python docs/uptrain_throughput.py     # writes docs/uptrain_throughput.{json,md}

Run it on a quiet machine: it is a timing job.
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "experiments"))
from gqa_uptrain import MODEL as EXPERIMENT_MODEL  # noqa: E402

MODEL = {**EXPERIMENT_MODEL, "num_key_value_heads": 2}
BATCH, INPUT_LEN, WARMUP, STEPS = 16, 128, 3, 12


def worker(out: Path, teacher: bool) -> None:
    """One process of a run: time the steps (and, with 2 ranks, an all-reduce alone); rank 0 writes `out`."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten, tree_map
    from transformers import AutoTokenizer

    from mlx_mqa.models.config import ModelArgs
    from mlx_mqa.train.config import TrainConfig
    from mlx_mqa.train.data import SpanCorruptionData, make_windows
    from mlx_mqa.train.init import init_model
    from mlx_mqa.train.objectives import span_lengths
    from mlx_mqa.train.trainer import Trainer

    tok = AutoTokenizer.from_pretrained(str(Path(mlx_mqa.__file__).parent / "assets" / "tokenizer"))
    raw, _ = span_lengths(INPUT_LEN)
    ids = np.random.default_rng(0).integers(3, 4000, 512 * raw).astype(np.int32)
    model = init_model(ModelArgs.from_dict(MODEL), seed=0)
    data = SpanCorruptionData(make_windows(ids, raw), tok, BATCH, seed=1)
    kd = 0.5 if teacher else 0.0
    cfg = TrainConfig(
        steps=WARMUP + STEPS, batch_size=BATCH, optimizer="adafactor", lr=1e-3, save_every=0, kd_weight=kd
    )
    mha = (
        init_model(ModelArgs.from_dict({**MODEL, "num_key_value_heads": MODEL["num_heads"]}), seed=1)
        if teacher
        else None
    )
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(model, data, cfg, run_dir, teacher=mha)
        times, tokens = [], []
        for i in range(WARMUP + STEPS):
            t0 = time.perf_counter()
            _, n = tr.train_step()
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
                tokens.append(n)
    grads = dict(tree_flatten(model.trainable_parameters()))
    n_params = sum(v.size for v in grads.values())
    reduce_s = None
    if tr.world > 1:
        zeros = tree_map(mx.zeros_like, model.trainable_parameters())
        mx.eval(zeros)
        runs = []
        for i in range(WARMUP + STEPS):
            t0 = time.perf_counter()
            mx.eval(tree_map(lambda g: mx.distributed.all_sum(g, group=tr.group), zeros))
            if i >= WARMUP:
                runs.append(time.perf_counter() - t0)
        reduce_s = statistics.median(runs)
    if tr.rank == 0:
        step = statistics.median(times)
        rec = {
            "ranks": tr.world,
            "distillation": teacher,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "per_rank_batch": BATCH,
            "global_batch": BATCH * tr.world,
            "step_s_median": step,
            "step_s_min_max": [min(times), max(times)],
            "tokens_per_step": statistics.median(tokens),
            "tokens_per_s": statistics.median(tokens) / step,
            "trainable_params": int(n_params),
            "allreduce_bytes_per_step": int(4 * n_params),
            "allreduce_s_median": reduce_s,
            "allreduce_share": reduce_s / step if reduce_s else None,
        }
        out.write_text(json.dumps(rec))


def launch(cmd, out: Path, env: dict, teacher: bool = False) -> dict:
    args = [sys.executable, __file__, "--worker", str(out), "teacher" if teacher else "-"]
    subprocess.run(cmd + args, check=True, env={**os.environ, **env})
    return json.loads(out.read_text())


def main() -> None:
    import mlx.core as mx

    launcher = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
    two = [launcher, "--backend", "ring", "-n", "2", "--python"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [
            launch([], tmp / "a.json", {}),
            launch([], tmp / "b.json", {"OPENBLAS_NUM_THREADS": "1"}),
            launch(two, tmp / "c.json", {"OPENBLAS_NUM_THREADS": "1"}),
            launch([], tmp / "d.json", {}, teacher=True),
        ]
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_1_process"] = r["tokens_per_s"] / base
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    result = {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {"mlx": mx.__version__, "mlx_mqa": mlx_mqa.__version__, "python": platform.python_version()},
        "model": MODEL,
        "rows": rows,
    }
    (HERE / "uptrain_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"CPU: {cpu}, {os.cpu_count()} cores; 12 M T5 (GQA-2), per-rank batch {BATCH} x {INPUT_LEN} tokens, "
        f"median of {STEPS} steps.",
        "",
        "| processes | BLAS threads each | distillation | global batch | step (s) | tokens/s | vs 1 process | "
        "all-reduce (s) | all-reduce share | bytes all-reduced per step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        red = f"{r['allreduce_s_median']:.3f}" if r["allreduce_s_median"] else "-"
        share = f"{r['allreduce_share']:.0%}" if r["allreduce_share"] else "-"
        kd = "w = 0.5" if r["distillation"] else "-"
        lines.append(
            f"| {r['ranks']} | {r['blas_threads']} | {kd} | {r['global_batch']} | {r['step_s_median']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['speedup_vs_1_process']:.2f} | {red} | {share} | "
            f"{r['allreduce_bytes_per_step'] / 2**20:.1f} MiB |"
        )
    (HERE / "uptrain_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3] == "teacher")
    else:
        main()
