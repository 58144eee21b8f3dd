"""The Linux CPU engine as `mlx_mqa.engine` sees it: the same names as its PortableEngine."""

from __future__ import annotations

import ctypes
from typing import Sequence

import mlx.core as mx

from . import attention as _attention
from . import quantized

name = "cpu"

# From this many input tokens on, a batch's encoder leaves enough freed memory behind (its workspace, then the
# encoder output once the cross K/V exist) that handing it back lowers the decode's peak; below, MLX's buffer
# cache stays warm for the next call.
RELEASE_TOKENS = 4096


def attention(q: mx.array, k: mx.array, v: mx.array, terms: Sequence[mx.array]) -> mx.array:
    return _attention.attention(q, k, v, terms)


def eager_decode_step(cross_keys: mx.array, cross_values: mx.array) -> bool:
    """The C kernel reads a large cross K/V faster than the compiled step's products, but cannot run inside a
    compiled graph: over such a K/V the default step is the eager one."""
    return _attention.kernel_reads_kv(cross_keys, cross_values)


def _malloc_trim():
    try:  # glibc: hands freed heap memory back to the system
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_trim = _malloc_trim()


def release_memory(arrays, tokens: int) -> None:
    """Evaluate `arrays`, then give back memory that is free but still held: MLX's buffer cache and, with glibc,
    the heap (the attention kernel's and OpenBLAS's freed buffers), which would otherwise stay resident under
    what is allocated next."""
    if tokens < RELEASE_TOKENS:
        return
    mx.eval(arrays)
    mx.clear_cache()
    if _trim is not None:
        _trim(0)


def adapt_quantized(model):
    return quantized.adapt(model)
