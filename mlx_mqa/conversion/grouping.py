"""Which query heads share a K/V head: contiguous groups (the paper) or groups of similar heads.

`similar` picks the balanced partition of the H heads into G groups with the least calibration error of
the chosen merge (`merging.plan_error`, summed over groups): every partition while there are at most
EXHAUSTIVE of them (8 heads into 2 or 4 groups: 35 or 105; 12 into 4: 15,400), else a local search from
the contiguous groups that swaps heads between groups while that lowers the error. Group costs are cached
per head subset. A grouping is applied as a permutation of the heads (rows of q/k/v, columns of o), which
leaves a multi-head model's function unchanged: group g is then heads g*r .. (g+1)*r - 1 again.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Dict, FrozenSet, List, Sequence, Tuple

GROUPINGS = ("contiguous", "similar")
EXHAUSTIVE = 20000


def contiguous(num_heads: int, kv_heads: int) -> List[Tuple[int, ...]]:
    r = num_heads // kv_heads
    return [tuple(range(g * r, (g + 1) * r)) for g in range(kv_heads)]


def count_partitions(num_heads: int, kv_heads: int) -> int:
    r = num_heads // kv_heads
    return math.factorial(num_heads) // (math.factorial(r) ** kv_heads * math.factorial(kv_heads))


def _partitions(heads: Tuple[int, ...], r: int):
    if not heads:
        yield []
        return
    first, rest = heads[0], heads[1:]
    for others in combinations(rest, r - 1):
        group = (first,) + others
        remaining = tuple(h for h in rest if h not in others)
        for tail in _partitions(remaining, r):
            yield [group] + tail


def _local_search(groups: List[Tuple[int, ...]], cost: Callable[[Tuple[int, ...]], float]) -> List[Tuple[int, ...]]:
    groups = [tuple(sorted(g)) for g in groups]
    improved = True
    while improved:
        improved = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                base = cost(groups[a]) + cost(groups[b])
                best = None
                for i in groups[a]:
                    for j in groups[b]:
                        ga = tuple(sorted(set(groups[a]) - {i} | {j}))
                        gb = tuple(sorted(set(groups[b]) - {j} | {i}))
                        total = cost(ga) + cost(gb)
                        if total < base - 1e-12 * abs(base) and (best is None or total < best[0]):
                            best = (total, ga, gb)
                if best:
                    groups[a], groups[b] = best[1], best[2]
                    improved = True
    return groups


def similar(num_heads: int, kv_heads: int, group_cost: Callable[[Tuple[int, ...]], float]) -> List[Tuple[int, ...]]:
    """The groups (sorted, each sorted) with the least summed `group_cost`."""
    r = num_heads // kv_heads
    if r == 1 or kv_heads == 1:
        return contiguous(num_heads, kv_heads)
    cache: Dict[FrozenSet[int], float] = {}

    def cost(group: Tuple[int, ...]) -> float:
        key = frozenset(group)
        if key not in cache:
            cache[key] = group_cost(tuple(sorted(group)))
        return cache[key]

    if count_partitions(num_heads, kv_heads) <= EXHAUSTIVE:
        best = min(_partitions(tuple(range(num_heads)), r), key=lambda p: sum(cost(g) for g in p))
    else:
        best = _local_search(contiguous(num_heads, kv_heads), cost)
    return sorted(tuple(sorted(g)) for g in best)


def order_of(groups: Sequence[Sequence[int]]) -> List[int]:
    """Head permutation that puts each group's heads next to each other: new head p is old head order[p]."""
    return [h for g in groups for h in g]
