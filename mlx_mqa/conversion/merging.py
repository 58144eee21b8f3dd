"""Calibrated K/V merging: one shared K and V head per group, fitted to what the heads compute.

Notation for one attention module (H heads of size d, model width D): W_q^h, W_k^h, W_v^h are d x D
projections, W_o^h the D x d block of the output projection; x is a query-side input, y a key/value-side
input (the encoder output for cross-attention). Calibration (`statistics.py`) gives S_x = E[x x^T],
S_y = E[y y^T] and C_y, the covariance of y around the mean of its own sequence. Float64 throughout.

A merge of the r heads of a group is written in coefficient form (`Plan`): the shared key projection is
sum_j Tk_j W_k^j, head h's query becomes P_h W_q^h; the shared value projection is sum_j Tv_j W_v^j,
head h's output block becomes W_o^h Po_h (all T, P are d x d). Head h then sees the effective key
P_h^T sum_j Tk_j W_k^j and value Po_h sum_j Tv_j W_v^j. Errors and merges need only d x d blocks of
M_h = W_q^h S_x W_q^h^T (head h's query second moment), O_h = W_o^h^T W_o^h, Gk_ij = W_k^i C_y W_k^j^T
and Gv_ij = W_v^i S_y W_v^j^T, so searching groupings costs no D x D work.

- `mean`: Tk = Tv = I/r, P = Po = I (the paper). `first`: the group's first head.
- `fit`: keys minimise sum_h E_q Var_y[q_h^T (W - W_k^h) y], each head's logit error centred over the keys
  of a query (softmax ignores a shift shared by all keys): the normal equations
  (sum_h M_h) W C_y = (sum_h M_h W_k^h) C_y give W = (sum M_h)^-1 sum_h M_h W_k^h, C_y cancels.
  Values minimise sum_h E||W_o^h (W - W_v^h) z||^2 for a value input z shared by the heads:
  W = (sum O_h)^-1 sum_h O_h W_v^h. Isotropic M_h and O_h give back the mean, so on this objective
  `fit` is never worse than `mean` (docs/conversion.md has the derivation).
- `svd` (Yu et al. 2024): the top-d principal directions U of the group's stacked keys (of [Gk_ij]) give
  the shared key U^T [W_k^j]_j; head h's keys come back as U_h k (U_h its d x d block), folded into its
  query: P_h = U_h^T. Exact when the stacked keys have rank <= d. Values likewise with Gv; Po_h = U_h.
- `svd-q`: the same after whitening head h's keys by M_h^(1/2) and values by O_h^(1/2), so the directions
  minimise the logit and output errors of `fit`'s objective rather than key and value errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

MERGE_METHODS = ("fit", "svd", "svd-q")
PLAN_METHODS = ("mean", "first") + MERGE_METHODS
# A system whose smallest eigenvalue is below RANK_TOL of its largest gets a ridge of RIDGE x largest.
RIDGE = 1e-6
RANK_TOL = 1e-10


@dataclass
class Moments:
    """What merging one attention module needs: m, o [H, d, d]; gk, gv [H, H, d, d]."""

    m: np.ndarray
    o: np.ndarray
    gk: np.ndarray
    gv: np.ndarray


@dataclass
class Plan:
    """A group's merge in coefficient form (see the module docstring); tk, pq, tv, po are [r, d, d]."""

    heads: Tuple[int, ...]
    tk: np.ndarray
    pq: np.ndarray
    tv: np.ndarray
    po: np.ndarray
    regularized: List[str] = field(default_factory=list)


