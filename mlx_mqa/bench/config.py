"""What one benchmark run does: its settings, presets and defaults, and the checks before any work starts: every
setting (`check_config`) and the optional packages the run needs (`check_dependencies`: a missing one is a one-line
error naming the option that avoids it; figures are skipped with a note instead)."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..conversion.calibration import check_source
from ..conversion.converter import needs_calibration
from ..decoding.beam import check_num_beams
from ..errors import ConfigError
from .data import BUNDLED_PREFIX, HUB_DATASETS, dataset_lengths
from .variants import check_methods

# Generation lengths of a --data file, and of a hub dataset without a paper setting (`data.HUB_DATASETS`).
DEFAULT_QUALITY_LENGTHS = (512, 128)
QUANTIZE_BITS = (2, 3, 4, 5, 6, 8)
PRESETS = {
    # The offline default: a small random T5, a few bundled real examples, a couple of minutes on 2 CPU cores.
    # Its quality lengths are for its bundled demo only: --dataset or --data gets each source's own.
    "quick": dict(
        batch_sizes="1,4", lengths="256x32", datasets="bundled:cnn_dailymail", limit=6, quality_lengths="512x32"
    ),
    # Ainslie et al. 2023: CNN/DailyMail 512 -> 256; arXiv and PubMed 2048 -> 512; greedy decoding.
    "paper": dict(
        batch_sizes="1",
        lengths="512x256,2048x512",
        datasets="cnn_dailymail,arxiv,pubmed",
        limit=None,
        quality_lengths=None,
    ),
}


@dataclass
class BenchConfig:
    model: str = "random:t5-small"
    layers: Optional[int] = None
    seed: int = 0
    kv_heads: Optional[str] = None
    quantize: Sequence[int] = ()
    q_group_size: int = 64
    pool: Sequence[str] = ("mean",)  # conversion methods compared (mlx_mqa.conversion.METHODS)
    grouping: str = "contiguous"  # contiguous | similar, for every pool
    calibration: str = "bundled"  # calibration data of fit / svd / svd-q and --grouping similar
    calibration_samples: int = 128
    calibration_lengths: Tuple[int, int] = (512, 128)
    dtype: Optional[str] = None
    torch: bool = True
    torch_device: str = "auto"
    torch_quality: str = "all"  # all: a reference per kv-heads value; mha: only the multi-head one; none
    batch_sizes: Sequence[int] = (1, 4)
    lengths: Sequence[Tuple[int, int]] = ((512, 64),)
    warmup: int = 1
    repeats: int = 3
    speed: bool = True
    quality: bool = True
    datasets: Sequence[str] = ("bundled:cnn_dailymail",)
    data_files: Sequence[str] = ()
    split: str = "test"
    limit: Optional[int] = 6
    prefix: str = "summarize: "
    quality_lengths: Optional[Tuple[int, int]] = None  # None: each source's own (see `quality_lengths_of`)
    quality_batch_size: int = 8
    num_beams: Sequence[int] = (1,)  # quality runs once per beam width (1 = greedy)
    bootstrap: int = 1000
    memory_budget: Optional[int] = None  # bytes: find each variant's largest batch that fits (research.budget)
    decode_path: str = "auto"  # auto: the library's default step, or compiled / eager
    out: str = "results/bench"
    cache_dir: Optional[str] = None
    plots: bool = True
    progress: bool = True
    command: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("batch_sizes", "quantize", "pool", "num_beams", "datasets", "data_files"):
            d[k] = list(d[k])
        d["lengths"] = [f"{i}x{o}" for i, o in self.lengths]
        d["quality_lengths"] = "{}x{}".format(*self.quality_lengths) if self.quality_lengths else None
        d["calibration_lengths"] = "{}x{}".format(*self.calibration_lengths)
        return d


def check_config(cfg: BenchConfig) -> None:
    """Every setting a user can get wrong, before any work (a ConfigError naming the option)."""
    for name, value, least in (
        ("--layers", cfg.layers, 1),
        ("--repeats", cfg.repeats, 1),
        ("--warmup", cfg.warmup, 0),
        ("--limit", cfg.limit, 1),
        ("--quality-batch-size", cfg.quality_batch_size, 1),
        ("--bootstrap", cfg.bootstrap, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    if any(b not in QUANTIZE_BITS for b in cfg.quantize):
        raise ConfigError(f"--quantize: bit widths must be among {', '.join(map(str, QUANTIZE_BITS))}")
    if cfg.layers is not None and not cfg.model.startswith("random:"):
        raise ConfigError("--layers only applies to random:<name> models")
    for nb in cfg.num_beams:
        check_num_beams(nb)
    from .speed import DECODE_PATHS

    if cfg.decode_path not in DECODE_PATHS:
        raise ConfigError(f"unknown --decode {cfg.decode_path!r}; choose from {list(DECODE_PATHS)}")
    check_methods(cfg.pool, cfg.grouping)
    if any(needs_calibration(p, cfg.grouping) for p in cfg.pool):
        if cfg.calibration_samples < 1:
            raise ConfigError(f"--calibration-samples must be at least 1, got {cfg.calibration_samples}")
        check_source(cfg.calibration)
    check_writable(cfg.out)


def check_writable(out: str) -> None:
    """`--out` is (or can be made) a directory this process can write in; nothing is created here."""
    path = Path(out).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        why = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK) or (existing == path and not _can_write_in(path)):
        why = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    else:
        return
    raise ConfigError(f"--out {out} {why}; pass a directory you can write to")


def _can_write_in(path: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def quality_lengths_of(cfg: BenchConfig, dataset: Optional[str]) -> Tuple[int, int]:
    """--quality-lengths, else the dataset's paper setting, else `DEFAULT_QUALITY_LENGTHS` (every --data file)."""
    return cfg.quality_lengths or (dataset_lengths(dataset) if dataset else None) or DEFAULT_QUALITY_LENGTHS


