"""Throughput under a memory budget: sizes, the batch search, fresh-process measurement, the CLI's output."""

import json
from pathlib import Path

import pytest

from mlx_mqa.bench.research import budget as bg
from mlx_mqa.bench.research.footprint import Footprint
from mlx_mqa.errors import MemoryBudgetError

from ..tiny import TINY, run_speed_only

MiB = 2**20


def fake(peak_mib):
    """A probe whose peak at batch b is peak_mib(b) MiB, K/V 1 MiB per input."""
    calls = []

    def probe(b):
        calls.append(b)
        return Footprint(b, int(peak_mib(b) * MiB), b * MiB, 1.0, 1.0, 8)

    return probe, calls


def test_the_largest_batch_that_fits_is_measured():
    probe, calls = fake(lambda b: 100 + 30 * b)
    r = bg.largest_batch("MQA", 1, "mlx", 250 * MiB, probe)
    assert r["batch"] == 5 and r["peak_bytes"] == 250 * MiB
    assert calls == [1, 2, 5, 6]  # batch 6 measured not to fit
    assert r["per_input_bytes"] == pytest.approx(30 * MiB) and r["next_batch_peak_predicted"] == pytest.approx(
        280 * MiB
    )
    assert r["tokens_per_s"] == pytest.approx(5 * 8 / 2.0)


def test_a_prediction_that_does_not_fit_is_narrowed_down():
    probe, calls = fake(lambda b: 100 + 30 * b + (50 if b > 3 else 0))
    r = bg.largest_batch("MHA", 4, "mlx", 250 * MiB, probe)
    assert r["batch"] == 3 and calls == [1, 2, 5, 3, 4]


def test_a_slope_that_overestimates_is_corrected_by_the_next_fit():
    """Batch 2 costs more than later inputs (its encoder part grows); the search goes on past the first step."""
    probe, calls = fake(lambda b: 100 + (40 if b > 1 else 0) + 5 * b)
    r = bg.largest_batch("MQA", 1, "mlx", 200 * MiB, probe)
    assert r["batch"] == 12 and r["peak_bytes"] == 200 * MiB and calls[-1] == 13


def test_a_slope_lost_in_noise_falls_back_to_the_kv_bytes():
    probe, calls = fake(lambda b: 100 + max(0, b - 2))  # flat to batch 2; each input costs its 1 MiB of K/V
    r = bg.largest_batch("MQA", 1, "mlx", 110 * MiB, probe)
    assert r["batch"] == 12 and calls == [1, 2, 12, 13]


def test_a_budget_below_batch_1_names_the_minimum():
    probe, _ = fake(lambda b: 300 + b)
    with pytest.raises(MemoryBudgetError, match=r"needs 301 MiB at batch 1 .*give at least 301 MiB") as e:
        bg.largest_batch("MHA", 4, "mlx", 200 * MiB, probe)
    assert e.value.exit_code == 5


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
    return hf_checkpoint("t5-small", shared_std=0.05, seed=2, **TINY)


def test_cli_budget_step_writes_rows_csv_and_plot(tiny, tmp_path, monkeypatch):
    """The bench step, with every probe faked linear (2 MiB per K/V head per input): MQA fits more inputs."""
    import mlx_mqa.bench.research.footprint as fp

    def fake_measure(probe, timeout_s=None):
        heads = json.loads((Path(probe.path) / "config.json").read_text())["num_key_value_heads"]
        kv = 2 * MiB * probe.batch * heads
        return Footprint(probe.batch, 50 * MiB + kv, kv, 0.5, 0.5, probe.output_len)

    monkeypatch.setattr(fp, "measure", fake_measure)
    res = run_speed_only(tiny, tmp_path / "out", tmp_path / "cache", "1", "--no-speed", "--memory-budget", "70MB")
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["name"]: r for r in results["budget"]["rows"]}
    assert set(rows) == {"MHA", "MQA"} and rows["MQA"]["batch"] >= rows["MHA"]["batch"]
    assert all(r["peak_bytes"] <= 70 * MiB for r in rows.values())
    assert (tmp_path / "out" / "budget.csv").read_text().startswith("name,backend,kv_heads")
    assert "Largest batch within the memory budget" in res.output