def heads_of(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """[H*d, D] projection -> [H, d, D]."""
    return weight.reshape(num_heads, -1, weight.shape[-1]).astype(np.float64)


def output_heads(o_weight: np.ndarray, num_heads: int) -> np.ndarray:
    """[D, H*d] output projection -> [H, D, d]."""
    D = o_weight.shape[0]
    return o_weight.reshape(D, num_heads, -1).transpose(1, 0, 2).astype(np.float64)


def moments(q, k, v, o, s_x, s_y, c_y) -> Moments:
    """q, k, v [H, d, D], o [H, D, d] and the calibration statistics [D, D] -> Moments."""
    H, d, D = q.shape
    m = q @ s_x @ q.transpose(0, 2, 1)  # batched matmuls: a 3-operand einsum would not use BLAS
    om = o.transpose(0, 2, 1) @ o
    kf, vf = k.reshape(H * d, D), v.reshape(H * d, D)
    gk = (kf @ c_y @ kf.T).reshape(H, d, H, d).transpose(0, 2, 1, 3)
    gv = (vf @ s_y @ vf.T).reshape(H, d, H, d).transpose(0, 2, 1, 3)
    return Moments(m, om, gk, gv)


def _regularized(a: np.ndarray, what: str, notes: List[str]) -> np.ndarray:
    a = (a + a.T) / 2
    w = np.linalg.eigvalsh(a)
    top = max(float(w[-1]), 1e-300)
    if w[0] < RANK_TOL * top:
        notes.append(what)
        a = a + RIDGE * top * np.eye(len(a))
    return a


def _roots(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """a^(1/2) and a^(-1/2) of a PSD matrix (eigenvalues floored at RIDGE x the largest)."""
    w, u = np.linalg.eigh((a + a.T) / 2)
    w = np.maximum(w, RIDGE * max(float(w[-1]), 1e-300))
    return (u * np.sqrt(w)) @ u.T, (u / np.sqrt(w)) @ u.T


def _weighted_mean(weights: np.ndarray, what: str, notes: List[str]) -> np.ndarray:
    """Tj = (sum_h A_h)^-1 A_j for A [r, d, d]."""
    total = _regularized(weights.sum(axis=0), what, notes)
    return np.stack([np.linalg.solve(total, a) for a in weights])


def _principal(g: np.ndarray, heads: Sequence[int], roots: Sequence[np.ndarray]) -> np.ndarray:
    """Top-d eigenvectors [r, d, d] (block h = U_h) of the stacked, whitened [R_i G_ij R_j^T]."""
    r, d = len(heads), g.shape[-1]
    cov = np.block([[roots[a] @ g[i, j] @ roots[b].T for b, j in enumerate(heads)] for a, i in enumerate(heads)])
    _, u = np.linalg.eigh((cov + cov.T) / 2)
    return u[:, ::-1][:, :d].reshape(r, d, d)


def _svd(mo: Moments, heads: Sequence[int], whiten: bool) -> Plan:
    r, d = len(heads), mo.m.shape[-1]
    eye = [(np.eye(d), np.eye(d))] * r
    kr = [_roots(mo.m[h]) for h in heads] if whiten else eye
    vr = [_roots(mo.o[h]) for h in heads] if whiten else eye
    uk = _principal(mo.gk, heads, [a for a, _ in kr])
    uv = _principal(mo.gv, heads, [a for a, _ in vr])
    tk = np.stack([uk[j].T @ kr[j][0] for j in range(r)])
    pq = np.stack([uk[h].T @ kr[h][1] for h in range(r)])
    tv = np.stack([uv[j].T @ vr[j][0] for j in range(r)])
    po = np.stack([vr[h][1] @ uv[h] for h in range(r)])
    return Plan(tuple(heads), tk, pq, tv, po)


def plan(method: str, mo: Moments, heads: Sequence[int]) -> Plan:
    """How the heads `heads` of the module with moments `mo` merge into one K/V head."""
    r, d = len(heads), mo.m.shape[-1]
    eye = np.broadcast_to(np.eye(d), (r, d, d)).copy()
    if r == 1:
        return Plan(tuple(heads), eye, eye.copy(), eye.copy(), eye.copy())
    if method == "mean":
        return Plan(tuple(heads), eye / r, eye.copy(), eye / r, eye.copy())
    if method == "first":
        first = np.zeros_like(eye)
        first[0] = np.eye(d)
        return Plan(tuple(heads), first, eye.copy(), first.copy(), eye.copy())
    if method == "fit":
        notes: List[str] = []
        tk = _weighted_mean(mo.m[list(heads)], "keys", notes)
        tv = _weighted_mean(mo.o[list(heads)], "values", notes)
        return Plan(tuple(heads), tk, eye.copy(), tv, eye.copy(), notes)
    if method in ("svd", "svd-q"):
        return _svd(mo, heads, whiten=method == "svd-q")
    raise ValueError(f"unknown merge method {method!r}; choose from {PLAN_METHODS}")


def _block(g: np.ndarray, heads: Sequence[int]) -> np.ndarray:
    """[G_ij] of `heads` as one (r d) x (r d) matrix."""
    return np.block([[g[i, j] for j in heads] for i in heads])


def plan_error(mo: Moments, p: Plan) -> float:
    """Relative calibration error of a merge: the heads' logit error (centred over keys) over their logit
    energy, plus their output error over their output energy."""
    hs = list(p.heads)
    gk, gv = _block(mo.gk, hs), _block(mo.gv, hs)
    eye = np.eye(mo.m.shape[-1])
    err_k = err_v = energy_k = energy_v = 0.0
    for a, h in enumerate(hs):
        ak = p.pq[a].T @ p.tk  # head h's effective key: sum_j ak_j W_k^j
        ak[a] -= eye
        av = p.po[a] @ p.tv
        av[a] -= eye
        row_k = ak.transpose(1, 0, 2).reshape(len(eye), -1)  # [d, r d]
        row_v = av.transpose(1, 0, 2).reshape(len(eye), -1)
        err_k += float(np.sum(mo.m[h] * (row_k @ gk @ row_k.T)))
        err_v += float(np.sum(mo.o[h] * (row_v @ gv @ row_v.T)))
        energy_k += float(np.sum(mo.m[h] * mo.gk[h, h].T))
        energy_v += float(np.sum(mo.o[h] * mo.gv[h, h].T))
    return err_k / max(energy_k, 1e-300) + err_v / max(energy_v, 1e-300)


def apply_plan(p: Plan, q, k, v, o):
    """New projections of one group: shared k, v [d, D]; its heads' q [r, d, D] and o [r, D, d]."""
    hs = list(p.heads)
    new_k = (p.tk @ k[hs]).sum(axis=0)
    new_v = (p.tv @ v[hs]).sum(axis=0)
    new_q = p.pq @ q[hs]
    new_o = o[hs] @ p.po
    return new_k, new_v, new_q, new_o
