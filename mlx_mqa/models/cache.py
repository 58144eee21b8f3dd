"""Key/value caches for decoding.

Self-attention caches are preallocated buffers written in place; cross-attention
K/V are computed once per input and only read afterwards.
"""

from __future__ import annotations

from typing import Optional, Tuple

import mlx.core as mx


class _Buffers:
    """Shared by the caches: row selection (beam reordering), state and byte counts."""

    keys: Optional[mx.array]
    values: Optional[mx.array]

    def select(self, indices: mx.array):
        """Keep batch rows `indices` (beam search reordering)."""
        if self.keys is not None:
            self.keys = self.keys[indices]
            self.values = self.values[indices]

    @property
    def state(self):
        return self.keys, self.values

    def _filled_bytes(self, filled: int) -> int:
        if self.keys is None:
            return 0
        per_token = (self.keys.nbytes + self.values.nbytes) // self.keys.shape[2]
        return per_token * filled


class KVCache(_Buffers):
    """Preallocated self-attention cache: [B, G, capacity, D], filled up to `offset`.

    Grows in `step`-sized chunks only when more tokens arrive than were reserved,
    so a decode with a known length never reallocates.
    """

    step = 256

    def __init__(self, max_size: Optional[int] = None):
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self.max_size = max_size

    def _reserve(self, keys: mx.array, values: mx.array, needed: int):
        B, G, _, Dk = keys.shape
        Dv = values.shape[-1]
        if self.keys is None:
            capacity = max(self.max_size or 0, needed)
            capacity = ((capacity + self.step - 1) // self.step) * self.step if self.max_size is None else capacity
            self.keys = mx.zeros((B, G, capacity, Dk), keys.dtype)
            self.values = mx.zeros((B, G, capacity, Dv), values.dtype)
        elif needed > self.keys.shape[2]:
            extra = ((needed - self.keys.shape[2] + self.step - 1) // self.step) * self.step
            self.keys = mx.concatenate([self.keys, mx.zeros((B, G, extra, Dk), keys.dtype)], axis=2)
            self.values = mx.concatenate([self.values, mx.zeros((B, G, extra, Dv), values.dtype)], axis=2)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> Tuple[mx.array, mx.array]:
        start = self.offset
        end = start + keys.shape[2]
        self._reserve(keys, values, end)
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def nbytes(self) -> int:
        """Bytes held by the filled part of the cache."""
        return self._filled_bytes(self.offset)


class StaticKVCache(_Buffers):
    """Fixed-capacity cache whose write position is an array, so a compiled step never retraces.

    `update_and_fetch` returns the whole buffer; slots past the current position are hidden by
    the decoder's causal mask.
    """

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys = keys
        self.values = values
        self.offset = offset

    @classmethod
    def empty(cls, batch: int, kv_heads: int, capacity: int, head_dim: int, dtype) -> "StaticKVCache":
        zeros = mx.zeros((batch, kv_heads, capacity, head_dim), dtype)
        return cls(zeros, mx.zeros_like(zeros), mx.array(0, dtype=mx.int32))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> Tuple[mx.array, mx.array]:
        start = mx.reshape(self.offset, (1,))
        self.keys = mx.slice_update(self.keys, keys.astype(self.keys.dtype), start, axes=(2,))
        self.values = mx.slice_update(self.values, values.astype(self.values.dtype), start, axes=(2,))
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def nbytes(self) -> int:
        """Bytes of the filled part (the buffer itself holds `capacity` slots)."""
        return self._filled_bytes(int(self.offset.item()))


class CrossKV(_Buffers):
    """Cross-attention keys/values of one decoder layer, computed once from the encoder output."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys = keys
        self.values = values

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
