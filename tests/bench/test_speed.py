"""The speed runners: their tokens are real greedy generations and their K/V bytes the formula's; the parsers;
the parameter bytes a decode step reads and the memory-traffic model."""

import mlx.core as mx
import pytest

from mlx_mqa.bench import speed
from mlx_mqa.decoding.generate import generate_tokens


def ids_for(setting, seed=0):
    return speed.random_inputs(setting, vocab=4000, seed=seed)


@pytest.mark.parametrize("path", speed.DECODE_PATHS)
def test_mlx_run_tokens_are_greedy_generation(tiny, path):
    _, models = tiny
    s = speed.Setting(2, 24, 7)
    ids = ids_for(s)
    for g, model in models.items():
        sample = speed.mlx_run(model, ids, s.output_len, path=path, keep_tokens=True)
        ref = generate_tokens(model, mx.array(ids), None, max_new_tokens=7, ignore_eos=True)
        assert sample.tokens == ref, (g, path)
        assert sample.steps == 7 and sample.batch_size == 2
        assert sample.encoder_s > 0 and sample.decode_s > 0
        kv = speed.kv_cache_bytes(model.args.num_decoder_layers, g, model.args.d_kv, 2, 24, 7, 4)
        assert (sample.kv_self_bytes, sample.kv_cross_bytes) == (kv["self"], kv["cross"]), (g, path)
    assert len({tuple(map(tuple, speed.mlx_run(m, ids, 7, keep_tokens=True).tokens)) for m in models.values()}) > 1


def test_torch_run_matches_mlx_and_kv_bytes_match_formula(tiny):
    from mlx_mqa.bench.torch_reference import load_reference, weight_bytes

    source, models = tiny
    s = speed.Setting(2, 24, 6)
    ids = ids_for(s, seed=5)
    hf = load_reference(source.path)
    t = speed.torch_run(hf, ids, s.output_len, "cpu", weight_bytes(hf)["total"], keep_tokens=True)
    m = speed.mlx_run(models[4], ids, s.output_len, keep_tokens=True)
    assert t.tokens == m.tokens
    args = models[4].args
    for g, model in models.items():
        w = speed.mlx_weight_bytes(model)["total"]
        r = speed.mlx_run(model, ids, s.output_len, weight_bytes=w)
        kv = speed.kv_cache_bytes(args.num_decoder_layers, g, args.d_kv, 2, 24, 6, 4)
        assert (r.kv_self_bytes, r.kv_cross_bytes) == (kv["self"], kv["cross"]), g
        assert r.peak_bytes >= w + r.kv_self_bytes + r.kv_cross_bytes
    kv = speed.kv_cache_bytes(args.num_decoder_layers, 4, args.d_kv, 2, 24, 6, 4)
    assert (t.kv_self_bytes, t.kv_cross_bytes) == (kv["self"], kv["cross"])
    # Prefilled cross K/V are what transformers would have computed in its first step.
    assert t.kv_cross_bytes == 2 * args.num_decoder_layers * 2 * 4 * 24 * args.d_kv * 4


def test_parsers():
    assert speed.parse_lengths("512x64, 2048X64") == [(512, 64), (2048, 64)]
    with pytest.raises(ValueError, match="INPUTxOUTPUT"):
        speed.parse_lengths("512")
    with pytest.raises(ValueError, match="--batch-sizes"):
        speed.parse_ints("1,a", "--batch-sizes")
    with pytest.raises(ValueError, match="unknown MLX decode path 'fast'"):
        speed.mlx_run(None, None, 1, path="fast")


def test_weight_bytes_and_traffic_model(tiny):
    _, models = tiny
    a = models[4].args
    d, dkv, H, ff, V, L = a.d_model, a.d_kv, a.num_heads, a.d_ff, a.vocab_size, a.num_decoder_layers
    for g, model in models.items():
        w = speed.mlx_weight_bytes(model)
        # decoder block: q,o (H heads) + k,v (G heads) twice (self, cross) + FFN + 3 norms; + final norm + head
        block = 2 * (2 * H * dkv * d + 2 * g * dkv * d) + 2 * d * ff + 3 * d
        assert w["decoder_step"] == 4 * (L * block + d + V * d + 32 * H)  # 32 x H: relative bias of block 0
    t = speed.traffic_per_step(
        1000, num_layers=2, kv_heads=4, d_kv=16, batch_size=1, input_len=10, output_len=5, itemsize=4
    )
    per_token = 2 * 2 * 4 * 16 * 4
    assert t == {
        "weights": 1000.0,
        "kv_self": per_token * 3.0,
        "kv_cross": per_token * 10.0,
        "total": 1000.0 + per_token * 13.0,
    }
    full = speed.traffic_per_step(1000, 2, 4, 16, 1, 10, 5, 4, self_kv="full")
    assert full["kv_self"] == per_token * 5
