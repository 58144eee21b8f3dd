"""Admission by memory: how many rows (slots) a K/V memory budget holds, from the model's real K/V sizes.

A slot holds, per decoder layer, K and V of G heads x d_kv: for `max_input_tokens` input tokens (cross-attention,
computed once per request) and for the `capacity` columns of the shared self-attention cache. MQA (G = 1) thus
fits H times the slots of MHA (G = H) in the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import MemoryBudgetError
from ..models.config import machine_memory

# Share of this machine's memory given to K/V when no --memory-budget is given.
DEFAULT_FRACTION = 0.25


def self_cache_capacity(max_tokens_limit: int) -> int:
    """Columns of the shared self-attention cache: the longest decode plus room, so that when the counter
    reaches the end, compaction (dropping the columns before the earliest live row) frees a quarter at least."""
    return max_tokens_limit + max(16, max_tokens_limit // 4)


def kv_bytes_per_token(model) -> int:
    """Bytes of K and V of one token over all decoder layers (one of cross or self attention)."""
    a = model.args
    return len(model.layers) * 2 * a.num_key_value_heads * a.d_kv * model.dtype.size


@dataclass
class Admission:
    budget: int
    slot_bytes: int
    slots: int
    kv_heads: int

    def describe(self) -> str:
        return (
            f"{self.slots} slots: K/V budget {self.budget / 2**20:.0f} MiB / "
            f"{self.slot_bytes / 2**20:.2f} MiB per slot (G={self.kv_heads} K/V heads)"
        )


def plan_slots(
    model, max_input_tokens: int, max_tokens_limit: int, budget: Optional[int] = None, max_slots: int = 64
) -> Admission:
    """Slots that fit `budget` bytes of K/V (default: a share of this machine's memory), at most `max_slots`."""
    if budget is None:
        total = machine_memory() or 8 * 2**30
        budget = int(total * DEFAULT_FRACTION)
    per_token = kv_bytes_per_token(model)
    slot_bytes = per_token * (max_input_tokens + self_cache_capacity(max_tokens_limit))
    slots = min(budget // slot_bytes, max_slots)
    if slots < 1:
        raise MemoryBudgetError(
            f"memory budget {budget / 2**20:.1f} MiB holds no request: one needs {slot_bytes / 2**20:.2f} MiB of "
            f"K/V ({max_input_tokens} input + {self_cache_capacity(max_tokens_limit)} cache tokens); raise "
            "--memory-budget or lower --max-input-tokens / --max-tokens-limit"
        )
    return Admission(budget, slot_bytes, int(slots), model.args.num_key_value_heads)
