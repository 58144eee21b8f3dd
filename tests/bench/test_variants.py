"""Model specs, K/V head lists, conversion methods, variant names and cache paths; random sources cached with
their provenance."""

import pytest

from mlx_mqa.bench.variants import (
    ModelSource,
    VariantSpec,
    check_methods,
    converted_path,
    default_kv_heads,
    parse_kv_heads,
    parse_pools,
    prepare_source,
    timed_pool,
    variant_name,
    variant_specs,
)
from mlx_mqa.conversion import Calibration
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


def test_pools_and_methods():
    assert parse_pools(None) == parse_pools("") == ["mean"]
    assert parse_pools(" mean, fit,svd,fit") == ["mean", "fit", "svd"] and parse_pools("SVD-Q") == ["svd-q"]
    with pytest.raises(ConfigError, match=r"^unknown --pool 'best'; choose from mean, first, random, fit, svd, svd-q$"):
        parse_pools("mean,best")
    with pytest.raises(ConfigError, match="--pool lists no method"):
        parse_pools(" , ")
    check_methods(["mean", "first", "fit", "svd", "svd-q"], "similar")
    with pytest.raises(ConfigError, match="--pool random ignores the heads"):
        check_methods(["mean", "random"], "similar")
    with pytest.raises(ConfigError, match="unknown --grouping 'sorted'"):
        check_methods(["mean"], "sorted")
    assert timed_pool(["fit", "mean"]) == "mean" and timed_pool(["svd", "fit"]) == "svd"


def test_variant_names_with_methods():
    # The default (mean pooling, contiguous groups) keeps the names it always had.
    assert [s.name for s in variant_specs([8, 2, 1], 8, (8,))] == [
        "MHA",
        "GQA-2",
        "MQA",
        "MHA-q8",
        "GQA-2-q8",
        "MQA-q8",
    ]
    specs = variant_specs([8, 2, 1], 8, (8,), 64, ["mean", "fit"])
    assert [s.name for s in specs] == [
        *("MHA", "GQA-2", "GQA-2 fit", "MQA", "MQA fit"),
        *("MHA-q8", "GQA-2-q8", "GQA-2-q8 fit", "MQA-q8", "MQA-q8 fit"),
    ]
    similar = variant_specs([8, 1], 8, pools=["mean", "svd-q"], grouping="similar")
    assert [(s.name, s.pool, s.grouping, s.is_mean_contiguous, s.calibrated) for s in similar] == [
        ("MHA", "mean", "contiguous", True, False),  # converted once: pooling does nothing at G = H
        ("MQA mean similar", "mean", "similar", False, True),
        ("MQA svd-q similar", "svd-q", "similar", False, True),
    ]
    assert variant_name(2, 8, 4, "first") == "GQA-2-q4 first" and variant_name(8, 8, None, "svd") == "MHA"
    with pytest.raises(ConfigError, match="--pool random ignores the heads"):
        variant_specs([8, 2], 8, pools=["random"], grouping="similar")


def test_cache_paths_differ_by_method(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    source = ModelSource("t5", tmp_path / "src", {"num_heads": 8})

    def name(spec, cal=None):
        return converted_path(source, spec, "float32", tmp_path / "cache", cal).name

    # mean pooling in contiguous groups: the paths cached before methods were compared
    assert [name(VariantSpec(g, 8)) for g in (8, 2)] == ["kv8-float32-v1", "kv2-float32-v1"]
    assert name(VariantSpec(2, 8, 8)) == "kv2-float32-q8g64-v1"
    assert name(VariantSpec(2, 8, pool="first")) == "kv2-float32-first-v1"
    fit = name(VariantSpec(2, 8, pool="fit"))
    assert fit.startswith("kv2-float32-fit-cal") and fit.endswith("-v1")
    assert name(VariantSpec(2, 8, pool="fit"), Calibration()) == fit
    assert name(VariantSpec(2, 8, pool="fit"), Calibration(samples=4)) != fit
    names = [
        name(VariantSpec(2, 8, pool=p, grouping=g))
        for p in ("mean", "fit", "svd", "svd-q")
        for g in ("contiguous", "similar")
    ]
    assert len(set(names)) == 8 and names[1].startswith("kv2-float32-mean-similar-cal")
