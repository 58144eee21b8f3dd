"""What a decode step reads and writes: cross-attention K/V, self-attention caches, the compiled step."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..models.cache import CrossKV, StaticKVCache


class DecodeState:
    """Everything one decode step reads: cross-attention K/V, the self-attention caches and the
    encoder padding mask. Built once per input; the cross K/V are never recomputed.

    With `beams` > 1 the decoder runs B*beams rows while the encoder output and cross K/V stay
    at B rows, shared by the beams of each input.
    """

    def __init__(self, model, input_ids: mx.array, attention_mask: Optional[mx.array], max_steps: int,
                 compiled: bool = True, beams: int = 1):
        self.model = model
        enc = model.encode(input_ids, attention_mask)
        self.cross = model.cross_kv(enc)
        self.attention_mask = attention_mask
        self.compiled = compiled
        rows = input_ids.shape[0] * beams
        if compiled:
            G, D = model.args.num_key_value_heads, model.args.d_kv
            dtype = self.cross[0].keys.dtype
            self.cache = [StaticKVCache.empty(rows, G, max_steps, D, dtype) for _ in model.layers]
            if attention_mask is None:  # one compiled graph for padded and unpadded batches
                self.attention_mask = mx.ones(input_ids.shape, dtype=mx.int32)
        else:
            self.cache = model.make_cache(max_size=max_steps)

    def logits(self, y: mx.array) -> mx.array:
        """[rows, V] logits of the next token after tokens y [rows]; advances the caches."""
        if not self.compiled:
            return self.model.decode(y[:, None], self.cross, self.attention_mask, self.cache)[:, -1, :]
        step = compiled_decode_step(self.model)
        offset = self.cache[0].offset
        logits, keys, values = step(y[:, None], offset, [c.keys for c in self.cache],
                                    [c.values for c in self.cache], [c.keys for c in self.cross],
                                    [c.values for c in self.cross], self.attention_mask)
        for c, k, v in zip(self.cache, keys, values):
            c.keys, c.values, c.offset = k, v, offset + 1
        return logits

    def select(self, indices: mx.array):
        """Reorder decoder rows (beam search); the shared cross K/V need no reordering."""
        for c in self.cache:
            c.select(indices)

    def nbytes(self) -> int:
        """Bytes of the filled self-attention caches plus the cross-attention K/V."""
        return sum(c.nbytes() for c in self.cache) + sum(c.nbytes() for c in self.cross)


def compiled_decode_step(model):
    """One decoder step traced once per shape and replayed: no Python graph building per token.

    Model weights are declared as implicit inputs, so updated weights (after training) are used.
    """
    fn = getattr(model, "_compiled_decode_step", None)
    if fn is None:
        def step(y, offset, keys, values, cross_keys, cross_values, attention_mask):
            cache = [StaticKVCache(k, v, offset) for k, v in zip(keys, values)]
            cross = [CrossKV(k, v) for k, v in zip(cross_keys, cross_values)]
            logits = model.decode(y, cross, attention_mask, cache)[:, -1, :]
            return logits, [c.keys for c in cache], [c.values for c in cache]

        fn = mx.compile(step, inputs=model.state)
        model._compiled_decode_step = fn
    return fn
