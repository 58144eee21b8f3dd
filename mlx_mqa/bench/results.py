"""Benchmark results: the environment they were measured in, results.json and the CSVs, and a schema check."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .rouge import METRICS

SCHEMA = "mlx_mqa.bench/1"
PACKAGES = ("mlx", "mlx-mqa", "torch", "transformers", "numpy", "tokenizers", "datasets", "rouge-score", "nltk")
ENV_COLUMNS = "weights dtype git_commit mlx_version torch_version transformers_version mlx_device torch_device cpu blas"
ENV_COLUMNS = ENV_COLUMNS.split()
# The CSV columns; newer ones (the method: pool, grouping; the MLX step that ran) come last, so older keep their place.
STATS = ("encoder_s", "decode_step_s", "time_per_sample_s", "tokens_per_s")  # median, min, max of each
SPEED_COLUMNS = (
    "variant backend kv_heads num_heads quantize_bits decode_path device batch_size input_len output_len".split()
    + ["repeats"]
    + [f"{k}{s}" for k in STATS for s in ("", "_min", "_max")]
    + """peak_memory_bytes peak_memory_process_bytes memory_method kv_cache_bytes kv_self_bytes kv_cross_bytes
    kv_cache_bytes_formula weight_bytes traffic_weights_bytes traffic_kv_bytes traffic_bytes_per_step
    predicted_decode_speedup measured_decode_speedup measured_sample_speedup baseline""".split()
    + ENV_COLUMNS
    + ["pool", "grouping", "decode_step"]
)
QUALITY_COLUMNS = (
    "variant backend kv_heads num_heads quantize_bits dataset n input_len output_len num_beams batch_size".split()
    + [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")]
    + """mean_rouge time_per_sample_s generated_tokens_mean reference_variant tokens_identical tokens_total
    rouge_meaningful sentence_splitter""".split()
    + ENV_COLUMNS
    + ["pool", "grouping"]
)
TOP_LEVEL = "schema created command environment model settings variants speed mlx_vs_torch quality files notes"
TOP_LEVEL = tuple(TOP_LEVEL.split())
ENV_KEYS = ("packages", "platform", "cpu", "dtype", "git", "mlx_device", "blas")
SPEED_KEYS = """variant backend kv_heads batch_size input_len output_len encoder_s decode_step_s time_per_sample_s
tokens_per_s peak_memory_bytes kv_cache_bytes traffic_bytes_per_step""".split()


def package_versions(names: Iterable[str] = PACKAGES) -> Dict[str, Optional[str]]:
    def version(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in names}


def _output(*cmd: str) -> Optional[str]:
    """A command's stripped standard output; None when it fails or cannot run."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    darwin = platform.system() == "Darwin" and _output("sysctl", "-n", "machdep.cpu.brand_string")
    return darwin or platform.processor() or platform.machine()


def git_info(repo: Optional[Path] = None) -> Dict[str, object]:
    """Commit of the code that ran, and whether the work tree had uncommitted changes."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    git = lambda *args: _output("git", "-C", str(repo), *args)  # noqa: E731
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment(dtype: str, torch_device: Optional[str] = None) -> dict:
    """Versions, hardware, engine and BLAS (`mlx_mqa.engine.engine_info`), devices, dtype and git commit."""
    import mlx.core as mx

    from ..engine import engine_info

    env = {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        **engine_info(),  # engine, blas, blas_scope, blas_config
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "mlx_device": str(mx.default_device()),
        "mlx_metal": bool(getattr(mx, "metal", None) and mx.metal.is_available()),
        "dtype": dtype,
        "torch_device": torch_device,
        "torch_threads": None,
        "git": git_info(),
    }
    if torch_device is not None:
        try:
            import torch

            env["torch_threads"] = torch.get_num_threads()
        except ImportError:
            pass
    return env


def weights_provenance(path) -> dict:
    """A checkpoint directory's provenance from its config.json: random (with seed) or a real checkpoint."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    seed = cfg.get("random_weights_seed")
    source = cfg.get("conversion", {}).get("source", str(path))
    if seed is not None:
        return {"kind": "random", "random_weights_seed": seed, "source": source}
    return {"kind": "checkpoint", "source": source}


def weights_label(provenance: dict) -> str:
    if provenance.get("kind") == "random":
        return f"random(seed={provenance.get('random_weights_seed')})"
    return f"checkpoint({provenance.get('spec') or provenance.get('source')})"


def env_row(results: dict) -> dict:
    """The ENV_COLUMNS of every CSV row."""
    env = results["environment"]
    row = {k: env.get(k) for k in ("dtype", "mlx_device", "torch_device", "cpu", "blas")}
    row.update({f"{k}_version": env.get("packages", {}).get(k) for k in ("mlx", "torch", "transformers")})
    row.update(weights=weights_label(results["model"]["provenance"]), git_commit=(env.get("git") or {}).get("commit"))
    return row


def speed_row(r: dict, env: dict) -> dict:
    """A speed result flattened to SPEED_COLUMNS: statistics as median, _min, _max; the traffic as three sums."""
    row = dict(r, **env)
    for k in STATS:
        row[k], row[f"{k}_min"], row[f"{k}_max"] = r[k]["median"], r[k]["min"], r[k]["max"]
    t = r["traffic_bytes_per_step"]
    row.update(traffic_weights_bytes=t["weights"], traffic_kv_bytes=t["kv_self"] + t["kv_cross"])
    row["traffic_bytes_per_step"] = t["total"]
    return {k: row.get(k) for k in SPEED_COLUMNS}


