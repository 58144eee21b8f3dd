"""The sweep: interleaved rounds, medians, speedups over the multi-head variant, partial results per setting."""

import pytest

from mlx_mqa.bench import speed
from mlx_mqa.bench.sweep import SpeedVariant, sweep


def fake_variant(name, g, calls, decode=0.01, compiled=None):
    def run(ids, n):
        calls.append(name)
        return speed.RunSample(
            encoder_s=0.1,
            decode_s=decode * n,
            steps=n,
            batch_size=ids.shape[0],
            peak_bytes=100,
            peak_process_bytes=200,
            kv_self_bytes=1,
            kv_cross_bytes=2,
            compiled=compiled,
        )

    return SpeedVariant(
        name=name,
        backend="mlx",
        kv_heads=g,
        num_heads=8,
        num_decoder_layers=2,
        d_kv=8,
        itemsize=4,
        weight_bytes=10,
        decoder_step_bytes=1000,
        run=run,
    )


def test_sweep_interleaves_and_aggregates():
    calls = []
    vs = [
        fake_variant("MHA", 8, calls, 0.04),
        fake_variant("GQA-2", 2, calls, 0.02),
        fake_variant("MQA", 1, calls, 0.01),
    ]
    res = sweep(vs, speed.settings_grid([1, 2], [(16, 4)]), vocab=100, warmup=1, repeats=3)
    per_setting = ["MHA", "GQA-2", "MQA"] + ["MHA", "GQA-2", "MQA", "GQA-2", "MQA", "MHA", "MQA", "MHA", "GQA-2"]
    assert calls == per_setting * 2
    assert [(r["variant"], r["batch_size"]) for r in res] == [(v, b) for b in (1, 2) for v in ("MHA", "GQA-2", "MQA")]
    r = res[0]
    assert r["repeats"] == 3 and r["decode_step_s"]["median"] == pytest.approx(0.04)
    assert r["time_per_sample_s"]["median"] == pytest.approx(0.1 + 0.16)
    assert res[3]["time_per_sample_s"]["median"] == pytest.approx((0.1 + 0.16) / 2)
    assert r["tokens_per_s"]["median"] == pytest.approx(1 / 0.04)
    assert [x["measured_decode_speedup"] for x in res[:3]] == pytest.approx([1.0, 2.0, 4.0])
    assert res[0]["predicted_decode_speedup"] == 1.0
    assert res[2]["predicted_decode_speedup"] > res[1]["predicted_decode_speedup"] > 1
    assert res[2]["kv_cache_bytes_formula"] == speed.kv_cache_bytes(2, 1, 8, 1, 16, 4, 4)["total"]


def test_sweep_reports_each_finished_setting():
    calls, seen = [], []
    vs = [fake_variant("MHA", 8, calls, 0.04), fake_variant("MQA", 1, calls, 0.01)]
    res = sweep(
        vs,
        speed.settings_grid([1, 2, 4], [(16, 4)]),
        vocab=100,
        warmup=0,
        repeats=1,
        on_setting=lambda done: seen.append(
            [(r["variant"], r["batch_size"], r["measured_decode_speedup"]) for r in done]
        ),
    )
    assert [len(s) for s in seen] == [2, 4, 6]
    assert seen[0] == [("MHA", 1, 1.0), ("MQA", 1, pytest.approx(4.0))]  # speedups present in partial results
    assert seen[-1] == [(r["variant"], r["batch_size"], r["measured_decode_speedup"]) for r in res]


def test_the_step_that_ran_sets_the_traffic_model():
    """A compiled step reads its fixed-capacity self cache in full, an eager one up to the position; the result
    says which step ran (none for PyTorch)."""
    res = {
        c: sweep([fake_variant("MHA", 8, [], compiled=c)], speed.settings_grid([2], [(16, 4)]), 100, 0, 1)[0]
        for c in (True, False, None)
    }
    assert [res[c]["decode_step"] for c in (True, False, None)] == ["compiled", "eager", ""]
    for c, self_kv in [(True, "full"), (False, "mean")]:
        want = speed.traffic_per_step(1000, 2, 8, 8, 2, 16, 4, 4, self_kv)
        assert res[c]["traffic_bytes_per_step"] == want
    assert res[True]["traffic_bytes_per_step"]["kv_self"] > res[False]["traffic_bytes_per_step"]["kv_self"]
