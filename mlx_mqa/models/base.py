"""What the architecture shares with any attention model: masks and the one attention dispatch point."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import mlx.core as mx

from .. import engine

# An additive mask: one array, or several to add (T5's position bias [1, H, L, S] and the padding
# [B, 1, 1, S] stay apart until the engine combines them, so no [B, H, L, S] mask is built where none is needed).
Mask = Union[None, mx.array, Tuple[mx.array, ...]]


def mask_terms(mask: Mask, dtype) -> Tuple[mx.array, ...]:
    """The mask as a tuple of additive terms in `dtype`."""
    if mask is None:
        return ()
    terms = (mask,) if isinstance(mask, mx.array) else tuple(mask)
    return tuple(t if t.dtype == dtype else t.astype(dtype) for t in terms)


def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array, mask: Mask) -> mx.array:
    """T5 attention: no 1/sqrt(d) scaling; position bias and padding come in as an additive mask.

    k and v may have fewer heads than q (GQA/MQA) and are never tiled here.
    """
    return engine.current().attention(q, k, v, mask_terms(mask, q.dtype))


def padding_mask(attention_mask: Optional[mx.array], dtype) -> Optional[mx.array]:
    """[B, S] of 1/0 -> additive [B, 1, 1, S]; None when nothing is padded."""
    if attention_mask is None:
        return None
    keep = attention_mask.astype(mx.bool_)
    return mx.where(keep, 0.0, mx.finfo(dtype).min).astype(dtype)[:, None, None, :]
