"""What a decode step reads and writes: cross-attention K/V, self-attention caches, the compiled step (or
the eager one, whose attention over a large K/V on CPU is the C kernel's).

Thread safety: building a step's graph is serialized per model (`model_lock`). Tracing the compiled
step swaps the model's arrays for placeholders, so no other thread may build a graph from that model
meanwhile; evaluation itself runs outside the lock, on each thread's own streams, except where the CPU attention
kernel runs (it evaluates its inputs while the graph is built): a long input's encoder part and an eager step.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Optional

import mlx.core as mx

from ..errors import InputError
from ..models.attention import streams_kv
from ..models.cache import CrossKV, StaticKVCache

_LOCKS_GUARD = threading.Lock()
# Tokens encoded at once when decoding: a bigger batch is encoded a few inputs at a time, so the encoder's
# workspace (activations, attention blocks, the [H, L, L] position bias) does not grow with the batch.
ENCODE_TOKENS = 4096


def _malloc_trim():
    try:  # glibc: hands freed heap memory back to the system
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_trim = _malloc_trim()


def release_freed_memory() -> None:
    """Give memory that is free but still held back to the system: MLX's buffer cache (the encoder's workspace,
    the encoder output once its cross K/V exist) and, with glibc, the heap (the CPU attention kernel's and
    OpenBLAS's freed buffers). Otherwise it stays resident under the K/V allocated next: measured 50-60 MiB of
    heap and 48 MiB of cache at t5-base, batch 8, 2048 tokens."""
    mx.clear_cache()
    if _trim is not None:
        _trim(0)


def model_lock(model) -> threading.RLock:
    """The lock that serializes graph building (and compiled-step tracing) on one model."""
    lock = getattr(model, "_decode_lock", None)
    if lock is None:
        with _LOCKS_GUARD:
            lock = getattr(model, "_decode_lock", None)
            if lock is None:
                lock = model._decode_lock = threading.RLock()
    return lock


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
    """The encoder output of a batch, at most ENCODE_TOKENS tokens (and at least one input) at a time.

    Each part is evaluated before the next is built, so peak memory is the weights, the output and one
    part's workspace. Inference only: a batch that fits in one part is returned unevaluated, as before.
    On CPU the attention kernel evaluates each layer's inputs while the graph is built, so there a part is
    computed under the lock; it uses every core anyway.
    """
    B, L = input_ids.shape
    rows = max(1, ENCODE_TOKENS // L)
    if B <= rows:
        with model_lock(model):
            return model.encode(input_ids, attention_mask)
    parts = []
    for i in range(0, B, rows):
        mask = None if attention_mask is None else attention_mask[i : i + rows]
        with model_lock(model):
            part = model.encode(input_ids[i : i + rows], mask)
        mx.eval(part)  # outside the lock: other threads may build their graphs meanwhile
        parts.append(part)
    return mx.concatenate(parts, axis=0)


class DecodeState:
    """Everything one decode step reads: cross-attention K/V, the self-attention caches and the
    encoder padding mask. Built once per input; the cross K/V are never recomputed.

    With `beams` > 1 the decoder runs B*beams rows while the encoder output and cross K/V stay
    at B rows, shared by the beams of each input. At most `max_steps` steps fit its caches.
    `compiled`: the compiled step (True), the eager one (False), or None: `default_compiled`.
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
        self.model = model
        self.max_steps = max_steps
        self.steps = 0
        enc = encode_bounded(model, input_ids, attention_mask)
        # A long batch's encoder leaves large freed buffers behind; handed back before the cross K/V (and again
        # after, with the encoder output) they do not add to the peak. Short inputs keep MLX's cache warm.
        settle = input_ids.size >= ENCODE_TOKENS and mx.default_device() == mx.cpu
        if settle:
            mx.eval(enc)
            release_freed_memory()
        with model_lock(model):
            self.cross = model.cross_kv(enc)
        if settle:
            mx.eval([c.keys for c in self.cross], [c.values for c in self.cross])
            del enc
            release_freed_memory()
        self.attention_mask = attention_mask
        if compiled is None:
            compiled = default_compiled(self.cross)
        self.compiled = compiled
        rows = input_ids.shape[0] * beams
        if compiled:
            G, D = model.args.num_key_value_heads, model.args.d_kv
            dtype = self.cross[0].keys.dtype
            self.cache = [StaticKVCache.empty(rows, G, max_steps, D, dtype) for _ in model.layers]
            if attention_mask is None:  # one compiled graph for padded and unpadded batches
                self.attention_mask = mx.ones(input_ids.shape, dtype=mx.int32)
            self._parameters = model.parameters()  # restored if a trace fails (see `_compiled_logits`)
        else:
            self.cache = model.make_cache(max_size=max_steps)

    def logits(self, y: mx.array) -> mx.array:
        """[rows, V] logits of the next token after tokens y [rows]; advances the caches."""
        if self.steps >= self.max_steps:
            raise InputError(f"the decode state holds {self.max_steps} steps (max_new_tokens) and all are used")
        self.steps += 1
        with model_lock(self.model):
            if not self.compiled:
                return self.model.decode(y[:, None], self.cross, self.attention_mask, self.cache)[:, -1, :]
            return self._compiled_logits(y)

    def _compiled_logits(self, y: mx.array) -> mx.array:
        step = compiled_decode_step(self.model)
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
            self.model._compiled_decode_step = None
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


def default_compiled(cross) -> bool:
    """The compiled step, unless on CPU the cross K/V are large enough for the C attention kernel, which cannot
    run inside a compiled graph (docs/decode_step.md: t5-base MHA, batch 16, 2048 tokens, 0.70x the time)."""
    return not (cross and mx.default_device() == mx.cpu and streams_kv(cross[0].keys, cross[0].values))


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
