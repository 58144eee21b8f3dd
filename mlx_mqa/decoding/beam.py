"""Beam search with the semantics of transformers' `generate(num_beams=...)`.

Same candidate selection (top 2*num_beams over all beams), length penalty, `early_stopping`
(True / False / "never") heuristics and no-repeat-n-gram ban, so outputs are token-identical
for the same logits. The encoder runs once per input and its cross-attention K/V are shared
by all beams (folded into the query axis, never copied).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from ..errors import InputError
from .device import wired_limit
from .inputs import cut_after_eos
from .sample_utils import LogitsProcessor, Sampler, greedy, no_repeat_ngram_processor
from .state import DecodeState

NEG = -1.0e9


def check_num_beams(num_beams) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise InputError(f"num_beams must be a positive integer, got {num_beams!r}")


def check_beam_options(early_stopping, sampler, options: dict) -> None:
    """Beam search keeps the most likely beams: it samples nothing, and other options would be ignored."""
    if early_stopping not in (True, False, "never"):
        raise InputError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if sampler is not None and sampler is not greedy:
        raise InputError("beam search keeps the most likely beams and takes no sampler; sample with num_beams=1")
    if options:
        raise InputError(f"beam search takes no {', '.join(sorted(options))}")


@wired_limit()
def beam_search(
    model,
    input_ids: mx.array,
    attention_mask: Optional[mx.array] = None,
    *,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    no_repeat_ngram_size: int = 0,
    logits_processors: Optional[Sequence[LogitsProcessor]] = None,
    sampler: Optional[Sampler] = None,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    compiled: Optional[bool] = None,
    return_scores: bool = False,
    **options,
):
    """Best beam per input: list of token lists (EOS included when emitted). `logits_processors` act on
    each beam's log-probabilities (history: the decoder start token and the beam's tokens) before the
    candidates are ranked, as transformers applies them; a sampler is refused."""
    check_num_beams(num_beams)
    check_beam_options(early_stopping, sampler, options)
    processors = list(logits_processors or [])
    processors += [no_repeat_ngram_processor(no_repeat_ngram_size)] if no_repeat_ngram_size else []
    args = model.args
    eos = args.eos_token_id if eos_token_id is None else eos_token_id
    pad = args.pad_token_id if pad_token_id is None else pad_token_id
    B, nb, K = input_ids.shape[0], num_beams, 2 * num_beams
    prompt_len, max_length = 1, 1 + max_new_tokens

    state = DecodeState(model, input_ids, attention_mask, max_new_tokens, compiled, beams=nb)
    running, running_scores, finished_seqs, beam_scores, is_finished = _initial_beams(
        B, nb, max_length, pad, args.decoder_start_token_id
    )
    heuristic_open = np.ones((B, 1), bool)
    top_mask = np.arange(K) < nb
    cur_len = 1

    while True:
        topk_idx, topk_lp, V = _candidates(state, running, running_scores, cur_len, K, processors)
        src_beam, tok = topk_idx // V, topk_idx % V
        topk_seqs = np.take_along_axis(running, src_beam[:, :, None], axis=1)
        topk_seqs[:, :, cur_len] = tok
        hits = (tok == eos) | (cur_len + 1 >= max_length)

        # Running beams for the next step: the best candidates that did not finish.
        run_lp = topk_lp + hits * np.float32(NEG)
        nxt = _topk_indices(run_lp, nb)
        running = np.take_along_axis(topk_seqs, nxt[:, :, None], axis=1)
        running_scores = np.take_along_axis(run_lp, nxt, axis=1).astype(np.float32)
        reorder = np.take_along_axis(src_beam, nxt, axis=1) + np.arange(B)[:, None] * nb

        # Finished hypotheses: only the top num_beams candidates may finish.
        just_done = hits & top_mask[None, :]
        scores = (topk_lp / np.float32((cur_len + 1 - prompt_len) ** length_penalty)).astype(np.float32)
        full = is_finished.all(axis=1, keepdims=True) & (early_stopping is True)
        scores = scores + full * np.float32(NEG) + (~heuristic_open) * np.float32(NEG) + (~just_done) * np.float32(NEG)
        merged_scores = np.concatenate([beam_scores, scores], axis=1)
        keep = _topk_indices(merged_scores, nb)
        finished_seqs = np.take_along_axis(np.concatenate([finished_seqs, topk_seqs], axis=1), keep[:, :, None], axis=1)
        beam_scores = np.take_along_axis(merged_scores, keep, axis=1)
        is_finished = np.take_along_axis(np.concatenate([is_finished, just_done], axis=1), keep, axis=1)

        state.select(mx.array(reorder.reshape(-1).astype(np.int32)))
        cur_len += 1

        best_len = (max_length if early_stopping == "never" and length_penalty > 0 else cur_len) - prompt_len
        best_running = running_scores[:, :1] / np.float32(best_len**length_penalty)
        worst_finished = np.where(is_finished, beam_scores.min(axis=1, keepdims=True), np.float32(NEG))
        heuristic_open = heuristic_open & np.any(best_running > worst_finished, axis=-1, keepdims=True)
        if not (heuristic_open.any() and not (is_finished.all() and early_stopping is True) and not hits.all()):
            break

    out = cut_after_eos(finished_seqs[:, 0, 1:cur_len].tolist(), eos)
    if return_scores:
        return out, beam_scores[:, 0].tolist()
    return out


def _initial_beams(B: int, nb: int, max_length: int, pad: int, start: int):
    """Running beams (only the first live: the others would duplicate it) and empty finished hypotheses."""
    running = np.full((B, nb, max_length), pad, dtype=np.int64)
    running[:, :, 0] = start
    running_scores = np.zeros((B, nb), np.float32)
    running_scores[:, 1:] = NEG
    return running, running_scores, running.copy(), np.full((B, nb), NEG, np.float32), np.zeros((B, nb), bool)


def _candidates(state, running, running_scores, cur_len: int, K: int, processors):
    """The K best (beam, token) continuations over all beams of each input: flat indices, scores, vocab size."""
    B, nb, _ = running.shape
    y = mx.array(running[:, :, cur_len - 1].reshape(-1).astype(np.int32))
    logprobs = state.logits(y).astype(mx.float32)
    logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
    if processors:
        history = mx.array(running[:, :, :cur_len].reshape(B * nb, cur_len).astype(np.int32))
        for proc in processors:
            logprobs = proc(history, logprobs)
    V = logprobs.shape[-1]
    acc = (logprobs.reshape(B, nb, V) + mx.array(running_scores)[:, :, None]).reshape(B, nb * V)
    part = mx.argpartition(-acc, K - 1, axis=-1)[:, :K]
    vals = mx.take_along_axis(acc, part, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    topk_idx = np.array(mx.take_along_axis(part, order, axis=-1)).astype(np.int64)
    return topk_idx, np.array(mx.take_along_axis(vals, order, axis=-1)), V


def _topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    # Stable descending sort: ties keep the lower index first, as torch.topk does on CPU.
    return np.argsort(-x, axis=1, kind="stable")[:, :k]
