"""Optional dependencies of the benchmark, checked before any work starts.

Each part of a run that needs an optional package names the extra that installs it. The PyTorch
reference, the quality runs and hub datasets are refused at once when their package is missing
(a one-line error, exit code 2, naming the option that avoids them); figures are skipped with a
note, since a long sweep's tables and files are worth having without them.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import List, Sequence

from ..errors import ConfigError
from .data import BUNDLED_PREFIX, HUB_DATASETS


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


def missing(modules: Sequence[str]) -> List[str]:
    return [m for m in modules if not has_module(m)]


def _require(modules: Sequence[str], packages: str, extra: str, what: str, instead: str) -> None:
    if missing(modules):
        raise MissingDependency(f"{what} needs {packages} (pip install 'mlx-mqa[{extra}]'); {instead}")


def hub_datasets_requested(datasets: Sequence[str]) -> List[str]:
    """The requested names that are streamed from the hub (not bundled samples, not unknown names)."""
    return [d for d in datasets if not d.startswith(BUNDLED_PREFIX) and d in HUB_DATASETS]


def check_dependencies(cfg) -> List[str]:
    """Raise MissingDependency for a package the run cannot do without; return notes on skipped parts.

    `cfg` is a `BenchConfig`; only its torch, quality, datasets, data_files and plots fields are read.
    """
    if cfg.torch:
        _require(["torch"], "torch", "torch", "the PyTorch reference", "or pass --no-torch")
    if cfg.quality and (cfg.datasets or cfg.data_files):
        _require(
            ["rouge_score", "nltk"], "rouge-score and nltk", "bench", "the quality runs (ROUGE)", "or pass --no-quality"
        )
        hub = hub_datasets_requested(cfg.datasets)
        if hub:
            _require(
                ["datasets"],
                "datasets",
                "bench",
                f"dataset {', '.join(hub)} from the Hugging Face hub",
                "or pass --data FILE.jsonl, a bundled:<name> sample, or --no-quality",
            )
    notes = []
    if cfg.plots and not has_module("matplotlib"):
        notes.append(
            "matplotlib is not installed: no figures this run (pip install 'mlx-mqa[bench]'; --no-plots silences this)"
        )
    return notes


def plots_available(cfg) -> bool:
    return bool(cfg.plots) and has_module("matplotlib")
