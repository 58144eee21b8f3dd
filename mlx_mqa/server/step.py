"""The decode step of a continuous batch: rows that joined at different steps share one step counter.

T5's self-attention position bias depends only on j - i, so every row writes its key/value at the same cache
column (one scalar offset) and a row that joined at column `start` masks the columns before it: the distances
among its own tokens are those of decoding it alone. Cross-attention K/V of different input lengths are padded
to the batch's longest and the padding masked (masked keys weigh exactly 0).

The model is only read: its decoder blocks are called with masks built here, so no model code changes.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import mlx.core as mx

from .. import engine
from ..decoding.compiled import model_lock
from ..models.cache import CrossKV, StaticKVCache

# Cross-attention K/V are padded to a multiple of this many input tokens, so a compiled step is traced for a
# few lengths rather than one per prompt length.
CROSS_BUCKET = 64


def decoder_step(model, y, offset, starts, keys, values, cross_keys, cross_values, cross_lengths):
    """Logits [n, V] of the next token of n rows, and the updated self-attention caches.

    y [n, 1]: each row's last token; offset: the scalar column written now; starts [n]: each row's first
    column; cross_lengths [n]: each row's input tokens. Same arithmetic as `Model.decode` over a static cache.
    """
    dtype = keys[0].dtype
    capacity, S = keys[0].shape[2], cross_keys[0].shape[2]
    x = model.shared(y)
    cols = mx.arange(capacity)[None, :]
    own = (cols >= starts[:, None]) & (cols <= offset)  # [n, C]: this row's tokens so far
    bias = model.decoder.bias_owner.position_bias(1, capacity, offset, dtype)  # [1, H, 1, C]
    self_mask = mx.where(own[:, None, None, :], bias, mx.finfo(dtype).min)
    orders = model.args.decoder_head_order
    masks = [self_mask] * len(model.layers) if orders is None else [self_mask[:, mx.array(o)] for o in orders]
    keep = mx.arange(S)[None, :] < cross_lengths[:, None]
    cross_mask = mx.where(keep, 0.0, mx.finfo(dtype).min).astype(dtype)[:, None, None, :]
    cache = [StaticKVCache(k, v, offset) for k, v in zip(keys, values)]
    cross = [CrossKV(k, v) for k, v in zip(cross_keys, cross_values)]
    for i, block in enumerate(model.decoder.block):
        x = block(x, masks[i], cross_mask, cross[i], cache[i])
    logits = model.lm_logits(model.decoder.final_layer_norm(x))[:, -1, :]
    return logits, [c.keys for c in cache], [c.values for c in cache]


def _pad_axis2(a: mx.array, length: int) -> mx.array:
    extra = length - a.shape[2]
    if extra <= 0:
        return a[:, :, :length]
    return mx.concatenate([a, mx.zeros((*a.shape[:2], extra, a.shape[3]), a.dtype)], axis=2)


def _shorten(a: mx.array, length: int) -> mx.array:
    return a if a.shape[2] <= length else mx.contiguous(a[:, :, :length])


def _join(batch: mx.array, row: mx.array, length: int) -> mx.array:
    return mx.concatenate([_pad_axis2(batch, length), _pad_axis2(row, length)], axis=0)


class BatchState:
    """The arrays of the live rows: self-attention caches [n, G, capacity, D] and cross K/V [n, G, S, D].

    Rows join (`add`) and leave (`keep`) between steps; the arrays hold exactly the live rows, so a step
    computes nothing for free slots. `capacity` columns are shared by all rows; when the counter reaches it,
    the columns before the earliest live row's start are dropped (`compact`).
    """

    def __init__(self, model, capacity: int, compiled: Optional[bool] = None, cross_bucket: int = CROSS_BUCKET):
        self.model = model
        self.capacity = capacity
        self.cross_bucket = cross_bucket
        self.compiled_choice = compiled
        self.n = 0
        self.offset = 0
        self.compactions = 0
        self.starts: List[int] = []
        self.lengths: List[int] = []
        self.keys: List[mx.array] = []
        self.values: List[mx.array] = []
        self.cross_keys: List[mx.array] = []
        self.cross_values: List[mx.array] = []
        self._step = None
        self._parameters = model.parameters()  # restored if a trace fails

    def add(self, cross: Sequence[CrossKV], length: int) -> int:
        """Append a row whose cross K/V ([1, G, length, D] per layer) were just computed; returns its index."""
        if self.n == 0:
            self.offset = 0
        elif self.offset >= self.capacity:
            self.compact()
        S = self._cross_length([length, *self.lengths])
        G, D = cross[0].keys.shape[1], cross[0].keys.shape[3]
        dtype = cross[0].keys.dtype
        zeros = mx.zeros((1, G, self.capacity, D), dtype)
        if self.n == 0:
            self.keys = [zeros for _ in cross]
            self.values = [zeros for _ in cross]
            self.cross_keys = [_pad_axis2(c.keys, S) for c in cross]
            self.cross_values = [_pad_axis2(c.values, S) for c in cross]
        else:
            self.keys = [mx.concatenate([k, zeros], axis=0) for k in self.keys]
            self.values = [mx.concatenate([v, zeros], axis=0) for v in self.values]
            pairs = zip(self.cross_keys, self.cross_values, cross)
            joined = [(_join(k, c.keys, S), _join(v, c.values, S)) for k, v, c in pairs]
            self.cross_keys = [k for k, _ in joined]
            self.cross_values = [v for _, v in joined]
        self.starts.append(self.offset)
        self.lengths.append(length)
        self.n += 1
        self._eval()
        return self.n - 1

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only batch rows `rows` (in this order): the others leave and their memory is freed."""
        if len(rows) == self.n:
            return
        self.starts = [self.starts[r] for r in rows]
        self.lengths = [self.lengths[r] for r in rows]
        self.n = len(rows)
        if not rows:
            self.keys, self.values, self.cross_keys, self.cross_values = [], [], [], []
            return
        idx = mx.array(list(rows), dtype=mx.int32)
        S = self._cross_length(self.lengths)
        self.keys = [k[idx] for k in self.keys]
        self.values = [v[idx] for v in self.values]
        # Copied when shorter, so the longer buffer is freed.
        self.cross_keys = [_shorten(k[idx], S) for k in self.cross_keys]
        self.cross_values = [_shorten(v[idx], S) for v in self.cross_values]
        self._eval()

    def _cross_length(self, lengths: Sequence[int]) -> int:
        return -(-max(lengths) // self.cross_bucket) * self.cross_bucket

    def compact(self) -> None:
        """Drop the cache columns before the earliest live row's start (nobody reads them)."""
        drop = min(self.starts)
        if drop == 0:
            raise RuntimeError("self-attention cache full: a row outlived the cache capacity")
        self.keys = [_pad_axis2(k[:, :, drop:], self.capacity) for k in self.keys]
        self.values = [_pad_axis2(v[:, :, drop:], self.capacity) for v in self.values]
        self.starts = [s - drop for s in self.starts]
        self.offset -= drop
        self.compactions += 1
        self._eval()

    def _eval(self) -> None:
        mx.eval(self.keys, self.values, self.cross_keys, self.cross_values)

    def logits(self, y: mx.array) -> mx.array:
        """[n, V] logits after tokens y [n]; writes column `offset` of every row and advances the counter."""
        if self.offset >= self.capacity:
            self.compact()
        args = (
            y[:, None],
            mx.array(self.offset, dtype=mx.int32),
            mx.array(self.starts, dtype=mx.int32),
            self.keys,
            self.values,
            self.cross_keys,
            self.cross_values,
            mx.array(self.lengths, dtype=mx.int32),
        )
        with model_lock(self.model):
            try:
                logits, self.keys, self.values = self._step_fn()(*args)
            except BaseException:
                # A failed trace leaves placeholders in the model: put its arrays back, retrace next time.
                self.model.update(self._parameters)
                self._step = None
                raise
        self.offset += 1
        return logits

    def _step_fn(self):
        compiled = self.compiled_choice
        if compiled is None:
            compiled = not engine.current().eager_decode_step(self.cross_keys[0], self.cross_values[0])
        if not compiled:
            model = self.model
            return lambda *a: decoder_step(model, *a)
        if self._step is None:
            model = self.model
            self._step = mx.compile(lambda *a: decoder_step(model, *a), inputs=list(model.children().values()))
        return self._step
