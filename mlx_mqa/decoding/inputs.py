"""Prompts to padded token batches, and generated rows back to token lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from ..errors import InputError


@dataclass
class Encoded:
    """A tokenized, padded batch ready for the encoder."""

    input_ids: mx.array
    attention_mask: Optional[mx.array]
    lengths: List[int]


def encode_prompts(
    tokenizer, prompts: Union[str, Sequence[str]], max_input_tokens: Optional[int] = None, truncate: bool = False
) -> Encoded:
    """Tokenize (right padding). A string or an iterable of strings; empty prompts and over-long ones
    (unless `truncate`) are errors."""
    prompts = check_prompts(prompts)
    if max_input_tokens is not None and (type(max_input_tokens) is not int or max_input_tokens < 1):
        raise InputError(f"max_input_tokens must be a positive integer, got {max_input_tokens!r}")
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    if max_input_tokens is not None:
        too_long = [(i, len(t)) for i, t in enumerate(ids) if len(t) > max_input_tokens]
        if too_long and not truncate:
            i, n = too_long[0]
            raise InputError(
                f"prompt {i} has {n} tokens, more than max_input_tokens={max_input_tokens}; "
                f"pass truncate=True (--truncate) or raise the limit"
            )
        eos = tokenizer.eos_token_id
        ids = [t if len(t) <= max_input_tokens else t[: max_input_tokens - 1] + [eos] for t in ids]
    return pad_batch(ids, tokenizer.pad_token_id or 0)


def check_prompts(prompts) -> List[str]:
    """A prompt or an iterable of prompts (a list, a generator...) as a list of non-empty strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, (bytes, dict)) or not isinstance(prompts, Iterable):
        raise InputError(f"prompts must be a string or a list of strings, not {type(prompts).__name__}")
    prompts = list(prompts)
    if len(prompts) == 0:
        raise InputError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is a {type(p).__name__}, not a string")
        if not p.strip():
            raise InputError(f"prompt {i} is empty; T5 needs at least one input token")
    return prompts


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


def cut_after_eos(rows: Sequence[Sequence[int]], eos_token_id: int) -> List[List[int]]:
    """Each row up to and including its first EOS (the whole row when it has none)."""
    out = []
    for row in rows:
        row = list(row)
        out.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return out
