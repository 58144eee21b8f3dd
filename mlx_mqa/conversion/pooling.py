"""Which projections become grouped, and how the heads of a group become one (Ainslie et al. 2023).

Group g holds the contiguous query heads g*H/G .. (g+1)*H/G-1. `mean` pools their K and V projection
heads (the paper's method); `first` keeps the group's first head and `random` re-initialises (ablations).
"""

from __future__ import annotations

import re
from typing import Dict, Optional

import numpy as np

from ..errors import ConfigError
from ..models.config import ModelArgs, check_kv_heads

POOL_METHODS = ("mean", "first", "random")
GROUPS_IN = ("decoder", "all")

_DECODER_KV = re.compile(r"^decoder\.block\.\d+\.layer\.[01]\.(SelfAttention|EncDecAttention)\.[kv]\.weight$")
_ENCODER_KV = re.compile(r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.[kv]\.weight$")


def is_grouped(name: str, groups_in: str = "decoder") -> bool:
    """Whether checkpoint tensor `name` is a K/V projection that conversion groups."""
    return bool(_DECODER_KV.match(name) or (groups_in == "all" and _ENCODER_KV.match(name)))


def pool_heads(
    weight: np.ndarray,
    num_heads: int,
    kv_heads: int,
    method: str,
    rng: Optional[np.random.Generator] = None,
    init_std: float = 1.0,
) -> np.ndarray:
    """[H*D, d_model] projection -> [G*D, d_model], pooling contiguous groups of H/G heads."""
    out_dim, d_model = weight.shape
    d_kv = out_dim // num_heads
    grouped = weight.reshape(kv_heads, num_heads // kv_heads, d_kv, d_model)
    if method == "mean":
        pooled = grouped.mean(axis=1, dtype=np.float64).astype(np.float32)
    elif method == "first":
        pooled = grouped[:, 0]
    elif method == "random":
        pooled = rng.normal(0.0, init_std, size=(kv_heads, d_kv, d_model)).astype(np.float32)
    else:
        raise ConfigError(f"unknown pooling {method!r}; choose from {POOL_METHODS}")
    return np.ascontiguousarray(pooled.reshape(kv_heads * d_kv, d_model))


def convert_weights(
    weights: Dict[str, np.ndarray],
    args: ModelArgs,
    kv_heads: int,
    pool: str = "mean",
    groups_in: str = "decoder",
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """Pool K/V heads of the selected attention layers; other tensors pass through."""
    H = args.num_heads
    check_kv_heads(kv_heads, H)
    if pool not in POOL_METHODS or groups_in not in GROUPS_IN:
        raise ConfigError(f"pooling {pool!r} in {groups_in!r}: choose from {POOL_METHODS} in {GROUPS_IN}")
    rng = np.random.default_rng(seed)
    return {name: pool_tensor(name, weights[name], args, kv_heads, pool, groups_in, rng) for name in sorted(weights)}


def pool_tensor(
    name: str, w: np.ndarray, args: ModelArgs, kv_heads: int, pool: str, groups_in: str, rng: np.random.Generator
) -> np.ndarray:
    """Tensor `name` of the converted checkpoint. `random` draws from `rng`: tensors must come in sorted order
    for a conversion to be reproducible."""
    if is_grouped(name, groups_in) and (kv_heads != args.num_heads or pool == "random"):
        # T5's own initialisation of k/v (factor 1.0): normal with std d_model**-0.5.
        return pool_heads(w, args.num_heads, kv_heads, pool, rng, args.d_model**-0.5)
    return w
