"""Tables and plot of experiments/results/calibrated_merge.json (see calibrated_merge.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

GNAME = {1: "MQA", 2: "GQA-2", 4: "GQA-4"}


def curves(res, name):
    """alpha -> per-seed losses, alpha 0 from the conversion itself."""
    out = {0.0: [res["conversions"][name]["alpha0_loss"]]}
    for runs in res.get("runs", {}).values():
        for e in runs.get(name, {}).get("evals", []):
            if e["alpha"] > 0:
                out.setdefault(round(e["alpha"], 4), []).append(e["eval_loss"])
    return out


def steps_to(curve, target, P=800):
    """Uptraining steps until the mean curve first reaches `target` (linear between evaluations)."""
    pts = sorted((a, float(np.mean(v))) for a, v in curve.items())
    for (a0, l0), (a1, l1) in zip(pts, pts[1:]):
        if l0 <= target:
            return a0 * P
        if l1 <= target:
            return (a0 + (l0 - target) / (l0 - l1) * (a1 - a0)) * P
    return pts[0][0] * P if pts and pts[0][1] <= target else None


def analyse(res):
    rows, mha = [], res["mha_loss"]
    for name, c in res["conversions"].items():
        G = c["kv_heads"]
        mean = curves(res, f"g{G}-mean")
        cur = curves(res, name)
        seeds = max(len(v) for a, v in cur.items() if a > 0) if len(cur) > 1 else 0
        target = float(np.mean(mean[0.05])) if 0.05 in mean else None
        errs = c["layer_errors"]
        rows.append(
            {
                "conversion": name,
                "G": G,
                "method": c["method"],
                "grouping": c["grouping"],
                "alpha0": c["alpha0_loss"],
                "gap_ratio": (c["alpha0_loss"] - mha) / (res["conversions"][f"g{G}-mean"]["alpha0_loss"] - mha),
                "curve": {a: (float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v)) for a, v in cur.items()},
                "seeds": seeds,
                "steps_to_mean_a005": steps_to(cur, target) if target is not None and seeds else None,
                "mean_steps_to_mean_a005": steps_to(mean, target) if target is not None else None,
                # per module and group: the record sums the relative error over a module's G groups
                "cal_error": float(np.mean([e["error"] for e in errs])) / G,
                "heldout_error": float(np.mean([e["eval_error"] for e in errs])) / G,
            }
        )
    return rows


def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def table(rows, alphas=(0.0, 0.025, 0.05, 0.075, 0.1)):
    head = (
        "| conversion | gap ratio a=0 | "
        + " | ".join(f"a={a}" for a in alphas)
        + " | steps to mean's a=0.05 loss | seeds |"
    )
    lines = [head, "|" + "---|" * (len(alphas) + 4)]
    for r in rows:
        cells = [fmt(r["curve"][a][0]) if a in r["curve"] else "-" for a in alphas]
        steps = r["steps_to_mean_a005"]
        ratio = (
            f"{steps:.0f} ({steps / r['mean_steps_to_mean_a005']:.0%})"
            if steps is not None and r["mean_steps_to_mean_a005"]
            else fmt(steps, 0)
        )
        lines.append(
            f"| {r['conversion']} | {r['gap_ratio']:.2f} | " + " | ".join(cells) + f" | {ratio} | {r['seeds']} |"
        )
    return "\n".join(lines)


def _ranks(x):
    return np.argsort(np.argsort(x)).astype(float)


def proxy_table(rows):
    """Relative merge error per module and group (logit + output), on the calibration statistics and on the
    held-out windows' statistics, beside the held-out loss; Spearman rank correlation of error and loss per G."""
    lines = [
        "| conversion | merge error, calibration (train) | same merge, held-out statistics | held-out loss a=0 |",
        "|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["G"], r["alpha0"])):
        lines.append(f"| {r['conversion']} | {r['cal_error']:.3f} | {r['heldout_error']:.3f} | {r['alpha0']:.3f} |")
    for G in sorted({r["G"] for r in rows}):
        sub = [r for r in rows if r["G"] == G]
        rho = np.corrcoef(_ranks([r["heldout_error"] for r in sub]), _ranks([r["alpha0"] for r in sub]))[0, 1]
        lines.append(
            f"\n{GNAME[G]}: Spearman correlation of held-out merge error and loss ({len(sub)} conversions): {rho:.2f}"
        )
    return "\n".join(lines)


def plot(rows, mha, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=False)
    for ax, G in zip(axes, (1, 2, 4)):
        for r in (r for r in rows if r["G"] == G):
            pts = sorted(r["curve"].items())
            a = [p[0] for p in pts]
            ax.plot(a, [p[1][0] for p in pts], marker="o", label=r["conversion"][len(f"g{G}-") :])
            ax.fill_between(a, [p[1][1] for p in pts], [p[1][2] for p in pts], alpha=0.15)
        ax.axhline(mha, color="k", ls=":", label="MHA (before uptraining)")
        ax.set_title(f"{GNAME[G]} (mean of seeds; band: min-max)")
        ax.set_yscale("log")
        label_axes(ax)
    save_figure(fig, path)


def label_axes(ax):
    ax.set_xlabel("alpha (uptraining steps / pretraining steps)")
    ax.set_ylabel("held-out span-corruption loss")
    ax.legend(fontsize=8)


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res, results: Path):
    """Table, CSV and plot beside the results JSON, named after it."""
    if not res.get("conversions"):
        return
    rows = analyse(res)
    stem = Path(results).with_suffix("")
    text = (
        f"MHA held-out loss: {res['mha_loss']:.4f}\n\n" + table(rows) + "\n\nDoes the calibration error track the"
        " loss?\n\n" + proxy_table(rows) + "\n"
    )
    Path(f"{stem}_table.md").write_text(text)
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "conversion",
                "kv_heads",
                "method",
                "grouping",
                "alpha",
                "loss_mean",
                "loss_min",
                "loss_max",
                "seeds",
                "gap_ratio_alpha0",
                "calibration_error",
                "heldout_error",
            ]
        )
        for r in rows:
            for a, (m, lo, hi, n) in sorted(r["curve"].items()):
                w.writerow(
                    [
                        r["conversion"],
                        r["G"],
                        r["method"],
                        r["grouping"],
                        a,
                        m,
                        lo,
                        hi,
                        n,
                        r["gap_ratio"],
                        r["cal_error"],
                        r["heldout_error"],
                    ]
                )
    plot(rows, res["mha_loss"], Path(f"{stem}.png"))
    print(text)
