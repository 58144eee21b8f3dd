"""Samplers and logits processors, injected into the generation loop (mlx-lm's protocol)."""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]  # logprobs [B, V] -> tokens [B]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]  # (history [B, t], logits [B, V]) -> logits


def greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def make_sampler(temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None) -> Sampler:
    """Greedy at temperature 0, else temperature sampling with optional nucleus (top-p) filtering."""
    if temperature <= 0:
        return greedy
    key = [mx.random.key(seed)] if seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        logits = logprobs / temperature
        if top_p < 1.0:
            order = mx.argsort(-logits, axis=-1)
            sorted_logits = mx.take_along_axis(logits, order, axis=-1)
            probs = mx.softmax(sorted_logits, axis=-1)
            cum = mx.cumsum(probs, axis=-1)
            # keep the smallest prefix whose mass reaches top_p (always the top token)
            drop = (cum - probs) >= top_p
            sorted_logits = mx.where(drop, -mx.inf, sorted_logits)
            inverse = mx.argsort(order, axis=-1)
            logits = mx.take_along_axis(sorted_logits, inverse, axis=-1)
        if key is not None:
            key[0], sub = mx.random.split(key[0])
            return mx.random.categorical(logits, key=sub)
        return mx.random.categorical(logits)

    return sample
