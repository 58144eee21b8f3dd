"""Table, CSV and plot of experiments/results/distill_uptrain.json (see distill_uptrain.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from calibrated_merge_report import GNAME, fmt, label_axes, save_figure, steps_to

ALPHAS = (0.0, 0.025, 0.05, 0.075, 0.1)


def curve(alpha0, runs_by_seed, name, seeds):
    """alpha -> losses of the given seeds (alpha 0: the conversion itself)."""
    out = {0.0: [alpha0]}
    for seed in seeds:
        for e in runs_by_seed.get(str(seed), {}).get(name, {}).get("evals", []):
            if e["alpha"] > 0:
                out.setdefault(round(e["alpha"], 4), []).append(e["eval_loss"])
    return out


def analyse(res, merge):
    """One row per student and KD weight; w = 0 is calibrated_merge.py's span-corruption run of the same seeds."""
    seeds = sorted({int(s) for s in res.get("runs", {})})
    rows = []
    for student in sorted({r["student"] for runs in res.get("runs", {}).values() for r in runs.values()}):
        conv = merge["conversions"][student]
        G = conv["kv_heads"]
        base = curve(merge["conversions"][f"g{G}-mean"]["alpha0_loss"], merge["runs"], f"g{G}-mean", seeds)
        target = float(np.mean(base[0.05])) if 0.05 in base else None
        for w in (0.0, 0.5, 1.0):
            runs, name = (merge["runs"], student) if w == 0 else (res["runs"], f"{student}-kd{w:g}")
            cur = curve(conv["alpha0_loss"], runs, name, seeds)
            n = max((len(v) for a, v in cur.items() if a > 0), default=0)
            tok_s = [runs[str(s)][name]["tokens_per_s"] for s in seeds if name in runs.get(str(s), {})]
            rows.append(
                {
                    "student": student,
                    "G": G,
                    "kd_weight": w,
                    "curve": {a: (float(np.mean(v)), float(np.min(v)), float(np.max(v))) for a, v in cur.items()},
                    "seeds": n,
                    "steps_to_mean_span_a005": steps_to(cur, target) if target is not None and n else None,
                    "tokens_per_s": float(np.median(tok_s)) if tok_s else None,
                }
            )
    return rows


def table(rows):
    head = "| student | KD weight w | " + " | ".join(f"a={a}" for a in ALPHAS)
    lines = [head + " | a=0.1 min-max over seeds | steps to mean pooling's span a=0.05 loss | seeds |"]
    lines.append("|" + "---|" * (len(ALPHAS) + 5))
    for r in rows:
        cells = [fmt(r["curve"][a][0]) if a in r["curve"] else "-" for a in ALPHAS]
        last = r["curve"].get(ALPHAS[-1])
        spread = f"{fmt(last[1])}-{fmt(last[2])}" if last else "-"
        lines.append(
            f"| {r['student']} | {r['kd_weight']:g} | "
            + " | ".join(cells)
            + f" | {spread} | {fmt(r['steps_to_mean_span_a005'], 0)} | {r['seeds']} |"
        )
    return "\n".join(lines)


def plot(rows, mha, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["G"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, G in zip(axes[0], groups):
        for r in (r for r in rows if r["G"] == G):
            pts = sorted(r["curve"].items())
            a = [p[0] for p in pts]
            method = r["student"][len(f"g{G}-") :]
            label = f"{method}, " + ("span corruption" if r["kd_weight"] == 0 else f"KD w={r['kd_weight']:g}")
            ls = "-" if method == "mean" else "--"
            ax.plot(a, [p[1][0] for p in pts], marker="o", ls=ls, label=label)
            ax.fill_between(a, [p[1][1] for p in pts], [p[1][2] for p in pts], alpha=0.12)
        ax.axhline(mha, color="k", ls=":", label="MHA teacher")
        # Zoomed on the uptraining: mean pooling's alpha = 0 point is far above (given in the title).
        later = [v[0] for r in rows if r["G"] == G for a, v in r["curve"].items() if a > 0]
        ax.set_ylim(min(later + [mha]) - 0.01, max(later) + 0.02)
        start = max(r["curve"][0.0][0] for r in rows if r["G"] == G)
        ax.set_title(
            f"{GNAME[G]}: distillation vs span corruption\n"
            f"(mean of seeds, band min-max; mean pooling at alpha=0: {start:.2f})"
        )
        label_axes(ax)
    save_figure(fig, path)


def write_report(res, merge, results: Path):
    """Table, CSV and plot beside the results JSON, named after it."""
    if not res.get("runs"):
        return
    rows = analyse(res, merge)
    stem = Path(results).with_suffix("")
    Path(f"{stem}_table.md").write_text(f"MHA teacher held-out loss: {merge['mha_loss']:.4f}\n\n{table(rows)}\n")
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "kv_heads", "kd_weight", "alpha", "loss_mean", "loss_min", "loss_max", "seeds"])
        for r in rows:
            for a, (m, lo, hi) in sorted(r["curve"].items()):
                w.writerow([r["student"], r["G"], r["kd_weight"], a, f"{m:.5f}", f"{lo:.5f}", f"{hi:.5f}", r["seeds"]])
    try:
        plot(rows, merge["mha_loss"], Path(f"{stem}.png"))
    except ImportError:
        print("matplotlib is not installed: no plot")
