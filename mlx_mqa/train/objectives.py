"""Training objectives: the loss over target tokens, and T5 span corruption.

Span corruption follows the T5 codebase (`t5.data.preprocessors.span_corruption`):
`random_spans_noise_mask` picks round(L * density) noise tokens in round(noise / mean_span)
spans with a random segmentation (always starting with a non-noise span and ending with a
noise span); inputs keep the non-noise tokens with each noise span replaced by one sentinel,
targets are each sentinel followed by the tokens it replaced, then EOS. Sentinel i is the
tokenizer's `<extra_id_i>`. Everything is deterministic given a numpy Generator.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import InputError
from ..models.t5 import Model

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
IGNORE = -100  # label of padding: no loss


def loss_terms(model: Model, batch: Dict[str, mx.array]) -> Tuple[mx.array, mx.array]:
    """(sum of token cross-entropies over real target tokens, number of those tokens)."""
    logits = model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    mask = labels != IGNORE
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), mx.where(mask, labels, 0), reduction="none")
    return (ce * mask).sum(), mask.sum()


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> np.ndarray:
    """Boolean [length] mask of noise tokens, as T5's `random_spans_noise_mask` (random_roll=False)."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        # num_items split into num_segments non-empty segments, uniformly at random.
        first_in_segment = (np.arange(num_items - 1) < num_segments - 1).astype(np.int64)
        first_in_segment = np.concatenate([[0], rng.permutation(first_in_segment)])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id, minlength=num_segments)

    noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, np.int64)
    indicator[span_starts] = 1
    is_noise = (np.cumsum(indicator) % 2) == 1
    return is_noise[:orig_length]


# The shortest input length whose windows hold a noise span and corrupt to exactly that length.
MIN_INPUT_LENGTH = 10


def span_lengths(
    inputs_length: int, noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
) -> Tuple[int, int]:
    """(raw tokens per window, targets length) so that corrupted inputs are exactly `inputs_length`
    (EOS included), as T5's `random_spans_helper` with one sentinel per span."""

    def lengths(tokens_length):
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def sentinel_ids(tokenizer, n: int = 100) -> np.ndarray:
    """Ids of <extra_id_0> ... <extra_id_{n-1}> (their order is the tokenizer's business)."""
    ids = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(n)]
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(i is None or i == unk for i in ids):
        raise InputError(f"the tokenizer has fewer than {n} sentinel tokens <extra_id_i>")
    return np.asarray(ids, np.int32)


def corrupt(
    tokens: np.ndarray,
    rng: np.random.Generator,
    sentinels: np.ndarray,
    eos_id: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one token window, both ending with EOS."""
    tokens = np.asarray(tokens, np.int32)
    mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each noise span
    span_index = np.cumsum(starts) - 1
    if span_index[-1] >= len(sentinels):
        raise InputError(f"{span_index[-1] + 1} noise spans but only {len(sentinels)} sentinels; use shorter windows")
    # inputs: non-noise tokens, and a sentinel in place of each noise span
    inp = np.where(starts, sentinels[np.maximum(span_index, 0)], tokens)
    inp = inp[~mask | starts]
    # targets: each sentinel followed by the noise span it replaced
    nonnoise_starts = ~mask & np.concatenate([[True], mask[:-1]])
    tgt_span_index = np.cumsum(nonnoise_starts) - 1
    tgt = np.where(nonnoise_starts, sentinels[np.maximum(tgt_span_index, 0)], tokens)
    tgt = tgt[mask | nonnoise_starts]
    # T5's targets hold a sentinel for every non-noise span; a trailing one (never the case with
    # T5's mask, which ends in noise) would carry nothing, so it is dropped, as T5 does with EOS.
    if not mask[-1]:
        tgt = tgt[:-1]
    return (np.concatenate([inp, [eos_id]]).astype(np.int32), np.concatenate([tgt, [eos_id]]).astype(np.int32))


def uncorrupt(inputs: Sequence[int], targets: Sequence[int], sentinels: Sequence[int], eos_id: int) -> List[int]:
    """Rebuild the original window from (inputs, targets): the test of `corrupt`."""
    spans: Dict[int, List[int]] = {}
    current = None
    sent = {int(s): i for i, s in enumerate(sentinels)}
    for t in targets:
        t = int(t)
        if t == eos_id:
            break
        if t in sent:
            current = sent[t]
            spans[current] = []
        else:
            spans[current].append(t)
    out: List[int] = []
    for t in inputs:
        t = int(t)
        if t == eos_id:
            break
        out.extend(spans[sent[t]] if t in sent else [t])
    return out