def test_cli_budget_too_small_exits_5(tiny, tmp_path):
    res = run_speed_only(tiny, tmp_path / "out", tmp_path / "cache", "1", "--no-speed", "--memory-budget", "1MB")
    assert res.exit_code == 5, res.output
    assert "give at least" in res.output


def test_a_convex_peak_is_not_crept_up_on():
    """Regula falsi alone moves one input at a time under a convex peak (here 52 probes, MQA's real search crept
    from 38 to 44); stepping at least a quarter of the bracket ends it in 10."""
    probe, calls = fake(lambda b: 100 + b + (0 if b <= 40 else 4 * (b - 40) ** 2))
    r = bg.largest_batch("MQA", 1, "mlx", 600 * MiB, probe)
    assert r["batch"] == 50 and calls == [1, 2, 500, 126, 33, 56, 43, 48, 50, 51]


def test_the_per_input_slope_is_fitted_over_every_probe_with_its_noise():
    """Peaks of 100 MiB + 1 MiB per input, +-6 MiB of noise: the slope of the last two fits (reported before) can be
    anything; the least-squares slope over every probe is near 1 MiB, within its standard error."""
    probe, calls = fake(lambda b: 100 + b + 6 * (-1) ** b)
    r = bg.largest_batch("MQA", 1, "mlx", 300 * MiB, probe)
    assert len(calls) >= 4 and r["peak_bytes"] <= 300 * MiB
    slope, err = r["per_input_bytes"], r["per_input_bytes_err"]
    assert err is not None and err > 0
    assert abs(slope - MiB) <= 3 * err and abs(slope - MiB) < 0.1 * MiB


def test_fit_slope_leaves_out_batch_1_and_has_no_error_from_two_points():
    def f(b, mib):
        return Footprint(b, int(mib * MiB), b * MiB, 1.0, 1.0, 8)

    # Batch 2 is the first to encode two inputs at once: batch 1 is left out when two others were probed.
    assert bg.fit_slope([f(1, 100), f(2, 150), f(4, 160)]) == (5 * MiB, None)
    assert bg.fit_slope([f(1, 100), f(2, 150), f(4, 160), f(6, 170)]) == (5 * MiB, 0.0)
    assert bg.fit_slope([f(1, 100), f(3, 110)]) == (5 * MiB, None)


def budget_row(name, kv_heads, per_input_mib, err_mib):
    err = None if err_mib is None else err_mib * MiB
    row = dict(name=name, backend="mlx", kv_heads=kv_heads, budget_bytes=512 * MiB, batch=160, peak_bytes=500 * MiB)
    return row | dict(per_input_bytes=per_input_mib * MiB, per_input_bytes_err=err, tokens_per_s=100.0)


def test_slopes_out_of_kv_order_are_pointed_out():
    """MQA has half GQA-2's K/V: a larger per-input slope beyond both errors cannot be right, and is said so."""
    lines = bg.budget_summary([budget_row("GQA-2", 2, 1, 0.5), budget_row("MQA", 1, 13, 2)])
    assert "+1.00 MiB ± 0.50 MiB per input" in lines[0]
    assert lines[-1].startswith("Note: per-input slopes out of K/V order (MQA +13.00 MiB ± 2.00 MiB > GQA-2 +1.00")
    assert len(bg.budget_summary([budget_row("GQA-2", 2, 10, 2), budget_row("MQA", 1, 12, 2)])) == 2  # within noise
    assert len(bg.budget_summary([budget_row("GQA-2", 2, 10, None), budget_row("MQA", 1, 5, None)])) == 2
