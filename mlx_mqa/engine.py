"""The one hook between the portable model code and a platform engine.

The portable engine is what Metal and CUDA run: MLX's fused attention and the compiled decode step, as in
mlx-lm. On a Linux machine whose MLX computes on the CPU, `mlx_mqa.cpu` takes over what MLX's Linux CPU
backend does slowly (see that package). Model and decoding code ask `current()` and never branch on the
platform themselves. MLX_MQA_ENGINE=portable forces the portable path on any machine (how the tests check
what a Mac runs); `use("portable")` does the same for a block of code.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import warnings
from typing import Sequence

import mlx.core as mx

ENGINES = ("auto", "portable")


class PortableEngine:
    """Metal, CUDA and anywhere without a platform engine."""

    name = "portable"

    @staticmethod
    def attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
        # The fused kernel takes fewer K/V heads than query heads as they are; it takes one additive mask.
        mask = None if not terms else sum(terms[1:], terms[0])
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)

    @staticmethod
    def eager_decode_step(cross_keys: mx.array, cross_values: mx.array) -> bool:
        """Whether the default decode step over this cross K/V is the eager one (else the compiled one)."""
        return False

    @staticmethod
    def release_memory(arrays, tokens: int) -> None:
        """Evaluate `arrays` and hand memory freed on the way back to the system, for a batch of `tokens` input
        tokens, where that lowers the peak. MLX's device allocators manage this themselves."""

    @staticmethod
    def adapt_quantized(model):
        """Quantized layers as this engine runs them best: mlx.nn's as they are."""
        return model


PORTABLE = PortableEngine()


def _choice_from_env() -> str:
    choice = os.environ.get("MLX_MQA_ENGINE", "auto").strip().lower() or "auto"
    if choice not in ENGINES:
        warnings.warn(f"mlx_mqa: MLX_MQA_ENGINE={choice!r} is not one of {ENGINES}; using 'auto'", stacklevel=2)
        return "auto"
    return choice


_choice = _choice_from_env()
_HAS_CPU_ENGINE = platform.system() == "Linux"
_cpu_engine = None


def _cpu():
    global _cpu_engine
    if _cpu_engine is None:
        from .cpu import engine

        _cpu_engine = engine
    return _cpu_engine


def current():
    """The engine for work on MLX's default device now."""
    if _choice == "portable" or not _HAS_CPU_ENGINE or mx.default_device() != mx.cpu:
        return PORTABLE
    return _cpu()


@contextlib.contextmanager
def use(name: str):
    """Run a block with engine `name` ("portable" or "auto") for every thread."""
    global _choice
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose from {ENGINES}")
    before, _choice = _choice, name
    try:
        yield
    finally:
        _choice = before


def engine_info() -> dict:
    """What a results file records: the engine in use and the BLAS under MLX (None where MLX's own)."""
    blas = sys.modules.get("mlx_mqa.cpu.blas")
    return {
        "engine": current().name,
        "blas": getattr(blas, "loaded_blas", None),
        "blas_scope": getattr(blas, "blas_scope", None),
        "blas_config": getattr(blas, "blas_config", None),
    }
