"""Throughput under a memory budget (--memory-budget): per variant, the largest batch whose peak, measured by a
whole speed run in a fresh process (`footprint`), fits; and its tokens/s. The answer is a measured fit whose next
batch was measured not to fit. The per-input cost reported is a least-squares fit over every probe (`fit_slope`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ...errors import MemoryBudgetError
from .footprint import Footprint

MAX_BATCH = 4096


def format_size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def largest_batch(
    name: str, kv_heads: int, backend: str, budget: int, probe: Callable[[int], Footprint], max_batch: int = MAX_BATCH
) -> dict:
    """The largest batch whose measured peak is at most `budget` bytes (its row of results.json's "budget");
    `probe(b)` runs batch b."""
    seen = {}

    def run(b: int) -> Footprint:
        if b not in seen:
            seen[b] = probe(b)
        return seen[b]

    one = run(1)
    if one.peak_bytes > budget:
        raise MemoryBudgetError(
            f"--memory-budget {format_size(budget)} is too small: {name} needs {format_size(one.peak_bytes)} "
            f"at batch 1 (measured); give at least {format_size(one.peak_bytes)}"
        )
    # Secant steps on the measured peaks of the last two fits (batch 2 first), each input costing at least
    # its K/V (a floor for a slope lost in a small model's noise); past the budget, regula falsi.
    prev, best, over, slope = None, one, None, float(max(one.kv_bytes, 1))
    while True:
        if prev is not None:
            slope = max((best.peak_bytes - prev.peak_bytes) / (best.batch - prev.batch), one.kv_bytes, 1)
        b = 2 if prev is None else best.batch + max(1, int((budget - best.peak_bytes) // slope))
        b = min(b, max_batch, over - 1 if over else max_batch)
        if b <= best.batch:
            break
        if run(b).peak_bytes <= budget:
            prev, best = best, run(b)
            continue
        over = b
        while over - best.batch > 1:  # regula falsi between the last fit and the first batch over
            rise = (run(over).peak_bytes - best.peak_bytes) / (over - best.batch)
            mid = best.batch + int((budget - best.peak_bytes) // max(rise, 1))
            # At least a quarter of the way in: on a convex peak regula falsi alone lands just below the answer
            # time after time (MQA's search crept up one or two inputs per probe).
            mid = min(max(mid, best.batch + max(1, (over - best.batch) // 4)), over - 1)
            if run(mid).peak_bytes <= budget:
                prev, best = best, run(mid)
            else:
                over = mid
    probes = sorted(seen.values(), key=lambda f: f.batch)
    per_input, err = fit_slope(probes)  # the peak's least-squares slope over the probes, its standard error
    row = dict(name=name, kv_heads=kv_heads, backend=backend, budget_bytes=budget, batch=best.batch)
    row.update({k: getattr(best, k) for k in "peak_bytes kv_bytes tokens_per_s encoder_s decode_s decode_step".split()})
    row.update(
        per_input_bytes=per_input, per_input_bytes_err=err, next_batch_peak_predicted=best.peak_bytes + per_input
    )
    return row | {"probes": [{"batch": p.batch, "peak_bytes": p.peak_bytes} for p in probes]}


def fit_slope(probes: Sequence[Footprint]) -> Tuple[float, Optional[float]]:
    """Peak bytes per input: the least-squares slope over every probed batch (batch 1 left out when two others
    were probed: batch 2 is the first to encode two inputs at once), and its standard error from the residuals
    (None from two points, which leave no residual)."""
    pts = [p for p in probes if p.batch > 1]
    pts = pts if len(pts) >= 2 else list(probes)
    if len(pts) < 2:
        return float(pts[0].kv_bytes if pts else 0), None
    xs, ys = [float(p.batch) for p in pts], [float(p.peak_bytes) for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if len(pts) < 3:
        return slope, None
    ssr = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(ssr / (len(pts) - 2) / sxx)


def slope_order_note(rows: Sequence[dict]) -> Optional[str]:
    """A note when a variant with fewer K/V heads has a larger per-input slope than one with more (same backend)
    beyond their combined noise (two standard errors; unknown noise counts as none): the slopes are fits to
    noisy peaks, the batches are measured."""
    bad = []
    for a in rows:
        for b in rows:
            if a["backend"] == b["backend"] and a["kv_heads"] < b["kv_heads"]:
                noise = 2 * math.hypot(a.get("per_input_bytes_err") or 0, b.get("per_input_bytes_err") or 0)
                if a["per_input_bytes"] - b["per_input_bytes"] > noise:
                    bad.append(f"{a['name']} {_per_input(a)} > {b['name']} {_per_input(b)}")
    if not bad:
        return None
    return (
        "per-input slopes out of K/V order (" + "; ".join(bad) + "): the slopes are fits to noisy peaks, "
        "the batches are measured; probe more batches (a larger budget) for a firmer slope"
    )


def _per_input(r: dict) -> str:
    """'+2.41 MiB ± 0.30 MiB' (the error from the residuals where there are some)."""
    err = r.get("per_input_bytes_err")
    return f"{r['per_input_bytes'] / 2**20:+.2f} MiB" + (f" ± {err / 2**20:.2f} MiB" if err is not None else "")


def budget_summary(rows: List[dict], mha: Optional[str] = "MHA") -> List[str]:
    """One line per variant: its batch, its per-input cost with its noise, tokens/s and the gain over MHA's; a note
    when the per-input costs contradict the K/V sizes (`slope_order_note`)."""
    base = next((r for r in rows if r["name"] == mha), None)
    lines = []
    for r in rows:
        gain = f", {r['tokens_per_s'] / base['tokens_per_s']:.2f}x MHA's tokens/s" if base and r is not base else ""
        lines.append(
            f"{r['name']}: batch {r['batch']} fits (peak {format_size(r['peak_bytes'])} of "
            f"{format_size(r['budget_bytes'])}; {_per_input(r)} per input), {r['tokens_per_s']:.1f} tokens/s{gain}"
        )
    note = slope_order_note(rows)
    return lines + (["Note: " + note] if note else [])


CSV_COLUMNS = """name backend kv_heads budget_bytes batch peak_bytes kv_bytes per_input_bytes
next_batch_peak_predicted tokens_per_s encoder_s decode_s decode_step per_input_bytes_err""".split()


def run_budget(cfg, runs: Sequence[tuple], dtype: str, results: dict, say) -> None:
    """`--memory-budget`: the largest batch of each of `runs` (name, K/V heads, impl, checkpoint; see
    `run.budget_runs`) at the first --lengths; rows into `results["budget"]` and budget.csv."""
    from ..config import progress_bar
    from ..results import write_csv, write_results
    from . import footprint

    input_len, output_len = cfg.lengths[0]
    say(f"memory budget {format_size(cfg.memory_budget)}: largest batch of {len(runs)} variants, fresh processes")
    rows = []
    with progress_bar(len(runs), "memory budget", cfg.progress) as bar:
        for name, g, impl, path in runs:

            def probe(b, impl=impl, path=path, name=name):
                bar.set_postfix_str(f"{name} batch {b}")
                p = footprint.Probe(path, impl, b, input_len, output_len, dtype, cfg.decode_path, cfg.seed)
                return footprint.measure(p)

            rows.append(largest_batch(name, g, impl, cfg.memory_budget, probe))
            bar.update(1)
            results["budget"] = {"input_len": input_len, "output_len": output_len, "rows": rows}
            write_results(results, cfg.out)
    write_csv(Path(cfg.out) / "budget.csv", CSV_COLUMNS, [{k: r[k] for k in CSV_COLUMNS} for r in rows])
    results["files"]["budget_csv"] = "budget.csv"
