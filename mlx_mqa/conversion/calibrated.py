"""Calibrated conversion of a whole checkpoint: per decoder attention module, choose the groups, merge
each group's heads (`merging`), and write the permuted, merged projections back in checkpoint layout."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..models.config import ModelArgs
from .grouping import contiguous, order_of, similar
from .merging import apply_plan, heads_of, moments, output_heads, plan, plan_error
from .statistics import Statistics

MODULES = (("self", 0, "SelfAttention"), ("cross", 1, "EncDecAttention"))


def _merge_module(weights, prefix: str, H: int, G: int, method: str, grouping: str, st, eval_st=None) -> dict:
    q, k, v = (heads_of(weights[f"{prefix}.{p}.weight"], H) for p in "qkv")
    o = output_heads(weights[f"{prefix}.o.weight"], H)
    mo = moments(q, k, v, o, st.s_x, st.s_y, st.c_y)
    if grouping == "similar":
        groups = similar(H, G, lambda g: plan_error(mo, plan(method, mo, g)))
    else:
        groups = contiguous(H, G)
    plans = [plan(method, mo, g) for g in groups]
    merged = [apply_plan(p, q, k, v, o) for p in plans]
    D = q.shape[-1]
    new = {
        "k": np.concatenate([m[0] for m in merged]),
        "v": np.concatenate([m[1] for m in merged]),
        "q": np.concatenate([m[2] for m in merged]).reshape(-1, D),
        "o": np.concatenate([m[3] for m in merged]).transpose(1, 0, 2).reshape(D, -1),
    }
    res = {
        "weights": {f"{prefix}.{p}.weight": w.astype(np.float32) for p, w in new.items()},
        "order": order_of(groups),
        "error": float(sum(plan_error(mo, p) for p in plans)),
        "mean_error": float(sum(plan_error(mo, plan("mean", mo, g)) for g in contiguous(H, G))),
        "regularized": [f"{prefix} {note}" for p in plans for note in p.regularized],
    }
    if eval_st is not None:  # the same merges measured on other data (does the calibration error generalise?)
        ev = moments(q, k, v, o, eval_st.s_x, eval_st.s_y, eval_st.c_y)
        res["eval_error"] = float(sum(plan_error(ev, p) for p in plans))
        res["eval_mean_error"] = float(sum(plan_error(ev, plan("mean", ev, g)) for g in contiguous(H, G)))
    return res


def _module_stats(stats: Optional[Statistics], layer: int, kind: str):
    if stats is None:
        return None
    return stats.self_attention(layer) if kind == "self" else stats.cross_attention(layer)


def calibrated_weights(
    weights: Dict[str, np.ndarray],
    args: ModelArgs,
    stats: Statistics,
    kv_heads: int,
    method: str,
    grouping: str = "contiguous",
    eval_stats: Optional[Statistics] = None,
):
    """Decoder self- and cross-attention of `weights` (multi-head, checkpoint layout) merged to `kv_heads`.

    Returns the new tensors (only those that changed) and a record: the self-attention head order per layer
    (None when unchanged), the cross-attention orders, each module's calibration error (relative, summed over
    groups) beside contiguous mean pooling's (and both on `eval_stats`, when given), and the systems that
    needed a ridge."""
    H = args.num_heads
    out = {}
    record: Dict[str, List] = {"decoder_head_order": [], "cross_head_order": [], "errors": [], "regularized": []}
    for i in range(args.num_decoder_layers):
        for kind, j, name in MODULES:
            st, ev = (_module_stats(s, i, kind) for s in (stats, eval_stats))
            res = _merge_module(weights, f"decoder.block.{i}.layer.{j}.{name}", H, kv_heads, method, grouping, st, ev)
            out.update(res["weights"])
            record["decoder_head_order" if kind == "self" else "cross_head_order"].append(res["order"])
            errors = {k: v for k, v in res.items() if k.endswith("error")}
            record["errors"].append({"layer": i, "module": kind, **errors})
            record["regularized"] += res["regularized"]
    if all(o == list(range(H)) for o in record["decoder_head_order"]):
        record["decoder_head_order"] = None
    return out, record
