"""Samplers and logits processors: mlx-lm's, with its names and options, for batched T5 decoding.

A sampler maps logprobs [B, V] to tokens [B]; a logits processor maps (history [B, t], logprobs [B, V])
to logprobs, where row b of the history holds the decoder start token and the tokens generated so far.
mlx-lm's samplers already take [B, V]. Its processors read a single 1-D history, so they are applied row by
row here, over the generated tokens only (the start token is not text).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def make_sampler(
    temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, min_tokens_to_keep: int = 1, top_k: int = 0
) -> Sampler:
    """mlx-lm's `make_sampler`: greedy at temp 0, else temperature sampling after top-p / min-p / top-k
    filtering. Draws use MLX's global random state: `mx.random.seed(s)` makes them reproducible."""
    if temp == 0:
        return greedy
    # mlx-lm pulls in transformers at import: only paid when sampling is asked for.
    from mlx_lm.sample_utils import make_sampler as mlx_lm_sampler

    return mlx_lm_sampler(temp, top_p, min_p, min_tokens_to_keep, top_k)


def make_logits_processors(
    logit_bias: Optional[Dict[int, float]] = None,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: Optional[int] = 20,
) -> List[LogitsProcessor]:
    """mlx-lm's `make_logits_processors` (logit bias, repetition penalty) for batched histories."""
    if not logit_bias and not repetition_penalty:
        return []
    from mlx_lm.sample_utils import make_logits_processors as mlx_lm_processors

    procs = mlx_lm_processors(logit_bias, repetition_penalty, repetition_context_size)
    return [_per_row(p) for p in procs]


def _per_row(proc: LogitsProcessor) -> LogitsProcessor:
    def process(history: mx.array, logprobs: mx.array) -> mx.array:
        rows = [proc(history[b, 1:], logprobs[b : b + 1]) for b in range(history.shape[0])]
        return rows[0] if len(rows) == 1 else mx.concatenate(rows, axis=0)

    return process


def banned_ngram_tokens(history: np.ndarray, n: int) -> List[List[int]]:
    """Per row of `history` [R, t], tokens that would repeat an n-gram already in that row."""
    rows, t = history.shape
    if n <= 0 or t + 1 < n:
        return [[] for _ in range(rows)]
    banned = []
    for r in range(rows):
        seq = history[r].tolist()
        seen: Dict[Tuple[int, ...], List[int]] = {}
        for i in range(t - n + 1):
            seen.setdefault(tuple(seq[i : i + n - 1]), []).append(seq[i + n - 1])
        banned.append(seen.get(tuple(seq[t - n + 1 :]), []))
    return banned


def no_repeat_ngram_processor(n: int) -> LogitsProcessor:
    """transformers' `no_repeat_ngram_size`: ban tokens that would repeat an n-gram of the row's history."""

    def process(history: mx.array, logprobs: mx.array) -> mx.array:
        banned = banned_ngram_tokens(np.array(history), n)
        rows = [r for r, toks in enumerate(banned) for _ in toks]
        if not rows:
            return logprobs
        cols = [t for toks in banned for t in toks]
        logprobs[mx.array(rows), mx.array(cols)] = -mx.inf
        return logprobs

    return process
