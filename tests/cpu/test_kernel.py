"""The C attention kernel: float64-exact softmax attention over strided operands, its fallbacks and gradients."""

import threading

import mlx.core as mx
import numpy as np
import pytest

import mlx_mqa.cpu.attention as attn
from mlx_mqa.cpu import kernel
from mlx_mqa.models.base import padding_mask

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no BLAS shim (no C compiler or OpenBLAS)")


def operands(B, H, G, L, S, D, seed=0):
    """q as the transposed view of a [B, L, H * D] projection (as the model makes it), K/V [B, G, S, D], T5's
    position bias as a strided view of one row per head (negative row stride) and a padding mask."""
    rng = np.random.default_rng(seed)
    q = mx.array(rng.standard_normal((B, L, H * D)).astype(np.float32)).reshape(B, L, H, D).transpose(0, 2, 1, 3)
    k, v = (mx.array(rng.standard_normal((B, G, S, D)).astype(np.float32)) for _ in range(2))
    row = mx.array(rng.standard_normal((H, L + S - 1)).astype(np.float32) * 3)
    bias = mx.as_strided(row, (1, H, L, S), (0, L + S - 1, -1, 1), L - 1)
    keep = np.ones((B, S), np.int32)
    keep[-1, S // 2 :] = 0
    return q, k, v, bias, padding_mask(mx.array(keep), mx.float32)


def reference(q, k, v, terms):
    """float64 softmax(q k^T + terms) v, K/V heads repeated per group."""
    q, k, v = (np.array(a).astype(np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    scores = q @ np.repeat(k, rep, axis=1).swapaxes(-1, -2) + sum(np.array(t, np.float64) for t in terms)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ np.repeat(v, rep, axis=1)


@pytest.mark.parametrize(
    "B,H,G,L,S,D",
    [(2, 8, 2, 37, 37, 16), (1, 4, 4, 70, 13, 8), (3, 6, 1, 9, 101, 64), (2, 12, 4, 130, 130, 64)]
    # Decode steps (one query row: a K/V head's query heads become its rows) and beams (a few rows).
    + [(3, 12, 12, 1, 50, 16), (2, 12, 4, 1, 77, 64), (4, 8, 1, 1, 33, 8), (2, 6, 2, 3, 40, 16)],
)
@pytest.mark.parametrize("which", ["none", "bias", "pad", "both"])
def test_kernel_matches_float64(B, H, G, L, S, D, which, monkeypatch):
    """Rows not a multiple of the block, keys not a multiple of the vector width, MHA/GQA/MQA, every mask."""
    monkeypatch.setattr(kernel, "BLOCK_SCORES", 32 * S)  # several blocks of 32 rows, a partial last one
    q, k, v, bias, pad = operands(B, H, G, L, S, D, seed=L + S)
    terms = {"none": (), "bias": (bias,), "pad": (pad,), "both": (bias, pad)}[which]
    out = kernel.run(q, k, v, terms)
    assert out is not None and out.shape == (B, H, L, D)
    ref = reference(q, k, v, terms)
    np.testing.assert_allclose(np.array(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_blocks_and_threads_do_not_change_a_bit(monkeypatch):
    """Every block is computed alone: the thread count leaves the output bit for bit the same; the block size
    changes it only by rounding (OpenBLAS may take another kernel for fewer rows)."""
    q, k, v, bias, pad = operands(2, 8, 2, 64, 64, 16, seed=3)
    ref = np.array(kernel.run(q, k, v, (bias, pad)))
    for rows in (1, 7, 64):
        monkeypatch.setattr(kernel, "BLOCK_SCORES", 64 * rows)
        monkeypatch.setattr(kernel, "THREADS", 1)
        one = np.array(kernel.run(q, k, v, (bias, pad)))
        np.testing.assert_allclose(one, ref, rtol=0, atol=4e-6 * np.abs(ref).max())
        for threads in (2, 3):
            monkeypatch.setattr(kernel, "THREADS", threads)
            np.testing.assert_array_equal(np.array(kernel.run(q, k, v, (bias, pad))), one)


def test_attention_dispatches_long_inputs_to_the_kernel(monkeypatch):
    """attention() uses the kernel from PARALLEL_SCORES on, and falls back to the MLX blocks without it."""
    q, k, v, bias, pad = operands(2, 8, 2, 40, 40, 16, seed=4)
    monkeypatch.setattr(attn, "PARALLEL_SCORES", 1)
    calls = []
    real = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a: calls.append(1) or real(*a))
    with_kernel = np.array(attn.attention(q, k, v, (bias, pad)))
    assert calls == [1]
    monkeypatch.setattr(kernel, "_kernel", None)
    without = np.array(attn.attention(q, k, v, (bias, pad)))
    assert calls == [1]
    np.testing.assert_allclose(with_kernel, without, rtol=0, atol=2e-6 * np.abs(without).max())


def test_decode_steps_over_a_large_kv_go_to_the_kernel(monkeypatch):
    """A few query rows go to the kernel from KERNEL_KV_BYTES of K and V on; below, and inside mx.compile,
    the MLX path answers, with the same result."""
    q, k, v, bias, pad = operands(3, 8, 2, 1, 300, 16, seed=6)
    calls = []
    real = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a: calls.append(1) or real(*a))
    below = np.array(attn.attention(q, k, v, (bias, pad)))
    monkeypatch.setattr(attn, "KERNEL_KV_BYTES", k.nbytes + v.nbytes)
    assert attn.kernel_reads_kv(k, v) and not attn.kernel_reads_kv(k.astype(mx.float16), v.astype(mx.float16))
    compiled = np.array(mx.compile(lambda *a: attn.attention(*a[:3], a[3:]))(q, k, v, bias, pad))
    assert calls == []
    np.testing.assert_array_equal(compiled, below)
    by_kernel = np.array(attn.attention(q, k, v, (bias, pad)))
    assert calls == [1]
    np.testing.assert_allclose(by_kernel, below, rtol=0, atol=2e-6 * np.abs(below).max())


def test_broadcast_query_heads_of_a_decode_step_fall_back():
    """Query heads broadcast along the head axis are no matrix BLAS can read as a group's rows."""
    q, k, v, _, pad = operands(2, 4, 1, 1, 20, 8, seed=8)
    assert kernel.run(mx.broadcast_to(q[:, :1], q.shape), k, v, (pad,)) is None


def test_operands_it_cannot_read_fall_back(monkeypatch):
    """Half precision, three terms, or a key axis that is not contiguous: the MLX path answers, correctly."""
    monkeypatch.setattr(attn, "PARALLEL_SCORES", 1)
    q, k, v, bias, pad = operands(1, 4, 2, 24, 24, 8, seed=5)
    assert not kernel.applies(q.astype(mx.float16), k, v, ())
    assert not kernel.applies(q, k, v, (bias, pad, pad))
    k_strided = mx.array(np.array(k)[..., ::-1].copy())[..., ::-1]  # last axis stride -1
    assert kernel.run(q, k_strided, v, ()) is None
    out = np.array(attn.attention(q, k_strided, v, (bias, pad, pad)))
    np.testing.assert_allclose(out, reference(q, k, v, (bias, pad, pad)), rtol=0, atol=1e-5)


def test_gradients_and_compile_go_through_the_mlx_path(monkeypatch):
    """Uptraining differentiates through attention: the kernel's vjp is the MLX path's, and inside mx.compile
    (where nothing may be evaluated) the MLX path runs."""
    monkeypatch.setattr(attn, "PARALLEL_SCORES", 1)
    q, k, v, _, pad = operands(2, 4, 2, 20, 20, 8, seed=6)
    row = mx.array(np.random.default_rng(7).standard_normal((4, 39)).astype(np.float32))

    def loss(q, k, v, row):
        bias = mx.as_strided(row, (1, 4, 20, 20), (0, 39, -1, 1), 19)
        return (attn.attention(q, k, v, (bias, pad)) ** 2).sum()

    got = mx.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, row)
    monkeypatch.setattr(kernel, "_kernel", None)
    want = mx.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, row)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=0, atol=1e-4 * np.abs(np.array(w)).max())
    monkeypatch.undo()
    monkeypatch.setattr(attn, "PARALLEL_SCORES", 1)
    compiled = mx.compile(lambda q, k, v: attn.attention(q, k, v, (pad,)))(q, k, v)
    np.testing.assert_allclose(np.array(compiled), reference(q, k, v, (pad,)), rtol=0, atol=1e-5)