class MissingDependency(ConfigError):
    """An optional package this run needs is not installed (exit code 2)."""


def has_module(name: str) -> bool:
    """Whether `name` can be imported, without importing it (a None entry in sys.modules counts as missing)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require(modules: Sequence[str], extra: str, what: str, instead: str) -> None:
    if not all(map(has_module, modules)):
        packages = " and ".join(m.replace("_", "-") for m in modules)
        raise MissingDependency(f"{what} needs {packages} (pip install 'mlx-mqa[{extra}]'); {instead}")


def hub_datasets_requested(datasets: Sequence[str]) -> List[str]:
    """The requested names that are streamed from the hub (not bundled samples, not unknown names)."""
    return [d for d in datasets if not d.startswith(BUNDLED_PREFIX) and d in HUB_DATASETS]


def check_dependencies(cfg) -> List[str]:
    """Raise MissingDependency for a package the run cannot do without; return notes on skipped parts."""
    if cfg.torch:
        _require(["torch"], "torch", "the PyTorch reference", "or pass --no-torch")
    if cfg.quality and (cfg.datasets or cfg.data_files):
        _require(["rouge_score", "nltk"], "bench", "the quality runs (ROUGE)", "or pass --no-quality")
        hub = hub_datasets_requested(cfg.datasets)
        if hub:
            where, instead = f"dataset {', '.join(hub)} from the Hugging Face hub", "a bundled:<name> sample"
            _require(["datasets"], "bench", where, f"or pass --data FILE.jsonl, {instead}, or --no-quality")
    if cfg.plots and not has_module("matplotlib"):
        return [
            "matplotlib is not installed: no figures this run (pip install 'mlx-mqa[bench]'; --no-plots silences this)"
        ]
    return []


def plots_available(cfg) -> bool:
    return bool(cfg.plots) and has_module("matplotlib")


def progress_bar(total: int, desc: str, enabled: bool):
    """A step's tqdm bar on stderr (off when `enabled` is False), cleared when it closes."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)
