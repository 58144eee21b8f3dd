"""Attention on MLX's Linux CPU backend: T5's unscaled attention over grouped K/V heads.

MLX's CPU fallback of the fused kernel repeats K/V per query head, and its elementwise ops (the softmax) are
scalar and single-threaded. Here the same math runs as grouped matmuls; long inputs and decode steps over a
large K/V run in the C kernel (`kernel`, float32, outside mx.compile); other long inputs run in cache-sized
blocks of query rows on two streams, which also give the kernel's gradients.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

import mlx.core as mx

from . import kernel

# Scores one CPU block holds (2 MiB of float32, an L2 cache): a block's passes (product, max, exp, sum) then read
# cached data, and no big buffer is page-faulted in per pass.
BLOCK_SCORES = 2**19
# From this many scores on, CPU attention runs in blocks alternating between two streams.
PARALLEL_SCORES = 2**21
# From this many bytes of K and V on, a few query rows (a decode step) go to the C kernel too: it reads K and V
# once on every core, but a call costs a synchronisation, which a smaller K/V does not repay
# (docs/linux_cpu_engine.md).
KERNEL_KV_BYTES = 64 * 2**20
# Below this many scores (a decode step of a small batch) the plain softmax is as fast and fewer ops.
FEW_SCORES = 2**16
LOG2E = math.log2(math.e)


def attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
    """softmax(q k^T + sum(terms)) v with k, v of G <= H heads, never tiled."""
    if kernel_applies(q, k, v, terms):
        return _kernel_attention(q, k, v, *terms)
    return _mlx_attention(q, k, v, terms)


def kernel_applies(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> bool:
    """Whether CPU attention over these operands goes to the C kernel (outside mx.compile; inside it the MLX
    path runs): many scores (a long input), or a large K/V (a decode step of a big batch)."""
    return (_long_input(q, k) or kernel_reads_kv(k, v)) and kernel.applies(q, k, v, terms)


def _long_input(q: mx.array, k: mx.array) -> bool:
    """More than one query row and at least PARALLEL_SCORES scores: worth blocks on threads."""
    B, H, L, _ = q.shape
    return L > 1 and B * H * L * k.shape[2] >= PARALLEL_SCORES


def kernel_reads_kv(k: mx.array, v: mx.array) -> bool:
    """Whether a decode step's attention over this K/V is the C kernel's (then the step must run eagerly)."""
    return kernel.available() and k.dtype == v.dtype == mx.float32 and k.nbytes + v.nbytes >= KERNEL_KV_BYTES


def _mlx_attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
    return _blocked_attention(q, k, v, terms) if _long_input(q, k) else _grouped_attention(q, k, v, terms)


@mx.custom_function
def _kernel_attention(q: mx.array, k: mx.array, v: mx.array, *terms: mx.array) -> mx.array:
    """The C kernel's attention; gradients are those of the MLX path (the vjp below)."""
    try:
        mx.eval(q, k, v, *terms)
    except ValueError:  # inside mx.compile or mx.vmap, where nothing may be evaluated
        return _mlx_attention(q, k, v, terms)
    out = kernel.run(q, k, v, terms)
    return _mlx_attention(q, k, v, terms) if out is None else out


@_kernel_attention.vjp
def _kernel_attention_vjp(primals, cotangent, output):
    # The MLX path again, differentiated.
    def reference(q, k, v, *terms):
        return _mlx_attention(q, k, v, terms)

    return mx.vjp(reference, list(primals), [cotangent])[1]


