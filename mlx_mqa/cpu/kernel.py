"""The binding of the C attention kernel (csrc/attention.c, built into the BLAS shim).

MLX's CPU softmax is scalar and single-threaded; the kernel fuses the additive terms, max, exp and sum
over cached blocks of scores, vectorised, on threads of its own, with the products on the single-threaded
OpenBLAS instance. In a decode step it reads each K/V head once, on every core. It runs outside MLX's
graph: its inputs must be evaluated, are read in place through numpy views (strides and all, so transposed
heads and the position-bias view are not copied), and the output comes back as a new array.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from . import blas

# Scores per block of query rows: 2 MiB of float32 per thread, an L2 cache.
BLOCK_SCORES = 2**19
MAX_TERMS = 2
OUT_OF_MEMORY = 3  # the kernel's return code when a thread cannot get its block buffer


def _library():
    lib = blas.shim_library
    if lib is None or not hasattr(lib, "mlx_mqa_attention"):
        return None
    lib.mlx_mqa_single_sgemm.restype = lib.mlx_mqa_single_sgemv.restype = ctypes.c_void_p
    if not lib.mlx_mqa_single_sgemm() or not lib.mlx_mqa_single_sgemv():
        return None
    fn = lib.mlx_mqa_attention
    fn.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_long),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    fn.restype = ctypes.c_int
    return fn


_kernel = _library()
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available() -> bool:
    return _kernel is not None


def applies(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> bool:
    """Whether the kernel takes these operands (float32, at most two mask terms spanning the keys)."""
    B, H, L, _ = q.shape
    S = k.shape[2]
    return (
        _kernel is not None
        and q.dtype == k.dtype == v.dtype == mx.float32
        and len(terms) <= MAX_TERMS
        and all(
            t.dtype == mx.float32
            and t.ndim == 4
            and t.shape[0] in (1, B)
            and t.shape[1] in (1, H)
            and t.shape[2] in (1, L)
            and t.shape[3] == S
            for t in terms
        )
    )


def _strides(a: np.ndarray, matrix: bool) -> Optional[list]:
    """(batch, head, row) strides in elements, 0 along broadcast axes; None if the last axis is not
    contiguous, or (for a product's operand) rows are not laid out as a BLAS matrix."""
    if a.dtype != np.float32 or (a.shape[-1] > 1 and a.strides[-1] != 4):
        return None
    s = [0 if n == 1 else st // 4 for n, st in zip(a.shape[:3], a.strides[:3])]
    if matrix:
        if a.shape[2] == 1:
            s[2] = a.shape[-1]  # a single row: any leading dimension will do
        elif s[2] < a.shape[-1]:
            return None
    return s


def run(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> Optional[mx.array]:
    """softmax(q k^T + sum(terms)) v as [B, H, L, D] (a view of [B, L, H, D]), for evaluated float32
    operands that `applies` accepts; None when their layout does not suit the kernel."""
    B, H, L, D = q.shape
    G, S = k.shape[1], k.shape[2]
    views = [np.asarray(a) for a in (q, k, v, *terms)]
    strides = [_strides(a, i < 3) for i, a in enumerate(views)]
    if any(s is None for s in strides):
        return None
    out = np.empty((B, L, H, D), np.float32)
    heads, length, out_strides = H, L, [L * H * D, D, H * D]
    if L == 1 and G < H:
        # A decode step: the query heads sharing a K/V head become that head's rows, so each unit reads its
        # K and V once (one product of H/G rows, not H/G single rows).
        group = H // G
        for i, s in enumerate(strides):
            if i not in (1, 2):  # q and the terms; K and V keep their per-head strides
                s[1], s[2] = group * s[1], s[1]
        if strides[0][2] < D:  # broadcast query heads are no BLAS matrix
            return None
        heads, length, out_strides = G, group, [H * D, group * D, D]
    rows = max(1, min(length, BLOCK_SCORES // S))
    ptrs = (ctypes.c_void_p * len(views))(*(a.ctypes.data for a in views))
    flat = (ctypes.c_long * (3 * len(views) + 3))(*(x for s in strides for x in s), *out_strides)
    dims = (ctypes.c_int * 7)(B, heads, G, length, S, D, rows)
    rc = _kernel(ptrs, flat, dims, len(terms), out.ctypes.data, THREADS)
    if rc == OUT_OF_MEMORY:
        raise MemoryError(f"CPU attention: out of memory for {THREADS} blocks of {rows} x {S} float32 scores")
    if rc != 0:  # no single-threaded BLAS, or arguments the kernel does not take: the MLX path answers
        return None
    return mx.array(out).transpose(0, 2, 1, 3)