def test_threads_share_the_kernel():
    """Two Python threads at once (an app serving requests) each get their own, correct, result."""
    inputs = [operands(1, 8, 2, 96, 96, 16, seed=s) for s in (8, 9)]
    want = [np.array(kernel.run(q, k, v, (b, p))) for q, k, v, b, p in inputs]
    got = [[None] * 4 for _ in inputs]

    def work(i):
        for r in range(4):
            q, k, v, b, p = inputs[i]
            got[i][r] = np.array(kernel.run(q, k, v, (b, p)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for r in range(4):
            np.testing.assert_array_equal(got[i][r], want[i])


@pytest.mark.parametrize("rc", [1, 2, 3])
def test_kernel_failures_fall_back_or_say_out_of_memory(rc, monkeypatch):
    """No single-threaded BLAS (1) or arguments it refuses (2): the MLX path answers. A thread without its
    block buffer (3) is a MemoryError naming the blocks, not a half-written output."""
    q, k, v, bias, pad = operands(1, 4, 2, 24, 24, 8, seed=10)
    monkeypatch.setattr(kernel, "_kernel", lambda *args: rc)
    if rc == 3:
        with pytest.raises(MemoryError, match=r"blocks of 24 x 24 float32 scores"):
            kernel.run(q, k, v, (bias, pad))
        return
    assert kernel.run(q, k, v, (bias, pad)) is None
    monkeypatch.setattr(attn, "PARALLEL_SCORES", 1)
    out = np.array(attn.attention(q, k, v, (bias, pad)))
    np.testing.assert_allclose(out, reference(q, k, v, (bias, pad)), rtol=0, atol=1e-5)
