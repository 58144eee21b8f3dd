"""Resident memory of one process over many generate() calls with distinct prompt lengths (default settings).

Every new prompt length is a new shape for the compiled decode step. This runs CALLS greedy decodes of 2 tokens,
prompt lengths 1..CALLS tokens, on a random 2-layer t5-small-shaped model, and records the resident set (VmRSS)
every EVERY calls. Run it on two checkouts to compare them:

    python docs/compiled_memory.py --out docs/compiled_memory.json
    PYTHONPATH=/path/to/other/checkout python docs/compiled_memory.py --out /tmp/before.json --label before
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from mlx_mqa import load_model
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa.decoding.generate import generate_tokens

CONFIG = Path(mlx_mqa.__file__).parent / "assets" / "t5-configs" / "t5-small.json"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--label", default="after")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cfg = json.loads(CONFIG.read_text())
    cfg.update(num_layers=2, num_decoder_layers=2)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_random_checkpoint(cfg, Path(tmp) / "m", shared_std=0.05))
    rows, start = [], time.perf_counter()
    for n in range(1, a.calls + 1):
        ids = mx.array([[(7 * i) % 1000 + 3 for i in range(n)]], dtype=mx.int32)
        generate_tokens(model, ids, None, 2, ignore_eos=True)
        if n == 1 or n % a.every == 0:
            rows.append({"calls": n, "rss_mib": round(rss_mib(), 1), "seconds": round(time.perf_counter() - start, 1)})
    result = {"label": a.label, "calls": a.calls, "rows": rows, "mlx": mx.__version__}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"label": a.label, "first": rows[0], "last": rows[-1]}))


if __name__ == "__main__":
    main()
