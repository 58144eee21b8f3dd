"""Fixtures of the benchmark tests (`tokenizer` and the other shared ones come from tests/conftest.py)."""

import pytest

from mlx_mqa import load_model
from mlx_mqa.bench.variants import VariantSpec, ensure_converted, prepare_source
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from tests.helpers import t5_config

TINY = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2, vocab_size=4100)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, tokenizer):
    """A tiny random T5 v1.0 checkpoint (HF layout) and its MLX conversions to G = 4, 2, 1."""
    root = tmp_path_factory.mktemp("bench_speed")
    path = save_random_checkpoint(t5_config("t5-small", **TINY), root / "hf", seed=1, tokenizer=tokenizer,
                                  shared_std=0.05)
    source = prepare_source(str(path), cache_dir=root / "cache")
    models = {g: load_model(ensure_converted(source, VariantSpec(g, 4), "float32", root / "cache")) for g in (4, 2, 1)}
    return source, models
