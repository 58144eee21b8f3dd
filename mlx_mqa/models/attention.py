"""Attention kernels, apart from the architecture: T5's unscaled attention over grouped K/V heads.

On Metal/CUDA MLX's fused kernel takes fewer K/V heads than query heads as they are. On CPU the same
math runs as grouped matmuls, long inputs in bounded score blocks on two streams.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import mlx.core as mx

# Most attention scores materialised at once on CPU (elements): 2**26 floats = 256 MiB.
SCORES_CHUNK = 2**26
# From this many scores on (16 MiB), CPU attention is split in two blocks that run in parallel.
PARALLEL_SCORES = 2**22
# Below this many scores (a decode step of a small batch) the plain softmax is as fast and fewer ops.
FEW_SCORES = 2**16
LOG2E = math.log2(math.e)


def attention(q: mx.array, k: mx.array, v: mx.array, mask: Optional[mx.array]) -> mx.array:
    """T5 attention: no 1/sqrt(d) scaling; position bias and padding come in as an additive mask.

    k and v may have fewer heads than q (GQA/MQA) and are never tiled. On Metal/CUDA the fused
    kernel does this; MLX's CPU fallback repeats K/V per query head (measured 2.5-4x slower for MQA
    decode steps), so on CPU the same math runs as grouped matmuls.
    """
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.astype(q.dtype)
    if mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)
    B, H, L, D = q.shape
    S = k.shape[2]
    rows = max(1, SCORES_CHUNK // (B * H * S))
    if L <= rows and (L == 1 or B * H * L * S < PARALLEL_SCORES):
        return _grouped_attention(q, k, v, mask)
    n_blocks = -(-L // rows)
    n_blocks += n_blocks % 2  # an even number of equal blocks keeps both CPU streams busy
    rows = -(-L // n_blocks)
    # Long inputs: bounded [B, H, rows, S] score blocks, alternating between two CPU streams. MLX runs
    # each stream on its own thread, and its elementwise CPU ops (the softmax) are single-threaded.
    blocks = []
    for n, i in enumerate(range(0, L, rows)):
        m = mask if mask is None or mask.shape[-2] == 1 else mask[..., i : i + rows, :]
        with mx.stream(_cpu_streams()[n % 2]):
            blocks.append(_grouped_attention(q[:, :, i : i + rows], k, v, m))
    return mx.concatenate(blocks, axis=2)


_streams = threading.local()


def _cpu_streams():
    # MLX streams belong to the thread that made them: each thread gets its own pair.
    pair = getattr(_streams, "pair", None)
    if pair is None:
        pair = _streams.pair = (mx.default_stream(mx.cpu), mx.new_stream(mx.cpu))
    return pair


# exp(x - m) as 2**((x - m) * log2 e), fused into one pass: MLX's CPU exp costs ~5x a multiply-add
# pass, its pow(2, .) ~2.5x (same accuracy, ~4e-6 relative at x - m = -80).
_exp_shifted = mx.compile(lambda x, m: mx.power(2.0, (x - m) * LOG2E), shapeless=True)


def _grouped_attention(q: mx.array, k: mx.array, v: mx.array, mask: Optional[mx.array]) -> mx.array:
    B, H, L, D = q.shape
    G = k.shape[1]
    # Heads g*H/G .. (g+1)*H/G-1 share K/V head g: stack them along the query axis.
    qg = q.reshape(B, G, (H // G) * L, D)
    scores = qg @ k.swapaxes(-1, -2)
    if mask is not None:
        mb, mh = mask.shape[0], mask.shape[1]
        m = mask if mh == 1 else mask.reshape(mb, G, (H // G) * L, mask.shape[-1])
        scores = scores + m
    if v.dtype != mx.float32 or scores.size < FEW_SCORES:
        # Half precision (unnormalised sums could overflow) and small decode steps (overhead-bound).
        probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)
        return (probs @ v).reshape(B, H, L, -1)
    # Softmax normalised after the product with V: one pass over the scores fewer.
    weights = _exp_shifted(scores, mx.stop_gradient(scores.max(axis=-1, keepdims=True)))
    out = (weights @ v) / weights.sum(axis=-1, keepdims=True)
    return out.reshape(B, H, L, -1)


def padding_mask(attention_mask: Optional[mx.array], dtype) -> Optional[mx.array]:
    """[B, S] of 1/0 -> additive [B, 1, 1, S]; None when nothing is padded."""
    if attention_mask is None:
        return None
    keep = attention_mask.astype(mx.bool_)
    return mx.where(keep, 0.0, mx.finfo(dtype).min).astype(dtype)[:, None, None, :]