def _blocked_attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
    B, H, L, _ = q.shape
    S = k.shape[2]
    # Blocks of query rows, one input at a time, alternating between two CPU streams: MLX runs each stream
    # on its own thread, and its elementwise CPU ops (the softmax) are single-threaded. The blocks are
    # listed in order, so MLX dispatches them interleaved and both streams stay busy.
    rows = max(1, BLOCK_SCORES // (H * S))
    # Every block reads all of K and V: laid out once here, not copied per block from a transposed view.
    k, v = mx.contiguous(k), mx.contiguous(v)
    streams, n, per_input = _cpu_streams(), 0, []
    for b in range(B):
        blocks = []
        for i in range(0, L, rows):
            with mx.stream(streams[n % 2]):
                sliced = [_block_of(t, b, i, rows) for t in terms]
                blocks.append(_grouped_attention(q[b : b + 1, :, i : i + rows], k[b : b + 1], v[b : b + 1], sliced))
            n += 1
        per_input.append(mx.concatenate(blocks, axis=2) if len(blocks) > 1 else blocks[0])
    return mx.concatenate(per_input, axis=0) if B > 1 else per_input[0]


def _block_of(term: mx.array, b: int, i: int, rows: int) -> mx.array:
    """The part of a [1|B, 1|H, 1|L, S] mask term that input b's query rows i..i+rows see."""
    if term.shape[0] > 1:
        term = term[b : b + 1]
    return term if term.shape[2] == 1 else term[:, :, i : i + rows]


_streams = threading.local()


def _cpu_streams():
    # MLX streams belong to the thread that made them: each thread gets its own pair.
    pair = getattr(_streams, "pair", None)
    if pair is None:
        pair = _streams.pair = (mx.default_stream(mx.cpu), mx.new_stream(mx.cpu))
    return pair


# 2**f on [-1/2, 1/2]: least-squares fit, relative error at most 1.5e-7 with these float32 coefficients.
EXP2_COEFFS = (
    1.0000001192092896,
    0.6931469440460205,
    0.24022121727466583,
    0.0555073693394661,
    0.0096754767000675,
    0.0013268870534375,
)


def _exp2_parts(x: mx.array, m: mx.array):
    """exp(x - m) for x <= m as 2**f * 2**n, f in [-1/2, 1/2]: the polynomial 2**f and the exponent bits of
    2**n, in one fused pass. MLX's CPU exp is a scalar libm call, several times slower."""
    u = mx.maximum((x - m) * LOG2E, -127.0)
    n = mx.stop_gradient((u + 127.5).astype(mx.int32))  # round(u) + 127 >= 0, so truncation rounds
    f = u - (n.astype(mx.float32) - 127.0)
    p = EXP2_COEFFS[-1]
    for c in reversed(EXP2_COEFFS[:-1]):
        p = p * f + c
    return p, n << 23


# A view cannot be fused (nor compiled shapeless): the bits become a float outside the compiled pass, which a
# view inside would split in two.
_exp2_parts_compiled = mx.compile(_exp2_parts)


def _exp_shifted(x: mx.array, m: mx.array) -> mx.array:
    p, bits = _exp2_parts_compiled(x, m)
    # 2**(n - 127) from its exponent bits; n == 0 gives 0.0, so masked keys weigh exactly nothing.
    return p * mx.stop_gradient(mx.view(bits, mx.float32))


def _grouped_attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
    B, H, L, D = q.shape
    G = k.shape[1]
    # Heads g*H/G .. (g+1)*H/G-1 share K/V head g: stack them along the query axis.
    qg = q.reshape(B, G, (H // G) * L, D)
    grouped = [t if t.shape[1] == 1 or G == H else t.reshape(t.shape[0], G, (H // G) * L, t.shape[-1]) for t in terms]
    if grouped:
        # The first term is the product's initial value (BLAS adds it): one pass over the scores fewer.
        shape = (B, G, (H // G) * L, k.shape[2])
        scores = mx.addmm(mx.broadcast_to(grouped[0], shape), qg, k.swapaxes(-1, -2))
        for t in grouped[1:]:
            scores = scores + t
    else:
        scores = qg @ k.swapaxes(-1, -2)
    if v.dtype != mx.float32 or scores.size < FEW_SCORES:
        # Half precision (unnormalised sums could overflow) and small decode steps (overhead-bound).
        probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)
        return (probs @ v).reshape(B, H, L, -1)
    # Softmax normalised after the product with V: one pass over the scores fewer.
    weights = _exp_shifted(scores, mx.stop_gradient(scores.max(axis=-1, keepdims=True)))
    out = (weights @ v) / weights.sum(axis=-1, keepdims=True)
    return out.reshape(B, H, L, -1)
