"""Cost of `--refine` and of a distillation step at real T5 shapes (random weights): seconds per step and peak
resident memory, one shape per process. Batch: 8 cnn_dailymail records at 256 x 64 tokens (the testbed's).

    python experiments/refine_cost.py            # t5-small, t5-base, t5-large
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


def measure(shape: str, steps: int = 3) -> dict:
    import numpy as np

    from mlx_mqa import load_model
    from mlx_mqa.checkpoint.load import load_tokenizer
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint
    from mlx_mqa.conversion import convert_model
    from mlx_mqa.conversion.calibration import read_pairs, tokenize_pairs
    from mlx_mqa.conversion.refine import refine, refine_batches

    cfg = json.loads((CONFIGS / f"{shape}.json").read_text())
    tok = load_tokenizer(TOKENIZER)
    with tempfile.TemporaryDirectory() as d:
        save_random_checkpoint(cfg, Path(d) / "m", tokenizer=tok)
        teacher = load_model(Path(d) / "m", dtype="float32")
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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        print(json.dumps(measure(sys.argv[2])))
        sys.exit()
    shapes = sys.argv[1:] or ["t5-small", "t5-base", "t5-large"]
    out = RESULTS / "refine_cost.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    for shape in shapes:
        r = subprocess.run([sys.executable, __file__, "one", shape], capture_output=True, text=True, timeout=900)
        if r.returncode:
            print(r.stderr[-2000:])
            continue
        res[shape] = json.loads(r.stdout.strip().splitlines()[-1])
        out.write_text(json.dumps(res, indent=1))
        print(shape, res[shape], flush=True)
    small = res.get("t5-small")
    if small:
        for s, r in res.items():
            for p in ("attention", "all"):
                if p not in r:
                    continue
                r[p]["ratio_to_t5_small"] = r[p]["seconds_per_step"] / small[p]["seconds_per_step"]
        out.write_text(json.dumps(res, indent=1))
