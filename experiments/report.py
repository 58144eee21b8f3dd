"""Table (markdown + CSV), ordering checks and plot from experiments/results/gqa_uptrain.json.

.venv/bin/python experiments/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXP = Path(__file__).resolve().parent
POOLS = ("mean", "first", "random")
GROUPS = (1, 2, 4)
GNAME = {1: "MQA", 2: "GQA-2", 4: "GQA-4", 8: "MHA"}


def curve(run):
    return {round(e["alpha"], 4): e["eval_loss"] for e in run["evals"]}


def fmt(x, nd=3):
    return "" if x is None else f"{x:.{nd}f}"


def seed_runs(res):
    """{label: runs} for the main seed, each replicate seed, and their mean (when there are replicates)."""
    out = {"seed 1": res.get("runs", {})}
    for seed, runs in sorted(res.get("replicates", {}).items()):
        out[f"seed {seed}"] = runs
    if len(out) > 1:
        names = [n for n in out["seed 1"] if all(n in r for r in out.values())]
        mean = {}
        for n in names:
            curves = [curve(r[n]) for r in out.values()]
            alphas = sorted(set.intersection(*[set(c) for c in curves]))
            mean[n] = {"evals": [{"alpha": a, "eval_loss": sum(c[a] for c in curves) / len(curves)} for a in alphas]}
        out[f"mean of {len(out)} seeds"] = mean
    return out


def analyse(res, runs=None):
    runs = res.get("runs", {}) if runs is None else runs
    alphas = sorted({a for r in runs.values() for a in curve(r)})
    mha = curve(runs["mha-continued"]) if "mha-continued" in runs else {}
    rows = []
    for g in GROUPS:
        for pool in POOLS:
            name = f"g{g}-{pool}"
            if name in runs:
                rows.append((f"{GNAME[g]} {pool}", name, curve(runs[name])))
    if mha:
        rows.append(("MHA (no conversion), continued", "mha-continued", mha))
    if "mha-continued-same-optimizer" in runs:
        rows.append(
            (
                "MHA, pretraining continued (same optimizer state & schedule)",
                "mha-continued-same-optimizer",
                curve(runs["mha-continued-same-optimizer"]),
            )
        )
    checks = []

    def gap_closed(c, a):
        if not mha or 0.0 not in c or a not in c or a not in mha:
            return None
        g0 = c[0.0] - mha[0.0]
        return None if g0 <= 0 else 1 - (c[a] - mha[a]) / g0

    for g in GROUPS:
        c = {p: curve(runs[f"g{g}-{p}"]) for p in POOLS if f"g{g}-{p}" in runs}
        for a in (0.0, 0.05, 0.1):
            if len(c) == 3 and all(a in v for v in c.values()):
                ok = c["mean"][a] < c["first"][a] < c["random"][a]
                checks.append(
                    (
                        f"{GNAME[g]}, alpha={a}: mean < first < random (loss)",
                        ok,
                        ", ".join(f"{p} {c[p][a]:.3f}" for p in POOLS),
                    )
                )
    for pool in POOLS:
        c = {g: curve(runs[f"g{g}-{pool}"]) for g in GROUPS if f"g{g}-{pool}" in runs}
        if len(c) == 3 and mha:
            ok = c[4][0.0] < c[2][0.0] < c[1][0.0]
            checks.append(
                (
                    f"{pool} pooling, alpha=0: GQA-4 < GQA-2 < MQA (closer to MHA {mha[0.0]:.3f})",
                    ok,
                    ", ".join(f"{GNAME[g]} {c[g][0.0]:.3f}" for g in (4, 2, 1)),
                )
            )
    for g in GROUPS:
        for pool in ("mean", "first"):
            name = f"g{g}-{pool}"
            if name not in runs:
                continue
            c = curve(runs[name])
            f5, f10 = gap_closed(c, 0.05), gap_closed(c, 0.1)
            if f5 is None or f10 is None:
                continue
            checks.append(
                (
                    f"{GNAME[g]} {pool}: most of the gap to MHA closed by alpha=0.05, little more by 0.1",
                    f5 >= 0.5 and (f10 - f5) <= 0.2,
                    f"gap closed {100 * f5:.0f}% at 0.05, {100 * f10:.0f}% at 0.1 "
                    f"(gap at 0: {c[0.0] - mha[0.0]:+.3f}, at 0.05: {c[0.05] - mha[0.05]:+.3f}, "
                    f"at 0.1: {c[0.1] - mha[0.1]:+.3f})",
                )
            )
    return alphas, rows, checks, mha


def table_markdown(res):
    variants = seed_runs(res)
    if len(variants) == 1:
        return table_markdown_one(res, res.get("runs", {}))
    parts = []
    for label, runs in variants.items():
        parts.append(f"### Uptraining data seed: {label}\n\n" + table_markdown_one(res, runs))
    return "\n\n".join(parts)


def table_markdown_one(res, runs):
    alphas, rows, checks, mha = analyse(res, runs)
    pre = res.get("pretrain", {})
    out = []
    head = "| model | " + " | ".join(f"alpha={a:g}" for a in alphas) + " |"
    out += [head, "|---|" + "---:|" * len(alphas)]
    for label, _, c in rows:
        out.append(f"| {label} | " + " | ".join(fmt(c.get(a)) for a in alphas) + " |")
    if pre:
        out.append("")
        out.append(
            f"Pretrained MHA held-out loss (alpha = 0 for every conversion's source): "
            f"**{pre['final_eval_loss']:.3f}** after {pre['steps']} steps."
        )
    out.append("")
    out.append("| paper's claim | holds here? | numbers |")
    out.append("|---|---|---|")
    for claim, ok, nums in checks:
        out.append(f"| {claim} | {'yes' if ok else '**no**'} | {nums} |")
    return "\n".join(out)


def write_csv(res, path):
    lines = []
    for variant, runs in seed_runs(res).items():
        alphas, rows, _, _ = analyse(res, runs)
        if not lines:
            lines.append("uptraining_seed,model,run," + ",".join(f"alpha_{a:g}" for a in alphas))
        for label, name, c in rows:
            lines.append(f"{variant},{label},{name}," + ",".join(fmt(c.get(a), 5) for a in alphas))
    path.write_text("\n".join(lines) + "\n")


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res.get("runs", {})
    mha = curve(runs["mha-continued"]) if "mha-continued" in runs else {}
    pre = res.get("pretrain", {}).get("final_eval_loss")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    colors = {"mean": "tab:blue", "first": "tab:orange", "random": "tab:red"}
    for col, g in enumerate(GROUPS):
        for row in range(2):
            ax = axes[row, col]
            for pool in POOLS:
                name = f"g{g}-{pool}"
                if name in runs:
                    c = curve(runs[name])
                    xs = [x for x in sorted(c) if row == 0 or x > 0]
                    ax.plot(xs, [c[x] for x in xs], "o-", color=colors[pool], label=f"{GNAME[g]} {pool}")
            if pre is not None:
                ax.axhline(pre, color="black", ls="--", lw=1, label="MHA (pretrained)")
            if mha:
                xs = [x for x in sorted(mha) if row == 0 or x > 0]
                ax.plot(xs, [mha[x] for x in xs], "s:", color="gray", label="MHA continued (fresh optimizer)")
            if "mha-continued-same-optimizer" in runs:
                c = curve(runs["mha-continued-same-optimizer"])
                xs = [x for x in sorted(c) if row == 0 or x > 0]
                ax.plot(xs, [c[x] for x in xs], "^:", color="green", label="MHA pretraining continued")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(GNAME[g])
            if row == 1:
                ax.set_xlabel("uptraining proportion alpha")
            if col == 0:
                ax.set_ylabel("held-out span-corruption loss" + (" (zoom: alpha > 0)" if row == 1 else ""))
            ax.legend(fontsize=8)
    fig.suptitle("Conversion + uptraining of a small pretrained T5 (held-out loss vs alpha)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pretrain(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = res.get("pretrain", {})
    if not pre.get("eval_curve"):
        return
    xs = [e["step"] for e in pre["eval_curve"]]
    ys = [e["eval_loss"] for e in pre["eval_curve"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs[1:], ys[1:], "o-")
    ax.set_xlabel("pretraining step (batch 16 x 128-token inputs)")
    ax.set_ylabel("held-out span-corruption loss")
    ax.set_title(f"MHA pretraining ({pre['params'] / 1e6:.1f} M params; step 0: {ys[0]:.2f})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res, exp_dir=EXP):
    out = Path(exp_dir) / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gqa_uptrain_table.md").write_text(table_markdown(res) + "\n")
    write_csv(res, out / "gqa_uptrain.csv")
    if res.get("runs"):
        plot(res, out / "gqa_uptrain.png")
    plot_pretrain(res, out / "gqa_uptrain_pretrain.png")
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else EXP / "results" / "gqa_uptrain.json"
    res = json.loads(path.read_text())
    print(table_markdown(res))
    write_report(res)
