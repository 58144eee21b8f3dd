"""Model specs, K/V head lists and variant names; random sources cached with their provenance."""

import pytest

from mlx_mqa.bench.variants import default_kv_heads, parse_kv_heads, prepare_source, variant_name
from mlx_mqa.errors import ConfigError


def test_kv_heads_and_variant_names():
    assert parse_kv_heads("H,4,mqa", 12) == [12, 4, 1]
    assert parse_kv_heads(None, 12) == default_kv_heads(12) == [12, 4, 1]
    assert default_kv_heads(16) == [16, 4, 1] and default_kv_heads(8) == [8, 2, 1] and default_kv_heads(6) == [6, 2, 1]
    with pytest.raises(ConfigError, match="valid values: 1, 2, 3, 4, 6, 12"):
        parse_kv_heads("5", 12)
    assert [variant_name(g, 8, q) for g, q in ((8, None), (2, None), (1, 4))] == ["MHA", "GQA-2", "MQA-q4"]


def test_random_source_is_cached_and_has_provenance(tmp_path):
    src = prepare_source("random:flan-t5-small", cache_dir=tmp_path, layers=1, seed=3)
    assert src.config["num_layers"] == src.config["num_decoder_layers"] == 1
    assert src.config["random_weights_seed"] == 3 and src.is_random
    prov = src.provenance()
    assert prov["kind"] == "random" and prov["random_weights_seed"] == 3
    mtime = (src.path / "model.safetensors").stat().st_mtime_ns
    again = prepare_source("random:flan-t5-small", cache_dir=tmp_path, layers=1, seed=3)
    assert again.path == src.path and (src.path / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="known shapes: .*t5-base"):
        prepare_source("random:t5-huge", cache_dir=tmp_path)
