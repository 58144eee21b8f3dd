"""Figures of a benchmark run (matplotlib, Agg backend): time per sample and decode speedup vs K/V groups (the GQA
paper's Fig. 6), ROUGE vs time per sample (its Fig. 3) and, with --memory-budget, the largest batch that fits."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

RANDOM_NOTE = "random weights: ROUGE is meaningless (speed is not)"


def write_figures(results: dict, out: Path, title: str, random_weights: bool) -> dict:
    """Every figure the results allow, into `out`; their file names by results["files"] key."""
    budget = results.get("budget")
    files = {
        "plot_time_vs_groups": plot_time_vs_groups(
            results["speed"], out / "time_vs_groups.png", f"Time per sample vs K/V groups\n{title}"
        ),
        "plot_budget": budget and plot_budget(budget, out / "budget.png", f"Largest batch within the budget\n{title}"),
        "plot_rouge_vs_time": plot_rouge_vs_time(results["quality"], out / "rouge_vs_time.png", random_weights),
    }
    return {k: p.name for k, p in files.items() if p}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_time_vs_groups(speed: Sequence[dict], path, title: str = "") -> Optional[Path]:
    """Left: time per sample (median, min-max bars) vs K/V groups G (log2), PyTorch MHA as dashed lines.
    Right: decode-step speedup over MHA vs G, measured (solid) and predicted by the traffic model (dotted)."""
    mlx_rows = [r for r in speed if r["backend"] == "mlx"]
    if not mlx_rows:
        return None
    plt = _plt()
    fig, (ax, ax_speedup) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    lines = defaultdict(list)
    for r in mlx_rows:
        lines[(r["batch_size"], r["input_len"], r["output_len"], r.get("quantize_bits"))].append(r)
    colors = {}
    for i, (key, rows) in enumerate(sorted(lines.items(), key=lambda kv: tuple(x or 0 for x in kv[0]))):
        rows = sorted(rows, key=lambda r: r["kv_heads"])
        xs = [r["kv_heads"] for r in rows]
        ys = [r["time_per_sample_s"]["median"] for r in rows]
        err = [
            [y - r["time_per_sample_s"]["min"] for y, r in zip(ys, rows)],
            [r["time_per_sample_s"]["max"] - y for y, r in zip(ys, rows)],
        ]
        B, i_len, o_len, q = key
        label = f"MLX B={B} {i_len}->{o_len}" + (f" q{q}" if q else "")
        pools = {r.get("pool", "mean") for r in rows if r["kv_heads"] != r["num_heads"]}
        label += "".join(f" {p}" for p in sorted(pools) if p != "mean")
        line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        color = line[0].get_color()
        colors[(B, i_len, o_len)] = color
        for which, style in (("measured", dict(marker="o")), ("predicted", dict(ls=":", marker="x"))):
            if all(r.get("measured_decode_speedup") for r in rows):
                ys = [r[f"{which}_decode_speedup"] for r in rows]
                ax_speedup.plot(xs, ys, color=color, label=f"{label} {which}", **style)
    for r in speed:
        if r["backend"] == "torch" and r["kv_heads"] == r["num_heads"]:
            c = colors.get((r["batch_size"], r["input_len"], r["output_len"]), "gray")
            label = f"PyTorch MHA B={r['batch_size']} {r['input_len']}->{r['output_len']}"
            ax.axhline(r["time_per_sample_s"]["median"], ls="--", color=c, lw=1, label=label)
    groups = sorted({r["kv_heads"] for r in mlx_rows})
    for a in (ax, ax_speedup):
        a.set_xscale("log", base=2)
        a.set_xticks(groups)
        a.set_xticklabels([("MQA\n1" if g == 1 else f"{g}") for g in groups])
        a.set_xlabel("K/V groups G (H = MHA)")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("time per sample (s)")
    ax.set_title(title or "Time per sample vs number of K/V groups", fontsize=10)
    ax_speedup.set_ylabel("decode step speedup over MHA")
    ax_speedup.set_title("Decode step: measured vs memory-traffic model", fontsize=10)
    return _save(plt, fig, path)


def plot_rouge_vs_time(quality: Sequence[dict], path, random_weights: bool = False, title: str = "") -> Optional[Path]:
    """One point per (variant, backend, dataset): x time per sample, y mean of ROUGE-1/2/L."""
    if not quality:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    several = len({x["dataset"] for x in quality}) > 1
    for i, q in enumerate(sorted(quality, key=lambda q: (q["time_per_sample_s"], q["mean_rouge"]))):
        torch_ref = q["backend"] == "torch"
        xy = (q["time_per_sample_s"], q["mean_rouge"])
        ax.scatter(*xy, marker="s" if torch_ref else "o", color="tab:orange" if torch_ref else "tab:blue")
        beams = f" {q['num_beams']}b" if q.get("num_beams", 1) > 1 else ""
        label = ("torch " if torch_ref else "") + q["variant"] + beams + (f" ({q['dataset']})" if several else "")
        # Stagger the labels: variants of equal ROUGE and similar time would print on top of each other.
        ax.annotate(label, xy, fontsize=7, xytext=(5, -10 + 9 * (i % 4)), textcoords="offset points")
    top = max(q["mean_rouge"] for q in quality)
    ax.set_ylim(bottom=0, top=max(1.0, top * 1.15))
    ax.set_xlabel("time per sample (s), generation on the evaluation examples")
    ax.set_ylabel("mean of ROUGE-1/2/L F1 (%)")
    ax.set_title(title or "ROUGE vs time per sample (circles: MLX, squares: PyTorch)", fontsize=9)
    if random_weights:
        style = dict(ha="center", va="center", fontsize=10, color="red", alpha=0.6, rotation=20)
        ax.text(0.5, 0.5, RANDOM_NOTE, transform=ax.transAxes, **style)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def plot_budget(budget: dict, path, title: str = "") -> Optional[Path]:
    """Within one memory budget: the largest batch (left) and tokens/s at it (right) vs K/V groups G (log2);
    PyTorch's multi-head figures as dashed lines."""
    rows = [r for r in budget["rows"] if r["backend"] == "mlx"]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = sorted(rows, key=lambda r: r["kv_heads"])
    xs = [r["kv_heads"] for r in rows]
    torch_row = next((r for r in budget["rows"] if r["backend"] == "torch"), None)
    for ax, key, label in ((axes[0], "batch", "largest batch that fits"), (axes[1], "tokens_per_s", "tokens/s")):
        ax.plot(xs, [r[key] for r in rows], marker="o", label="MLX")
        for x, r in zip(xs, rows):
            ax.annotate(f"{r[key]:.0f}", (x, r[key]), textcoords="offset points", xytext=(0, 6), ha="center")
        if torch_row:
            ax.axhline(torch_row[key], ls="--", color="gray", label="PyTorch MHA")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("K/V heads G")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    b = rows[0]["budget_bytes"] / 2**30
    fig.suptitle(f"{title}\nbudget {b:.2f} GiB, {budget['input_len']} -> {budget['output_len']} tokens")
    return _save(plt, fig, path)
