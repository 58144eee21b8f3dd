"""Calibration statistics of a multi-head model: second moments of each decoder attention's inputs.

Per decoder layer: the self-attention input x (query, key and value side alike): S = E[x x^T] and C, its
covariance around the mean of its own sequence; the cross-attention query input: S. Shared by every
cross-attention: the encoder output y: S_y and C_y. Each batch's products run in float32 on the
device; the sums are kept in float64, so memory is bounded by the statistics (a few D x D matrices per
layer), not by the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..errors import InputError
from ..models.cache import CrossKV


@dataclass
class AttentionStats:
    """Inputs of one attention module: s_x = E[x x^T] (query side), s_y = E[y y^T] and c_y (key/value side)."""

    s_x: np.ndarray
    s_y: np.ndarray
    c_y: np.ndarray


class Accumulator:
    """Streaming E[z z^T] and the within-sequence covariance of rows z [B, T, D] under a 0/1 mask [B, T]."""

    def __init__(self, dim: int):
        self.zz = np.zeros((dim, dim))
        self.mean_outer = np.zeros((dim, dim))  # sum over sequences of n_s * mean_s mean_s^T
        self.tokens = 0

    def add(self, z: mx.array, mask: mx.array) -> None:
        z = z.astype(mx.float32) * mask[..., None]
        flat = z.reshape(-1, z.shape[-1])
        sums = z.sum(axis=1)  # [B, D]
        n = mx.maximum(mask.sum(axis=1), 1)[:, None]
        zz, mo = flat.T @ flat, (sums / n).T @ sums
        mx.eval(zz, mo)
        self.zz += np.array(zz, dtype=np.float64)
        self.mean_outer += np.array(mo, dtype=np.float64)
        self.tokens += int(mask.sum().item())

    def second_moment(self) -> np.ndarray:
        return self.zz / max(self.tokens, 1)

    def covariance(self) -> np.ndarray:
        return (self.zz - self.mean_outer) / max(self.tokens, 1)


Batch = Tuple[mx.array, mx.array, mx.array, mx.array]  # input ids, mask, decoder input ids, decoder mask


class Statistics:
    """Everything calibration measured of one model: `self_attention(i)`, `cross_attention(i)`."""

    def __init__(self, num_layers: int, dim: int):
        self.self_inputs = [Accumulator(dim) for _ in range(num_layers)]
        self.cross_queries = [Accumulator(dim) for _ in range(num_layers)]
        self.encoder_out = Accumulator(dim)
        self.samples = 0

    def self_attention(self, i: int) -> AttentionStats:
        a = self.self_inputs[i]
        s = a.second_moment()
        return AttentionStats(s, s, a.covariance())

    def cross_attention(self, i: int) -> AttentionStats:
        y = self.encoder_out
        return AttentionStats(self.cross_queries[i].second_moment(), y.second_moment(), y.covariance())

    def check(self, dim: int) -> None:
        """A fit from fewer tokens than the model is wide is not determined by the data."""
        low = min(self.encoder_out.tokens, self.self_inputs[0].tokens)
        if low < dim:
            raise InputError(
                f"calibration gave {self.self_inputs[0].tokens} decoder and {self.encoder_out.tokens} "
                f"encoder tokens; a stable fit needs at least d_model={dim} of each: use more or "
                "longer samples (--calibration-samples, --calibration)"
            )


def collect(model, batches: Iterable[Batch], progress: Optional[Callable[[int], None]] = None) -> Statistics:
    """Run the (multi-head) model teacher-forced over `batches` and accumulate its attention statistics."""
    args = model.args
    stats = Statistics(args.num_decoder_layers, args.d_model)
    for ids, mask, dec_ids, dec_mask in batches:
        enc = model.encode(ids, mask)
        stats.encoder_out.add(enc, mask)
        x = model.shared(dec_ids)
        self_masks, cross_mask = model.decoder_masks(dec_ids.shape[1], x.dtype, None, mask)
        for i, block in enumerate(model.decoder.block):
            sa, ca, ff = block.layer
            stats.self_inputs[i].add(sa.layer_norm(x), dec_mask)
            x = sa(x, self_masks[i])
            stats.cross_queries[i].add(ca.layer_norm(x), dec_mask)
            x = ff(ca(x, cross_mask, CrossKV(*ca.EncDecAttention.project_kv(enc))))
            mx.eval(x)
        stats.samples += ids.shape[0]
        if progress:
            progress(ids.shape[0])
    stats.check(args.d_model)
    return stats
