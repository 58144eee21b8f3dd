"""Time and peak memory of a conversion (for calibrated methods: calibration + merge + write) of random-weight
checkpoints of real T5 shapes:

    python docs/conversion_cost.py --shape t5-base --samples 32 64          # svd-q, float32 out
    python docs/conversion_cost.py --shape t5-large --pool mean --dtype bfloat16
    python docs/conversion_cost.py --shape t5-large --pool mean --dtype bfloat16 --checkout ../old  # another version

Each conversion runs as its own process (`python -m mlx_mqa.convert`); its anonymous resident memory (RssAnon:
mapped checkpoint pages are reclaimable and not counted) is sampled every 50 ms, and its peak VmHWM is read at
exit. Results are appended to docs/conversion_cost.json with the versions and the CPU. Random weights: speed
and memory do not depend on the values. Linux only (reads /proc).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "conversion_cost.json"


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def measure(cmd, cwd=None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    peak = {"anon": 0, "hwm": 0}

    def sample():
        while proc.poll() is None:
            peak["anon"] = max(peak["anon"], _status(proc.pid, "RssAnon"))
            peak["hwm"] = max(peak["hwm"], _status(proc.pid, "VmHWM"))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"conversion failed: {err.strip().splitlines()[-1]}")
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_anon_mib": peak["anon"] / 2**20,
        "peak_rss_mib": peak["hwm"] / 2**20,
    }


def checkpoint(shape: str, cache: Path) -> Path:
    from transformers import AutoTokenizer

    import mlx_mqa  # noqa: F401  (its BLAS before mlx.core)
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint

    out = cache / shape
    if not (out / "config.json").exists():
        assets = Path(mlx_mqa.__file__).parent / "assets"
        cfg = json.loads((assets / "t5-configs" / f"{shape}.json").read_text())
        tok = AutoTokenizer.from_pretrained(str(assets / "tokenizer"))
        save_random_checkpoint(cfg, out, tokenizer=tok, shared_std=0.05)
    return out


@click.command()
@click.option("--shape", default="t5-base", show_default=True, help="A shape of mlx_mqa/assets/t5-configs.")
@click.option("--samples", "-n", type=int, multiple=True, default=[32], show_default=True)
@click.option("--pool", default="svd-q", show_default=True)
@click.option("--kv-heads", type=int, default=1, show_default=True)
@click.option("--calibration", default=str(ROOT.parent / "shared" / "data"), show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option(
    "--checkout",
    default=None,
    help="Run the convert CLI of this source checkout (e.g. a git worktree of an older commit) instead.",
)
@click.option("--cache", default=str(Path(tempfile.gettempdir()) / "mlx_mqa_cost"), show_default=True)
def main(shape, samples, pool, kv_heads, calibration, dtype, checkout, cache):
    import mlx_mqa
    from mlx_mqa.bench.results import cpu_name, package_versions

    src = checkpoint(shape, Path(cache))
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    calibrated = pool not in ("mean", "first", "random")
    for n in samples if calibrated else [0]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "mlx_mqa.convert", "--hf-path", str(src), "--mlx-path", f"{tmp}/out"]
            cmd += ["--kv-heads", str(kv_heads), "--pool", pool, "--dtype", dtype]
            if calibrated:
                cmd += ["--calibration", calibration, "--calibration-samples", str(n)]
                cmd += ["--calibration-lengths", "512x128"]
            cost = measure(cmd, cwd=checkout)
            output = sum(f.stat().st_size for f in Path(tmp, "out").glob("*.safetensors"))
            row = {
                "shape": shape,
                "pool": pool,
                "kv_heads": kv_heads,
                "dtype": dtype,
                "samples": n if calibrated else None,
                "input_tokens": 512 if calibrated else None,
                "checkpoint_mib": weights / 2**20,
                "output_mib": output / 2**20,
                **cost,
                "peak_anon_over_output": cost["peak_rss_anon_mib"] / (output / 2**20),
                "code": checkout or "this checkout",
                "cpu": cpu_name(),
                "machine": platform.machine(),
                "mlx_mqa": mlx_mqa.__version__,
                "packages": package_versions(["mlx", "numpy", "transformers"]),
                "weights": "random",
            }
        print(json.dumps(row))
        rows.append(row)
        OUT.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
