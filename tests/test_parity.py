"""float32 logits parity with transformers' T5ForConditionalGeneration."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa import load_model
from mlx_mqa.models.t5 import bucket_table
from conftest import PROMPTS, VARIANTS, batch, hf_model


def reference_logits(hf, ids, mask, dec):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                  decoder_input_ids=torch.tensor(dec, dtype=torch.long), use_cache=False).logits.numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers_on_padded_batch(name, hf_checkpoint, tokenizer):
    path = hf_checkpoint(name)
    ids, mask = batch(tokenizer)
    assert mask.min() == 0, "the batch must contain padding"
    dec = np.array([[0, 17, 254, 9, 3001, 42, 7]] * len(PROMPTS), dtype=np.int32)
    ref = reference_logits(hf_model(path), ids, mask, dec)
    model = load_model(path, dtype="float32")  # plain HF directory: converted in memory
    out = np.array(model(mx.array(ids), mx.array(dec), mx.array(mask)))
    scale = np.abs(ref).max()
    err = np.abs(out - ref).max()
    print(f"{name}: max|diff| {err:.3g}, logits scale {scale:.3g}, relative {err / scale:.2e}")
    assert out.shape == ref.shape == (len(PROMPTS), dec.shape[1], model.args.vocab_size)
    assert err <= 1e-4 * scale


def test_padded_rows_equal_each_input_alone(hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    ids, mask = batch(tokenizer)
    dec = mx.array([[0, 5, 6, 7]] * len(PROMPTS))
    together = np.array(model(mx.array(ids), dec, mx.array(mask)))
    for i in range(len(PROMPTS)):
        n = int(mask[i].sum())
        alone = np.array(model(mx.array(ids[i:i + 1, :n]), dec[i:i + 1]))
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4 * np.abs(alone).max(), rtol=0)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_buckets_match_transformers(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-3000, 3001)
    ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    table = bucket_table(bidirectional, 32, 128)
    ours = table[np.clip(rel.numpy(), -128, 128) + 128]
    np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.parametrize("B,H,G,L,S", [(2, 12, 12, 1, 50), (2, 12, 4, 3, 50), (2, 12, 1, 1, 50), (3, 8, 2, 7, 7)])
def test_attention_helper_equals_fused_kernel(B, H, G, L, S):
    """The CPU grouped-matmul path computes what mx.fast.scaled_dot_product_attention does."""
    from mlx_mqa.models.attention import attention

    rng = np.random.default_rng(B * H + G + L)
    q, k, v = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in
               [(B, H, L, 16), (B, G, S, 16), (B, G, S, 16)])
    for mask in [None, (1, H, L, S), (B, 1, 1, S), (B, H, L, S)]:
        m = None if mask is None else mx.array(rng.standard_normal(mask).astype(np.float32))
        ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=m)
        np.testing.assert_allclose(np.array(attention(q, k, v, m)), np.array(ref), atol=1e-5)


def test_attention_in_query_chunks_is_exact(monkeypatch):
    import mlx_mqa.models.attention as m

    rng = np.random.default_rng(5)
    q, k, v = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in
               [(2, 8, 37, 16), (2, 2, 37, 16), (2, 2, 37, 16)])
    masks = [mx.array(rng.standard_normal((1, 8, 37, 37)).astype(np.float32)),
             mx.array(rng.standard_normal((2, 1, 1, 37)).astype(np.float32))]
    whole = [np.array(m.attention(q, k, v, mask)) for mask in masks]
    monkeypatch.setattr(m, "SCORES_CHUNK", 2 * 8 * 37 * 5)  # 5 query rows per chunk
    for mask, ref in zip(masks, whole):
        np.testing.assert_array_equal(np.array(m.attention(q, k, v, mask)), ref)
    monkeypatch.setattr(m, "SCORES_CHUNK", 2 ** 26)
    monkeypatch.setattr(m, "PARALLEL_SCORES", 1)  # two row blocks on two CPU streams
    for mask, ref in zip(masks, whole):
        np.testing.assert_array_equal(np.array(m.attention(q, k, v, mask)), ref)


@pytest.mark.parametrize("L", [6, 1])
def test_cpu_softmax_matches_float64_with_padding(L, monkeypatch):
    """The CPU path's exp-by-pow2 and late normalisation against a float64 softmax, padded keys included."""
    import mlx_mqa.models.attention as m

    monkeypatch.setattr(m, "FEW_SCORES", 1)  # the pow2 path even for these few scores
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, L, 8), (2, 2, 11, 8), (2, 2, 11, 8)])
    q *= 4  # scores up to ~+-50: the whole exp range that matters
    keep = np.ones((2, 11), np.int32)
    keep[1, 7:] = 0
    mask = m.padding_mask(mx.array(keep), mx.float32)
    out = np.array(m.attention(mx.array(q), mx.array(k), mx.array(v), mask))
    kk, vv = np.repeat(k, 2, axis=1).astype(np.float64), np.repeat(v, 2, axis=1).astype(np.float64)
    scores = q.astype(np.float64) @ kk.swapaxes(-1, -2) + np.where(keep[:, None, None, :] > 0, 0, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vv
    assert np.abs(scores[np.isfinite(scores)]).max() > 20
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_attention_gradients_same_on_parallel_blocks(monkeypatch):
    """Uptraining differentiates through the CPU path: two-stream blocks and pow2 exp give the same gradients."""
    import mlx_mqa.models.attention as m

    rng = np.random.default_rng(11)
    q, k, v = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in
               [(2, 4, 12, 8), (2, 2, 12, 8), (2, 2, 12, 8)])
    bias = mx.array(rng.standard_normal((1, 4, 12, 12)).astype(np.float32))

    def loss(q, k, v):
        return (m.attention(q, k, v, bias) ** 2).sum()

    def ref_loss(q, k, v):
        kk, vv = mx.repeat(k, 2, axis=1), mx.repeat(v, 2, axis=1)
        return ((mx.softmax(q @ kk.swapaxes(-1, -2) + bias, axis=-1) @ vv) ** 2).sum()

    grad = mx.grad(loss, argnums=(0, 1, 2))
    ref = [np.array(g) for g in mx.grad(ref_loss, argnums=(0, 1, 2))(q, k, v)]
    monkeypatch.setattr(m, "FEW_SCORES", 1)
    for parallel in (2 ** 22, 1):
        monkeypatch.setattr(m, "PARALLEL_SCORES", parallel)
        for g, r in zip(grad(q, k, v), ref):
            np.testing.assert_allclose(np.array(g), r, rtol=0, atol=1e-4 * np.abs(r).max())
