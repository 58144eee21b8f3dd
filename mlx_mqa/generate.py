"""Generation: a step generator with injected sampler/processors, and convenience wrappers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, List, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from .cache import CrossKV, StaticKVCache
from .errors import InputError
from .sample_utils import LogitsProcessor, Sampler, greedy


@dataclass
class Encoded:
    """A tokenized, padded batch ready for the encoder."""

    input_ids: mx.array
    attention_mask: Optional[mx.array]
    lengths: List[int]


def encode_prompts(tokenizer, prompts: Union[str, Sequence[str]], max_input_tokens: Optional[int] = None,
                   truncate: bool = False) -> Encoded:
    """Tokenize (right padding). Empty prompts and over-long ones (unless `truncate`) are errors."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise InputError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} is empty; T5 needs at least one input token")
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    if max_input_tokens is not None:
        too_long = [(i, len(t)) for i, t in enumerate(ids) if len(t) > max_input_tokens]
        if too_long and not truncate:
            i, n = too_long[0]
            raise InputError(f"prompt {i} has {n} tokens, more than max_input_tokens={max_input_tokens}; "
                             f"pass truncate=True (--truncate) or raise the limit")
        eos = tokenizer.eos_token_id
        ids = [t if len(t) <= max_input_tokens else t[: max_input_tokens - 1] + [eos] for t in ids]
    return pad_batch(ids, tokenizer.pad_token_id or 0)


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int = 0) -> Encoded:
    lengths = [len(t) for t in ids]
    L = max(lengths)
    arr = np.full((len(ids), L), pad_id, dtype=np.int32)
    mask = np.zeros((len(ids), L), dtype=np.int32)
    for i, t in enumerate(ids):
        arr[i, : len(t)] = t
        mask[i, : len(t)] = 1
    attention_mask = None if all(n == L for n in lengths) else mx.array(mask)
    return Encoded(mx.array(arr), attention_mask, lengths)


@dataclass
class StepOutput:
    tokens: List[int]  # one per row; pad for rows already finished
    finished: List[bool]
    step: int


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


def generate_step(model, input_ids: mx.array, attention_mask: Optional[mx.array] = None, *,
                  max_new_tokens: int = 64, sampler: Optional[Sampler] = None,
                  logits_processors: Optional[Sequence[LogitsProcessor]] = None,
                  eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                  ignore_eos: bool = False, compiled: bool = True) -> Generator[StepOutput, None, None]:
    """Yield one token per row per step until every row has emitted EOS or `max_new_tokens`.

    The encoder and the cross-attention K/V run once; the self-attention cache is preallocated
    for the whole decode. The next step is queued (async_eval) before the current token is
    read back, so the host sync overlaps device work.
    """
    args = model.args
    sampler = sampler or greedy
    eos = args.eos_token_id if eos_token_id is None else eos_token_id
    pad = args.pad_token_id if pad_token_id is None else pad_token_id
    B = input_ids.shape[0]
    state = DecodeState(model, input_ids, attention_mask, max_new_tokens, compiled)
    history = mx.full((B, max_new_tokens + 1), args.decoder_start_token_id, dtype=mx.int32) \
        if logits_processors else None

    def step(y: mx.array, finished: mx.array, n: int):
        logprobs = state.logits(y).astype(mx.float32)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        if logits_processors:
            for proc in logits_processors:
                logprobs = proc(history[:, : n + 1], logprobs)
        tok = sampler(logprobs).astype(mx.int32)
        if not ignore_eos:
            tok = mx.where(finished, pad, tok)
            finished = finished | (tok == eos)
        if history is not None:
            history[:, n + 1] = tok
        return tok, finished

    y = mx.full((B,), args.decoder_start_token_id, dtype=mx.int32)
    finished = mx.zeros((B,), dtype=mx.bool_)
    y, finished = step(y, finished, 0)
    mx.async_eval(y, finished)
    for n in range(max_new_tokens):
        if n + 1 < max_new_tokens:
            next_y, next_finished = step(y, finished, n + 1)
            mx.async_eval(next_y, next_finished)
        tokens, done = y.tolist(), finished.tolist()
        yield StepOutput(tokens, done, n)
        if all(done) and not ignore_eos:
            break
        if n + 1 < max_new_tokens:
            y, finished = next_y, next_finished


@dataclass
class GenerationResult:
    texts: List[str]
    tokens: List[List[int]]  # generated ids per row, EOS included when emitted
    prompt_tokens: List[int] = field(default_factory=list)


def stream_generate(model, tokenizer, prompts: Union[str, Sequence[str]], max_new_tokens: int = 64,
                    max_input_tokens: Optional[int] = None, truncate: bool = False, **kwargs):
    """Yield the StepOutput of every step of a batched generation."""
    batch = encode_prompts(tokenizer, prompts, max_input_tokens, truncate)
    yield from generate_step(model, batch.input_ids, batch.attention_mask, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)


def generate_tokens(model, input_ids, attention_mask=None, max_new_tokens: int = 64, **kwargs) -> List[List[int]]:
    """Generated ids per row, cut after the first EOS."""
    eos = kwargs.get("eos_token_id", model.args.eos_token_id)
    B = input_ids.shape[0]
    out: List[List[int]] = [[] for _ in range(B)]
    done = [False] * B
    for s in generate_step(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs):
        for i, t in enumerate(s.tokens):
            if not done[i]:
                out[i].append(t)
                done[i] = t == eos and not kwargs.get("ignore_eos", False)
    return out


def generate(model, tokenizer, prompts: Union[str, Sequence[str]], max_new_tokens: int = 64,
             max_input_tokens: Optional[int] = None, truncate: bool = False, num_beams: int = 1,
             return_result: bool = False, **kwargs):
    """Generate for a prompt or a list of prompts; returns the decoded strings (or a GenerationResult)."""
    single = isinstance(prompts, str)
    batch = encode_prompts(tokenizer, prompts, max_input_tokens, truncate)
    kw = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)
    if num_beams > 1:
        from .beam import beam_search

        tokens = beam_search(model, batch.input_ids, batch.attention_mask, num_beams=num_beams,
                             max_new_tokens=max_new_tokens, **kw)
    else:
        # Beam-only settings mean nothing for one beam; the n-gram ban becomes a logits processor.
        kw.pop("length_penalty", None)
        kw.pop("early_stopping", None)
        ngram = kw.pop("no_repeat_ngram_size", 0)
        if ngram:
            from .beam import no_repeat_ngram_processor

            kw["logits_processors"] = list(kw.get("logits_processors") or []) + [no_repeat_ngram_processor(ngram)]
        tokens = generate_tokens(model, batch.input_ids, batch.attention_mask, max_new_tokens, **kw)
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    if return_result:
        return GenerationResult(texts, tokens, batch.lengths)
    return texts[0] if single else texts
