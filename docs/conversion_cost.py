"""Time and peak memory of a calibrated conversion (calibration + merge + write) of random-weight checkpoints
of real T5 shapes: `python docs/conversion_cost.py --shape t5-base --samples 32 64`.

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


def measure(cmd) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
@click.option("--cache", default=str(Path(tempfile.gettempdir()) / "mlx_mqa_cost"), show_default=True)
def main(shape, samples, pool, kv_heads, calibration, cache):
    import mlx_mqa
    from mlx_mqa.bench.results import cpu_name, package_versions

    src = checkpoint(shape, Path(cache))
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    for n in samples:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "mlx_mqa.convert",
                "--hf-path",
                str(src),
                "--mlx-path",
                f"{tmp}/out",
                "--kv-heads",
                str(kv_heads),
                "--pool",
                pool,
                "--calibration",
                calibration,
                "--calibration-samples",
                str(n),
                "--calibration-lengths",
                "512x128",
                "--dtype",
                "float32",
            ]
            row = {
                "shape": shape,
                "pool": pool,
                "kv_heads": kv_heads,
                "samples": n,
                "input_tokens": 512,
                "checkpoint_mib": weights / 2**20,
                **measure(cmd),
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
