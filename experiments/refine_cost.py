"""Cost of `--refine` and of a distillation step at real T5 shapes (random weights): seconds per step and peak
resident memory, one shape per process. Batch: 8 cnn_dailymail records at 256 x 64 tokens (the testbed's).

    python experiments/refine_cost.py                     # --refine at t5-small, t5-base, t5-large
    python experiments/refine_cost.py --uptrain           # an uptraining step with the MHA teacher (recovery.py's)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hard_testbed import CONFIGS, DATA, PREFIX, RESULTS, TOKENIZER


def random_teacher(shape: str):
    """The bundled tokenizer and a float32 random-weight model of a real T5 shape."""
    from mlx_mqa import load_model
    from mlx_mqa.checkpoint.load import load_tokenizer
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint

    cfg = json.loads((CONFIGS / f"{shape}.json").read_text())
    tok = load_tokenizer(TOKENIZER)
    with tempfile.TemporaryDirectory() as d:
        save_random_checkpoint(cfg, Path(d) / "m", tokenizer=tok)
        return tok, load_model(Path(d) / "m", dtype="float32")


def measure(shape: str, steps: int = 3) -> dict:
    import numpy as np

    from mlx_mqa.conversion import convert_model
    from mlx_mqa.conversion.calibration import read_pairs, tokenize_pairs
    from mlx_mqa.conversion.refine import refine, refine_batches

    tok, teacher = random_teacher(shape)
    ex = tokenize_pairs(tok, read_pairs(str(DATA / "cnn_dailymail" / "sample.jsonl"), 8), 256, 64, PREFIX)
    batches = refine_batches(ex, 8)
    out = {"shape": shape, "batch": "8 x (256 -> 64 tokens)", "steps": steps}
    # t5-large: attention only (an all-parameter step there takes minutes on this CPU; scale by t5-base's ratio)
    for params in ("attention",) if shape == "t5-large" else ("attention", "all"):
        student = convert_model(teacher, 1, "mean")
        t0 = time.perf_counter()
        rec = refine(student, teacher, batches, steps, params, 1e-4, eval_every=steps)
        out[params] = {
            "seconds_per_step": float(np.median(rec["step_seconds"][1:])),
            "trainable_parameters": rec["trainable_parameters"],
            "total_seconds": time.perf_counter() - t0,
        }
        del student
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def measure_uptrain(shape: str) -> dict:
    """One step of recovery.py's distillation: every parameter of a G = 1 student, Adafactor, MHA teacher."""
    import numpy as np

    from mlx_mqa.bench.results import environment
    from mlx_mqa.conversion import convert_model
    from mlx_mqa.conversion.calibration import read_pairs
    from mlx_mqa.train.config import TrainConfig
    from mlx_mqa.train.data import SupervisedData, encode_pairs
    from mlx_mqa.train.trainer import Trainer

    tok, teacher = random_teacher(shape)
    student = convert_model(teacher, 1, "mean")
    pairs = read_pairs(str(DATA / "cnn_dailymail" / "sample.jsonl"), 64)
    data = SupervisedData(encode_pairs(tok, pairs, 256, 64, PREFIX), tok, 8, seed=0)
    steps = {"t5-small": 6, "t5-base": 4}.get(shape, 3)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-4, kd_weight=1.0, save_every=0)
    seconds = []
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(student, data, cfg, d, tokenizer=tok, teacher=teacher)
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            seconds.append(time.perf_counter() - t0)
    return {
        "seconds_per_step": float(np.median(seconds[1:])),
        "step_seconds": seconds,
        "batch": "8 x (256 -> 64 tokens)",
        "optimizer": "adafactor, every parameter, kd weight 1",
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "environment": environment("float32"),
    }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("one", "one-uptrain"):
        print(json.dumps((measure if sys.argv[1] == "one" else measure_uptrain)(sys.argv[2])))
        sys.exit()
    uptrain = "--uptrain" in sys.argv
    shapes = [a for a in sys.argv[1:] if a != "--uptrain"] or ["t5-small", "t5-base", "t5-large"]
    out = RESULTS / "refine_cost.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    for shape in shapes:
        mode = "one-uptrain" if uptrain else "one"
        r = subprocess.run([sys.executable, __file__, mode, shape], capture_output=True, text=True, timeout=1800)
        if r.returncode:
            print(r.stderr[-2000:])
            continue
        got = json.loads(r.stdout.strip().splitlines()[-1])
        res[shape] = {**res.get(shape, {"shape": shape}), **({"uptrain": got} if uptrain else got)}
        out.write_text(json.dumps(res, indent=1))
        print(shape, res[shape], flush=True)
    small = res.get("t5-small")
    if small:
        for s, r in res.items():
            for p in ("attention", "all", "uptrain"):
                if p not in r or p not in small:
                    continue
                r[p]["ratio_to_t5_small"] = r[p]["seconds_per_step"] / small[p]["seconds_per_step"]
        out.write_text(json.dumps(res, indent=1))
