"""Generation: a step generator with injected sampler and logits processors, and the wrappers an app calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, List, Optional, Sequence, Union

import mlx.core as mx

from ..errors import InputError
from .beam import beam_search, check_num_beams
from .device import wired_limit
from .inputs import cut_after_eos, encode_prompts
from .sample_utils import LogitsProcessor, Sampler, greedy, no_repeat_ngram_processor
from .state import DecodeState


@dataclass
class StepOutput:
    tokens: List[int]  # one per row; pad for rows already finished
    finished: List[bool]
    step: int


def generate_step(
    model,
    input_ids: mx.array,
    attention_mask: Optional[mx.array] = None,
    *,
    max_new_tokens: int = 64,
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[Sequence[LogitsProcessor]] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    ignore_eos: bool = False,
    compiled: Optional[bool] = None,
) -> Generator[StepOutput, None, None]:
    """Yield one token per row per step until every row has emitted EOS or `max_new_tokens`.

    The encoder and the cross-attention K/V run once; the self-attention cache is preallocated
    for the whole decode. The next step is queued (async_eval) before the current token is
    read back, so the host sync overlaps device work.
    """
    args = model.args
    check_callables(sampler, logits_processors)
    # Plain greedy takes the argmax of the logits, as transformers does: the log-softmax (a pass over the
    # vocabulary per row) cannot change it.
    plain_greedy = sampler is None and not logits_processors
    sampler = sampler or greedy
    eos = args.eos_token_id if eos_token_id is None else eos_token_id
    pad = args.pad_token_id if pad_token_id is None else pad_token_id
    B = input_ids.shape[0]
    state = DecodeState(model, input_ids, attention_mask, max_new_tokens, compiled)
    history = (
        mx.full((B, max_new_tokens + 1), args.decoder_start_token_id, dtype=mx.int32) if logits_processors else None
    )

    def step(y: mx.array, finished: mx.array, n: int):
        # A sampler's id outside the vocabulary is reported when read; the step queued before that embeds a
        # clipped one, never an out-of-range index.
        logits = state.logits(mx.clip(y, 0, args.vocab_size - 1)).astype(mx.float32)
        if plain_greedy:
            tok = greedy(logits)
        else:
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            for proc in logits_processors or ():
                logprobs = proc(history[:, : n + 1], logprobs)
            tok = sampler(logprobs)
        if tok.shape != (B,):
            raise InputError(f"the sampler returned shape {tuple(tok.shape)}; it must return one token per row ({B},)")
        tok = tok.astype(mx.int32)
        if not ignore_eos:
            tok = mx.where(finished, pad, tok)
            finished = finished | (tok == eos)
        if history is not None:
            history[:, n + 1] = tok
        return tok, finished

    y = mx.full((B,), args.decoder_start_token_id, dtype=mx.int32)
    finished = mx.zeros((B,), dtype=mx.bool_)
    with wired_limit():
        y, finished = step(y, finished, 0)
        mx.async_eval(y, finished)
        for n in range(max_new_tokens):
            if n + 1 < max_new_tokens:
                next_y, next_finished = step(y, finished, n + 1)
                mx.async_eval(next_y, next_finished)
            tokens, done = y.tolist(), finished.tolist()
            bad = [t for t in tokens if not 0 <= t < args.vocab_size]
            if bad:
                V = args.vocab_size
                raise InputError(f"the sampler returned token id {bad[0]}, outside the vocabulary [0, {V})")
            yield StepOutput(tokens, done, n)
            if all(done) and not ignore_eos:
                break
            if n + 1 < max_new_tokens:
                y, finished = next_y, next_finished


def check_callables(sampler, logits_processors) -> None:
    if sampler is not None and not callable(sampler):
        raise InputError(f"sampler must be a function of the logprobs, not {type(sampler).__name__}")
    if logits_processors is not None and (
        isinstance(logits_processors, str) or not all(callable(p) for p in logits_processors)
    ):
        raise InputError("logits_processors must be a list of functions (history, logprobs) -> logprobs")


def _input_limit(model, max_input_tokens: Optional[int]) -> int:
    """None: the model's default (its config's n_positions, else 512), so a huge prompt cannot hold the model."""
    return model.args.max_input_tokens if max_input_tokens is None else max_input_tokens


@dataclass
class GenerationResult:
    texts: List[str]
    tokens: List[List[int]]  # generated ids per row, EOS included when emitted
    prompt_tokens: List[int] = field(default_factory=list)


def stream_generate(
    model,
    tokenizer,
    prompts: Union[str, Sequence[str]],
    max_new_tokens: int = 64,
    max_input_tokens: Optional[int] = None,
    truncate: bool = False,
    **kwargs,
):
    """Yield the StepOutput of every step of a batched generation."""
    batch = encode_prompts(tokenizer, prompts, _input_limit(model, max_input_tokens), truncate)
    yield from generate_step(
        model,
        batch.input_ids,
        batch.attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def generate_tokens(model, input_ids, attention_mask=None, max_new_tokens: int = 64, **kwargs) -> List[List[int]]:
    """Generated ids per row, cut after the first EOS."""
    eos = kwargs.get("eos_token_id", model.args.eos_token_id)
    steps = [s.tokens for s in generate_step(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs)]
    rows = [list(r) for r in zip(*steps)]
    return rows if kwargs.get("ignore_eos", False) else cut_after_eos(rows, eos)


def generate(
    model,
    tokenizer,
    prompts: Union[str, Sequence[str]],
    max_new_tokens: int = 64,
    max_input_tokens: Optional[int] = None,
    truncate: bool = False,
    num_beams: int = 1,
    return_result: bool = False,
    **kwargs,
):
    """Generate for a prompt or a list of prompts; returns the decoded strings (or a GenerationResult)."""
    single = isinstance(prompts, str)
    check_num_beams(num_beams)
    batch = encode_prompts(tokenizer, prompts, _input_limit(model, max_input_tokens), truncate)
    kw = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)
    if num_beams > 1:
        tokens = beam_search(
            model, batch.input_ids, batch.attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens, **kw
        )
    else:
        # Beam-only settings mean nothing for one beam; the n-gram ban becomes a logits processor.
        kw.pop("length_penalty", None)
        kw.pop("early_stopping", None)
        ngram = kw.pop("no_repeat_ngram_size", 0)
        if ngram:
            kw["logits_processors"] = list(kw.get("logits_processors") or []) + [no_repeat_ngram_processor(ngram)]
        tokens = generate_tokens(model, batch.input_ids, batch.attention_mask, max_new_tokens, **kw)
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    if return_result:
        return GenerationResult(texts, tokens, batch.lengths)
    return texts[0] if single else texts
