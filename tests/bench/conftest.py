"""Fixtures of the benchmark tests (`tokenizer` and the other shared ones come from tests/conftest.py)."""

import pytest

from mlx_mqa import load_model
from mlx_mqa.bench.variants import VariantSpec, ensure_converted, prepare_source

from .tiny import TINY


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, hf_checkpoint):
    """A tiny random T5 v1.0 checkpoint (HF layout) and its MLX conversions to G = 4, 2, 1."""
    root = tmp_path_factory.mktemp("bench_speed")
    path = hf_checkpoint("t5-small", shared_std=0.05, seed=1, **TINY)
    source = prepare_source(str(path), cache_dir=root / "cache")
    models = {g: load_model(ensure_converted(source, VariantSpec(g, 4), "float32", root / "cache")) for g in (4, 2, 1)}
    return source, models
