"""The speed runners (their tokens are real greedy generations), KV-cache bytes, the traffic model, the sweep."""

import mlx_mqa  # noqa: F401  (before mlx.core: loads the optimized BLAS)
import mlx.core as mx
import pytest

from mlx_mqa import benchmark as bm
from mlx_mqa.errors import ConfigError
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa import load_model
from mlx_mqa.variants import (VariantSpec, default_kv_heads, ensure_converted, parse_kv_heads, prepare_source,
                              variant_name)
from conftest import t5_config

TINY = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2, vocab_size=4100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """A tiny random T5 v1.0 checkpoint (HF layout) and its MLX conversions to G = 4, 2, 1."""
    root = tmp_path_factory.mktemp("bench_speed")
    path = save_random_checkpoint(t5_config("t5-small", **TINY), root / "hf", seed=1, tokenizer=tokenizer,
                                  shared_std=0.05)
    source = prepare_source(str(path), cache_dir=root / "cache")
    models = {g: load_model(ensure_converted(source, VariantSpec(g, 4), "float32", root / "cache")) for g in (4, 2, 1)}
    return source, models


def ids_for(setting, seed=0):
    return bm.random_inputs(setting, vocab=4000, seed=seed)


@pytest.mark.parametrize("path", bm.mlx_decode_paths())
def test_mlx_run_tokens_are_greedy_generation(tiny, path):
    _, models = tiny
    s = bm.Setting(2, 24, 7)
    ids = ids_for(s)
    for g, model in models.items():
        sample = bm.mlx_run(model, ids, s.output_len, path=path, keep_tokens=True)
        ref = generate_tokens(model, mx.array(ids), None, max_new_tokens=7, ignore_eos=True)
        assert sample.tokens == ref, (g, path)
        assert sample.steps == 7 and sample.batch_size == 2
        assert sample.encoder_s > 0 and sample.decode_s > 0
    assert len({tuple(map(tuple, bm.mlx_run(m, ids, 7, keep_tokens=True).tokens)) for m in models.values()}) > 1


def test_torch_run_matches_mlx_and_kv_bytes_match_formula(tiny):
    from mlx_mqa.torch_reference import load_reference, weight_bytes

    source, models = tiny
    s = bm.Setting(2, 24, 6)
    ids = ids_for(s, seed=5)
    hf = load_reference(source.path)
    t = bm.torch_run(hf, ids, s.output_len, "cpu", weight_bytes(hf)["total"], keep_tokens=True)
    m = bm.mlx_run(models[4], ids, s.output_len, keep_tokens=True)
    assert t.tokens == m.tokens
    args = models[4].args
    for g, model in models.items():
        w = bm.mlx_weight_bytes(model)["total"]
        r = bm.mlx_run(model, ids, s.output_len, weight_bytes=w)
        kv = bm.kv_cache_bytes(args.num_decoder_layers, g, args.d_kv, 2, 24, 6, 4)
        assert (r.kv_self_bytes, r.kv_cross_bytes) == (kv["self"], kv["cross"]), g
        assert r.peak_bytes >= w + r.kv_self_bytes + r.kv_cross_bytes
    kv = bm.kv_cache_bytes(args.num_decoder_layers, 4, args.d_kv, 2, 24, 6, 4)
    assert (t.kv_self_bytes, t.kv_cross_bytes) == (kv["self"], kv["cross"])
    # Prefilled cross K/V are what transformers would have computed in its first step.
    assert t.kv_cross_bytes == 2 * args.num_decoder_layers * 2 * 4 * 24 * args.d_kv * 4


def test_group_mean_reference_generates_like_converted_model(tiny, tokenizer):
    from mlx_mqa.quality import generate_mlx, generate_torch
    from mlx_mqa.torch_reference import load_reference

    source, models = tiny
    prompts = ["summarize: The cat sat on the mat and watched the dog in the garden for a long while.",
               "summarize: Stocks fell sharply on Monday.", "summarize: Rain is expected."]
    for g in (2, 1):
        ref = generate_torch(load_reference(source.path, kv_heads=g), tokenizer, prompts, 32, 10, batch_size=3)
        ours = generate_mlx(models[g], tokenizer, prompts, 32, 10, batch_size=3)
        assert ours.tokens == ref.tokens, g
    mha = generate_torch(load_reference(source.path), tokenizer, prompts, 32, 10, batch_size=3)
    assert mha.tokens != ref.tokens  # pooling changes the model


