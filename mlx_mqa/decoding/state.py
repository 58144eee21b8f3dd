"""What a decode step reads and writes: cross-attention K/V, the self-attention caches, and the step itself
(the compiled one, or the eager one where the engine prefers it).

Thread safety: building a step's graph is serialized per model (`model_lock`). Tracing the compiled
step swaps the model's arrays for placeholders, so no other thread may build a graph from that model
meanwhile; evaluation itself runs outside the lock, on each thread's own streams, except where an engine
evaluates while the graph is built (the Linux CPU engine's attention kernel).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from .. import engine
from ..errors import InputError
from ..models.cache import StaticKVCache
from ..models.config import machine_memory
from .compiled import compiled_decode_step, discard_compiled_steps, model_lock
from .device import on_generation_stream

# Tokens encoded at once when decoding: a bigger batch is encoded a few inputs at a time, so the encoder's
# workspace (activations, attention scores, the position bias) does not grow with the batch.
ENCODE_TOKENS = 4096
# From this many tokens on, the encoder runs one evaluated layer at a time (see `encode_bounded`).
LAYERWISE_TOKENS = 1024
# The share of the machine's memory one decode may plan to use.
FIT_FRACTION = 0.8


def check_decode_fits(model, rows: int, max_steps: int, itemsize: int) -> None:
    """A decode of `rows` decoder rows (batch x beams) and `max_steps` steps fits in this machine's memory:
    checked before anything is allocated. Counts the self-attention caches and a step's [rows, vocab] logits
    (a few float32 copies: log-probabilities, processors, the sampler)."""
    a = model.args
    cache = 2 * len(model.layers) * rows * a.num_key_value_heads * max_steps * a.d_kv * itemsize
    logits = 4 * rows * a.vocab_size * 4
    total = machine_memory()
    if total is not None and cache + logits > FIT_FRACTION * total:
        raise InputError(
            f"{rows} decoder rows (batch x num_beams) x max_new_tokens {max_steps} need "
            f"{(cache + logits) / 2**30:.1f} GiB ({cache / 2**30:.1f} GiB of self-attention cache); this machine "
            f"has {total / 2**30:.1f} GiB: lower max_new_tokens, num_beams or the batch"
        )


def check_decode_inputs(model, input_ids: mx.array, attention_mask: Optional[mx.array], max_steps: int) -> None:
    """Every argument of a decode checked before anything is traced or allocated."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_steps!r}")
    if input_ids.ndim != 2 or input_ids.size == 0 or not mx.issubdtype(input_ids.dtype, mx.integer):
        raise InputError(
            f"input_ids must be a non-empty [batch, length] integer array, got shape {input_ids.shape} "
            f"{input_ids.dtype}"
        )
    lo, hi = mx.min(input_ids).item(), mx.max(input_ids).item()
    vocab = model.args.vocab_size
    if lo < 0 or hi >= vocab:
        bad = hi if hi >= vocab else lo
        raise InputError(
            f"token id {bad} is outside the model's vocabulary (vocab_size {vocab}); "
            "is the tokenizer the one of this model?"
        )
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}")
        if mx.min(attention_mask.sum(axis=1)).item() < 1:
            raise InputError("a row of attention_mask is all padding; every input needs at least one token")


