"""The CPU engine's attention: the grouped path equals MLX's fused kernel, chunks and blocks are exact."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_mqa.cpu.attention as m
from mlx_mqa.models.base import mask_terms, padding_mask


def attend(q, k, v, mask):
    return m.attention(q, k, v, mask_terms(mask, q.dtype))


@pytest.mark.parametrize("B,H,G,L,S", [(2, 12, 12, 1, 50), (2, 12, 4, 3, 50), (2, 12, 1, 1, 50), (3, 8, 2, 7, 7)])
def test_attention_helper_equals_fused_kernel(B, H, G, L, S):
    """The CPU grouped-matmul path computes what mx.fast.scaled_dot_product_attention does."""
    from mlx_mqa.models.base import scaled_dot_product_attention as attention

    rng = np.random.default_rng(B * H + G + L)
    q, k, v = (
        mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(B, H, L, 16), (B, G, S, 16), (B, G, S, 16)]
    )
    for mask in [None, (1, H, L, S), (B, 1, 1, S), (B, H, L, S)]:
        am = None if mask is None else mx.array(rng.standard_normal(mask).astype(np.float32))
        ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=am)
        np.testing.assert_allclose(np.array(attention(q, k, v, am)), np.array(ref), atol=1e-5)


def test_attention_in_row_blocks_is_exact(monkeypatch):
    """Blocks of query rows on two streams, one input at a time, give the unblocked result (to rounding: OpenBLAS
    may take another kernel for fewer rows, and so another summation order)."""
    rng = np.random.default_rng(5)
    q, k, v = (
        mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(2, 8, 37, 16), (2, 2, 37, 16), (2, 2, 37, 16)]
    )
    bias = mx.array(rng.standard_normal((1, 8, 37, 37)).astype(np.float32))
    pad = mx.array(rng.standard_normal((2, 1, 1, 37)).astype(np.float32))
    masks = [bias, pad, (bias, pad), None]
    whole = [np.array(attend(q, k, v, mask)) for mask in masks]
    monkeypatch.setattr(m.kernel, "_kernel", None)  # the MLX blocks (the C kernel: test_cpu_attention)
    monkeypatch.setattr(m, "PARALLEL_SCORES", 1)
    for rows in (5, 1, 37):
        monkeypatch.setattr(m, "BLOCK_SCORES", 8 * 37 * rows)
        for mask, ref in zip(masks, whole):
            np.testing.assert_allclose(np.array(attend(q, k, v, mask)), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_mask_terms_equal_their_sum():
    """Position bias and padding passed apart (never a [B, H, L, S] mask) equal the summed mask."""
    from mlx_mqa.models.base import scaled_dot_product_attention as attention

    rng = np.random.default_rng(6)
    q, k, v = (mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(2, 4, 9, 8), (2, 4, 9, 8), (2, 4, 9, 8)])
    bias = mx.array(rng.standard_normal((1, 4, 9, 9)).astype(np.float32))
    pad = mx.array(np.where(rng.random((2, 1, 1, 9)) < 0.3, -1e9, 0.0).astype(np.float32))
    np.testing.assert_allclose(
        np.array(attention(q, k, v, (bias, pad))), np.array(attention(q, k, v, bias + pad)), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("L", [6, 1])
def test_cpu_softmax_matches_float64_with_padding(L, monkeypatch):
    """The CPU path's exp-by-pow2 and late normalisation against a float64 softmax, padded keys included."""
    monkeypatch.setattr(m, "FEW_SCORES", 1)  # the pow2 path even for these few scores
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, L, 8), (2, 2, 11, 8), (2, 2, 11, 8)])
    q *= 4  # scores up to ~+-50: the whole exp range that matters
    keep = np.ones((2, 11), np.int32)
    keep[1, 7:] = 0
    mask = padding_mask(mx.array(keep), mx.float32)
    out = np.array(attend(mx.array(q), mx.array(k), mx.array(v), mask))
    kk, vv = np.repeat(k, 2, axis=1).astype(np.float64), np.repeat(v, 2, axis=1).astype(np.float64)
    scores = q.astype(np.float64) @ kk.swapaxes(-1, -2) + np.where(keep[:, None, None, :] > 0, 0, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vv
    assert np.abs(scores[np.isfinite(scores)]).max() > 20
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_attention_gradients_same_on_parallel_blocks(monkeypatch):
    """Uptraining differentiates through the CPU path: two-stream blocks and pow2 exp give the same gradients."""
    rng = np.random.default_rng(11)
    q, k, v = (
        mx.array(rng.standard_normal(s).astype(np.float32)) for s in [(2, 4, 12, 8), (2, 2, 12, 8), (2, 2, 12, 8)]
    )
    bias = mx.array(rng.standard_normal((1, 4, 12, 12)).astype(np.float32))

    def loss(q, k, v):
        return (attend(q, k, v, bias) ** 2).sum()

    def ref_loss(q, k, v):
        kk, vv = mx.repeat(k, 2, axis=1), mx.repeat(v, 2, axis=1)
        return ((mx.softmax(q @ kk.swapaxes(-1, -2) + bias, axis=-1) @ vv) ** 2).sum()

    grad = mx.grad(loss, argnums=(0, 1, 2))
    ref = [np.array(g) for g in mx.grad(ref_loss, argnums=(0, 1, 2))(q, k, v)]
    monkeypatch.setattr(m, "FEW_SCORES", 1)
    monkeypatch.setattr(m, "BLOCK_SCORES", 4 * 12 * 5)  # blocks of 5 query rows
    monkeypatch.setattr(m.kernel, "_kernel", None)  # the MLX blocks, not the C kernel
    for parallel in (2**22, 1):
        monkeypatch.setattr(m, "PARALLEL_SCORES", parallel)
        for g, r in zip(grad(q, k, v), ref):
            np.testing.assert_allclose(np.array(g), r, rtol=0, atol=1e-4 * np.abs(r).max())