def test_weight_bytes_and_traffic_model(tiny):
    _, models = tiny
    a = models[4].args
    d, dkv, H, ff, V, L = a.d_model, a.d_kv, a.num_heads, a.d_ff, a.vocab_size, a.num_decoder_layers
    for g, model in models.items():
        w = bm.mlx_weight_bytes(model)
        # decoder block: q,o (H heads) + k,v (G heads) twice (self, cross) + FFN + 3 norms; + final norm + head
        block = 2 * (2 * H * dkv * d + 2 * g * dkv * d) + 2 * d * ff + 3 * d
        assert w["decoder_step"] == 4 * (L * block + d + V * d + 32 * H)  # 32 x H: relative bias of block 0
    t = bm.traffic_per_step(1000, num_layers=2, kv_heads=4, d_kv=16, batch_size=1, input_len=10, output_len=5,
                            itemsize=4)
    per_token = 2 * 2 * 4 * 16 * 4
    assert t == {"weights": 1000.0, "kv_self": per_token * 3.0, "kv_cross": per_token * 10.0,
                 "total": 1000.0 + per_token * 13.0}
    full = bm.traffic_per_step(1000, 2, 4, 16, 1, 10, 5, 4, self_kv="full")
    assert full["kv_self"] == per_token * 5


def fake_variant(name, g, calls, decode=0.01):
    def run(ids, n):
        calls.append(name)
        return bm.RunSample(encoder_s=0.1, decode_s=decode * n, steps=n, batch_size=ids.shape[0], peak_bytes=100,
                            peak_process_bytes=200, kv_self_bytes=1, kv_cross_bytes=2)

    return bm.SpeedVariant(name=name, backend="mlx", kv_heads=g, num_heads=8, num_decoder_layers=2, d_kv=8,
                           itemsize=4, weight_bytes=10, decoder_step_bytes=1000, run=run)


def test_sweep_interleaves_and_aggregates():
    calls = []
    vs = [fake_variant("MHA", 8, calls, 0.04), fake_variant("GQA-2", 2, calls, 0.02), fake_variant("MQA", 1, calls, 0.01)]
    res = bm.sweep(vs, bm.settings_grid([1, 2], [(16, 4)]), vocab=100, warmup=1, repeats=3)
    per_setting = ["MHA", "GQA-2", "MQA"] + ["MHA", "GQA-2", "MQA", "GQA-2", "MQA", "MHA", "MQA", "MHA", "GQA-2"]
    assert calls == per_setting * 2
    assert [(r.variant, r.batch_size) for r in res] == [(v, b) for b in (1, 2) for v in ("MHA", "GQA-2", "MQA")]
    r = res[0]
    assert r.repeats == 3 and r.decode_step_s["median"] == pytest.approx(0.04)
    assert r.time_per_sample_s["median"] == pytest.approx(0.1 + 0.16)
    assert res[3].time_per_sample_s["median"] == pytest.approx((0.1 + 0.16) / 2)
    assert r.tokens_per_s["median"] == pytest.approx(1 / 0.04)
    assert [x.measured_decode_speedup for x in res[:3]] == pytest.approx([1.0, 2.0, 4.0])
    assert res[0].predicted_decode_speedup == 1.0 and res[2].predicted_decode_speedup > res[1].predicted_decode_speedup > 1
    assert res[2].kv_cache_bytes_formula == bm.kv_cache_bytes(2, 1, 8, 1, 16, 4, 4)["total"]


def test_sweep_reports_each_finished_setting():
    calls, seen = [], []
    vs = [fake_variant("MHA", 8, calls, 0.04), fake_variant("MQA", 1, calls, 0.01)]
    res = bm.sweep(vs, bm.settings_grid([1, 2, 4], [(16, 4)]), vocab=100, warmup=0, repeats=1,
                   on_setting=lambda done: seen.append([(r.variant, r.batch_size, r.measured_decode_speedup)
                                                        for r in done]))
    assert [len(s) for s in seen] == [2, 4, 6]
    assert seen[0] == [("MHA", 1, 1.0), ("MQA", 1, pytest.approx(4.0))]  # speedups present in partial results
    assert seen[-1] == [(r.variant, r.batch_size, r.measured_decode_speedup) for r in res]


def test_parsers_and_variant_names():
    assert bm.parse_lengths("512x64, 2048X64") == [(512, 64), (2048, 64)]
    with pytest.raises(ValueError, match="INPUTxOUTPUT"):
        bm.parse_lengths("512")
    with pytest.raises(ValueError, match="--batch-sizes"):
        bm.parse_ints("1,a", "--batch-sizes")
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
