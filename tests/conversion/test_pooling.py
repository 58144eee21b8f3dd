"""A converted GQA/MQA model equals transformers' MHA model whose K/V heads are replaced by group means."""

import re

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa import load_model
from mlx_mqa.conversion import convert, pool_heads
from tests.helpers import batch, hf_model, reference_logits

DEC_KV = re.compile(r"^decoder\.block\.\d+\.layer\.[01]\.(SelfAttention|EncDecAttention)\.[kv]\.weight$")
ENC_KV = re.compile(r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.[kv]\.weight$")


def grouped_reference(path, G, pool="mean", groups_in="decoder"):
    """transformers model with each group's K/V heads replaced by the pooled head, repeated H/G times."""
    hf = hf_model(path)
    H = hf.config.num_heads
    state = hf.state_dict()
    with torch.no_grad():
        for name, w in state.items():
            if DEC_KV.match(name) or (groups_in == "all" and ENC_KV.match(name)):
                d_kv = w.shape[0] // H
                g = w.reshape(G, H // G, d_kv, -1)
                pooled = g.mean(dim=1, keepdim=True) if pool == "mean" else g[:, :1]
                w.copy_(pooled.expand_as(g).reshape(w.shape))
    return hf


def logits(model_or_hf, ids, mask, dec):
    if isinstance(model_or_hf, torch.nn.Module):
        return reference_logits(model_or_hf, ids, mask, dec)
    return np.array(model_or_hf(mx.array(ids), mx.array(dec), mx.array(mask)))


CASES = (
    [(G, "mean", "decoder") for G in (1, 2, 4)]
    + [(G, "mean", "all") for G in (1, 2, 4)]
    + [(G, "first", "decoder") for G in (1, 4)]
    + [(2, "first", "all")]
)


@pytest.mark.parametrize("G,pool,groups_in", CASES)
def test_converted_equals_grouped_reference(G, pool, groups_in, hf_checkpoint, tokenizer, tmp_path):
    path = hf_checkpoint("t5-small")  # H = 8: G in {1, 2, H/2}
    out = convert(str(path), tmp_path / "m", kv_heads=G, pool=pool, groups_in=groups_in, dtype="float32")
    model = load_model(out)
    assert model.args.num_key_value_heads == G
    assert model.args.encoder_num_key_value_heads == (G if groups_in == "all" else 8)
    k = model.decoder.block[0].layer[1].EncDecAttention.k.weight
    assert k.shape == (G * 64, 512)
    ids, mask = batch(tokenizer)
    dec = np.array([[0, 11, 12, 13, 14]] * ids.shape[0], dtype=np.int32)
    ref = logits(grouped_reference(path, G, pool, groups_in), ids, mask, dec)
    ours = logits(model, ids, mask, dec)
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), err
    # Pooling changed something: the plain MHA model gives other logits.
    if G < 8:
        assert np.abs(logits(hf_model(path), ids, mask, dec) - ref).max() > 1e-3


def test_kv_heads_equal_to_h_gives_back_mha(hf_checkpoint, tokenizer, tmp_path):
    path = hf_checkpoint("flan-t5-small")
    model = load_model(convert(str(path), tmp_path / "m", kv_heads=6, dtype="float32"))
    ids, mask = batch(tokenizer)
    dec = np.zeros((3, 3), np.int32)
    ref = logits(hf_model(path), ids, mask, dec)
    assert np.abs(logits(model, ids, mask, dec) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_pool_heads_arithmetic():
    H, D, d = 4, 2, 3
    w = np.arange(H * D * d, dtype=np.float32).reshape(H * D, d)
    heads = w.reshape(H, D, d)
    mean2 = pool_heads(w, H, 2, "mean").reshape(2, D, d)
    np.testing.assert_allclose(mean2[0], (heads[0] + heads[1]) / 2)
    np.testing.assert_allclose(mean2[1], (heads[2] + heads[3]) / 2)
    first2 = pool_heads(w, H, 2, "first").reshape(2, D, d)
    np.testing.assert_array_equal(first2[1], heads[2])
    np.testing.assert_allclose(pool_heads(w, H, 1, "mean"), heads.mean(0))


def test_random_pool_reinitialises_kv_deterministically(hf_checkpoint, tmp_path):
    path = hf_checkpoint("t5-small")
    a = load_model(convert(str(path), tmp_path / "a", kv_heads=2, pool="random", seed=3, dtype="float32"))
    b = load_model(convert(str(path), tmp_path / "b", kv_heads=2, pool="random", seed=3, dtype="float32"))
    m = load_model(convert(str(path), tmp_path / "m", kv_heads=2, pool="mean", dtype="float32"))
    ka = np.array(a.decoder.block[1].layer[0].SelfAttention.k.weight)
    np.testing.assert_array_equal(ka, np.array(b.decoder.block[1].layer[0].SelfAttention.k.weight))
    assert not np.allclose(ka, np.array(m.decoder.block[1].layer[0].SelfAttention.k.weight))
    assert abs(ka.std() - 512**-0.5) < 0.1 * 512**-0.5
    # The query projections and the encoder are untouched.
    np.testing.assert_array_equal(
        np.array(a.decoder.block[1].layer[0].SelfAttention.q.weight),
        np.array(m.decoder.block[1].layer[0].SelfAttention.q.weight),
    )
    assert a.args.conversion["pool"] == "random" and a.args.conversion["seed"] == 3
