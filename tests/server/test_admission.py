"""Admission by memory: slots from the model's real K/V bytes; MQA fits more than MHA in one budget."""

import pytest

from mlx_mqa.errors import MemoryBudgetError
from mlx_mqa.server.admission import kv_bytes_per_token, plan_slots, self_cache_capacity

from .conftest import running_server


def test_mqa_gets_more_slots_than_mha_at_one_budget(tiny_mha, tiny_mqa):
    import mlx_mqa

    mha, _ = mlx_mqa.load(str(tiny_mha))
    mqa, _ = mlx_mqa.load(str(tiny_mqa))
    H = mha.args.num_heads
    assert kv_bytes_per_token(mha) == H * kv_bytes_per_token(mqa)
    budget = 64 * 2**20
    a, b = (plan_slots(m, 512, 64, budget, max_slots=10_000) for m in (mha, mqa))
    per_slot = kv_bytes_per_token(mha) * (512 + self_cache_capacity(64))
    assert a.slot_bytes == per_slot and a.slots == budget // per_slot
    assert a.slots < b.slots and b.slots // a.slots in (H - 1, H, H + 1)
    with pytest.raises(MemoryBudgetError):
        plan_slots(mha, 512, 64, per_slot - 1)
    # What /health reports for the same budget.
    slots = []
    opts = dict(memory_budget="64MiB", max_slots=10_000, max_input_tokens=512, max_tokens_limit=64)
    for path in (tiny_mha, tiny_mqa):
        with running_server(path, **opts) as (client, _):
            slots.append(client.health()["slots"])
    assert slots == [a.slots, b.slots]