def quality_row(q: dict, env: dict, meaningful: bool) -> dict:
    """A quality result flattened to QUALITY_COLUMNS: each metric as mean, _low, _high; the token match as counts."""
    row = dict(q, **env)
    for m in METRICS:
        row[m], row[f"{m}_low"], row[f"{m}_high"] = (q["rouge"][m][k] for k in ("mean", "low", "high"))
    match = q.get("tokens_match_reference") or {}
    row.update(tokens_identical=match.get("identical"), tokens_total=match.get("total"))
    row["rouge_meaningful"] = meaningful and q.get("rouge_meaningful", True)
    return {k: row.get(k) for k in QUALITY_COLUMNS}


def write_csv(path: Path, columns: List[str], rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_predictions(out_dir: Path, quality_results) -> Dict[str, str]:
    """One JSONL per (variant, dataset): id, prediction, reference, generated ids, per-example ROUGE."""
    pred_dir = Path(out_dir) / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for q in quality_results:
        beams = f"__beams{q['num_beams']}" if q["num_beams"] > 1 else ""
        variant = q["variant"].replace(" ", "_")  # GQA-2 fit -> GQA-2_fit
        name = f"{q['dataset'].replace(':', '_').replace('/', '_')}__{q['backend']}__{variant}{beams}.jsonl"
        with open(pred_dir / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in q["predictions"])
        key = f"{q['backend']}:{q['variant']}:{q['dataset']}" + (f":beams{q['num_beams']}" if beams else "")
        files[key] = str(Path("predictions") / name)
    return files


def new_results(command: str, environment_: dict, model: dict, settings: dict) -> dict:
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    head = dict(schema=SCHEMA, created=created, command=command, environment=environment_, model=model)
    return head | dict(settings=settings, variants=[], speed=[], mlx_vs_torch=[], quality=[], files={}, notes=[])


def write_results(results: dict, out_dir) -> Dict[str, str]:
    """results.json, speed.csv and quality.csv (each when its step ran) in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = env_row(results)
    meaningful = results["model"]["provenance"].get("kind") != "random"
    ran = {k: results["settings"].get(k, True) for k in ("speed", "quality")}
    paths = {"json": out_dir / "results.json"}
    paths.update({f"{k}_csv": out_dir / f"{k}.csv" for k in ("speed", "quality") if ran[k]})
    if ran["speed"]:
        write_csv(paths["speed_csv"], SPEED_COLUMNS, [speed_row(r, env) for r in results["speed"]])
    if ran["quality"]:
        write_csv(paths["quality_csv"], QUALITY_COLUMNS, [quality_row(q, env, meaningful) for q in results["quality"]])
    results["files"].update({k: v.name for k, v in paths.items()})
    tmp = out_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, out_dir / "results.json")
    return {k: str(v) for k, v in paths.items()}


def validate_results(d: dict) -> List[str]:
    """Problems with a results dict (empty when it follows the schema)."""
    problems = [f"missing top-level key {k!r}" for k in TOP_LEVEL if k not in d]
    if problems:
        return problems
    if d["schema"] != SCHEMA:
        problems.append(f"schema is {d['schema']!r}, expected {SCHEMA!r}")
    env = d["environment"]
    problems += [f"environment lacks {k!r}" for k in ENV_KEYS if k not in env]
    problems += [] if "mlx" in env.get("packages", {}) else ["environment.packages lacks mlx"]
    prov = d["model"].get("provenance", {})
    if prov.get("kind") not in ("random", "checkpoint"):
        problems.append(f"model.provenance.kind is {prov.get('kind')!r}")
    if prov.get("kind") == "random" and "random_weights_seed" not in prov:
        problems.append("random weights without random_weights_seed")
    for i, r in enumerate(d["speed"]):
        problems += [f"speed[{i}] lacks {k!r}" for k in SPEED_KEYS if k not in r]
        for k in STATS:
            s = r.get(k)
            if not isinstance(s, dict) or not (0 <= s.get("min", -1) <= s.get("median", -1) <= s.get("max", -1)):
                problems.append(f"speed[{i}].{k} is not min <= median <= max: {s}")
        if r.get("backend") not in ("mlx", "torch"):
            problems.append(f"speed[{i}].backend is {r.get('backend')!r}")
    for i, q in enumerate(d["quality"]):
        for m, v in [(m, q.get("rouge", {}).get(m)) for m in METRICS]:
            if not isinstance(v, dict):
                problems.append(f"quality[{i}] lacks {m}")
            elif not (0 <= v["low"] <= v["mean"] + 1e-9 and v["mean"] <= v["high"] + 1e-9 and v["high"] <= 100):
                problems.append(f"quality[{i}].{m} is not 0 <= low <= mean <= high <= 100: {v}")
        problems += [
            f"quality[{i}] lacks {k!r}"
            for k in ("variant", "backend", "dataset", "n", "time_per_sample_s")
            if k not in q
        ]
    return problems
