"""One benchmark run's state, shared by its steps (`mlx_mqa.bench.runner`, `mlx_mqa.bench.quality_steps`).

`Bench` holds the resolved settings, the converted MLX variants, the PyTorch reference models (loaded on
first use) and the results dict the steps fill in; `progress_bar` is the tqdm bar every step draws on stderr.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import BenchConfig
from .data import Example
from .variants import ModelSource, VariantSpec, timed_pool


@dataclass
class QualityJob:
    label: str
    examples: List[Example]
    input_len: int
    output_len: int


@dataclass
class MlxVariant:
    spec: VariantSpec
    path: Path
    model: object = None
    weights: Dict[str, int] = field(default_factory=dict)


@dataclass
class Bench:
    """One run's state, shared by its steps."""

    cfg: BenchConfig
    say: Callable[[str], None]
    dtype: str
    decode_path: str
    jobs: List[QualityJob]
    source: ModelSource
    kv: List[int]
    tokenizer: object
    variants: List[MlxVariant] = field(default_factory=list)
    device: Optional[str] = None  # the PyTorch reference's device; None without it
    results: dict = field(default_factory=dict)
    torch_models: Dict[int, object] = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return self.source.num_heads

    def represents_speed(self, spec: VariantSpec) -> bool:
        """Whether `spec` is timed for its shape: MHA and the variants of the timed pool (`timed_pool`)."""
        return spec.kv_heads == self.num_heads or spec.pool == timed_pool(self.cfg.pool)

    def timed(self, spec: VariantSpec) -> bool:
        """Whether the speed sweep times `spec` (see `represents_speed`)."""
        return self.cfg.speed and self.represents_speed(spec)

    def torch_model(self, kv_heads: int):
        """The PyTorch reference for `kv_heads` (group-mean K/V), loaded on first use."""
        from .torch_reference import load_reference

        if kv_heads not in self.torch_models:
            self.torch_models[kv_heads] = load_reference(
                self.source.path, kv_heads=kv_heads, dtype=self.dtype, device=self.device
            )
        return self.torch_models[kv_heads]


def progress_bar(total: int, desc: str, enabled: bool):
    """A step's tqdm bar on stderr (off when `enabled` is False), cleared when it closes."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)