def encode_bounded(model, input_ids: mx.array, attention_mask: Optional[mx.array]) -> mx.array:
    """The encoder output of a batch; a long one at most ENCODE_TOKENS tokens (and at least one input) at a time,
    each part one layer at a time.

    A short batch is returned unevaluated (it is computed with the first decode step). A long part's layers are
    built under the model's lock and evaluated outside it: other threads on the model wait at most one layer
    (on the CPU engine, whose kernel evaluates while the graph is built, the lock covers that layer's attention),
    Ctrl-C lands between layers, and peak memory is the weights, the output and one layer's workspace.
    """
    B, L = input_ids.shape
    if B * L < LAYERWISE_TOKENS:
        with model_lock(model):
            return model.encode(input_ids, attention_mask)
    rows = max(1, ENCODE_TOKENS // L)
    parts = []
    for i in range(0, B, rows):
        mask = None if attention_mask is None else attention_mask[i : i + rows]
        parts.append(_encode_by_layer(model, input_ids[i : i + rows], mask))
    return mx.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _encode_by_layer(model, input_ids: mx.array, attention_mask: Optional[mx.array]) -> mx.array:
    layers = model.encode_layers(input_ids, attention_mask)
    out = None
    while True:
        with model_lock(model):
            x = next(layers, None)
        if x is None:
            return out
        mx.eval(x)  # outside the lock: other threads may build their graphs meanwhile
        out = x


class DecodeState:
    """Everything one decode step reads: cross-attention K/V, the self-attention caches and the
    encoder padding mask. Built once per input; the cross K/V are never recomputed.

    With `beams` > 1 the decoder runs B*beams rows while the encoder output and cross K/V stay
    at B rows, shared by the beams of each input. At most `max_steps` steps fit its caches.
    `compiled`: the compiled step (True), the eager one (False), or None: the engine's choice.
    """

    def __init__(
        self,
        model,
        input_ids: mx.array,
        attention_mask: Optional[mx.array],
        max_steps: int,
        compiled: Optional[bool] = None,
        beams: int = 1,
    ):
        check_decode_inputs(model, input_ids, attention_mask, max_steps)
        rows = input_ids.shape[0] * beams
        check_decode_fits(model, rows, max_steps, model.dtype.size)
        self.model = model
        self.max_steps = max_steps
        self.steps = 0
        eng = engine.current()
        enc = encode_bounded(model, input_ids, attention_mask)
        eng.release_memory(enc, input_ids.size)
        with model_lock(model):
            self.cross = model.cross_kv(enc)
        del enc  # once the cross K/V exist, the encoder output is garbage
        eng.release_memory([[c.keys, c.values] for c in self.cross], input_ids.size)
        self.attention_mask = attention_mask
        if compiled is None:
            compiled = not (self.cross and eng.eager_decode_step(self.cross[0].keys, self.cross[0].values))
        self.compiled = compiled
        if compiled:
            G, D = model.args.num_key_value_heads, model.args.d_kv
            dtype = self.cross[0].keys.dtype
            self.cache = [StaticKVCache.empty(rows, G, max_steps, D, dtype) for _ in model.layers]
            if attention_mask is None:  # one compiled graph for padded and unpadded batches
                self.attention_mask = mx.ones(input_ids.shape, dtype=mx.int32)
            self._shape = (rows, max_steps, *self.cross[0].keys.shape, str(dtype))
            self._parameters = model.parameters()  # restored if a trace fails (see `_compiled_logits`)
            self._step = None
        else:
            self.cache = model.make_cache(max_size=max_steps)

    def logits(self, y: mx.array) -> mx.array:
        """[rows, V] logits of the next token after tokens y [rows]; advances the caches."""
        if self.steps >= self.max_steps:
            raise InputError(f"the decode state holds {self.max_steps} steps (max_new_tokens) and all are used")
        self.steps += 1
        with model_lock(self.model), on_generation_stream():
            if not self.compiled:
                return self.model.decode(y[:, None], self.cross, self.attention_mask, self.cache)[:, -1, :]
            return self._compiled_logits(y)

    def _compiled_logits(self, y: mx.array) -> mx.array:
        if self._step is None:  # looked up once per generation, not per token
            self._step = compiled_decode_step(self.model, self._shape)
        step = self._step
        offset = self.cache[0].offset
        try:
            logits, keys, values = step(
                y[:, None],
                offset,
                [c.keys for c in self.cache],
                [c.values for c in self.cache],
                [c.keys for c in self.cross],
                [c.values for c in self.cross],
                self.attention_mask,
            )
        except BaseException:
            # A trace that fails leaves placeholders in the model: put its arrays back, retrace next time.
            self.model.update(self._parameters)
            discard_compiled_steps(self.model)
            self._step = None
            raise
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
