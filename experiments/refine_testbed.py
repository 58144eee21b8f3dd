"""`--refine` on the hard testbed (hard_testbed.py): which parameters to train, which learning rate, and whether
refinement beats `svd-q` (target: at most 0.75x svd-q's held-out KL at G = 1, 2, 4).

Each run: svd-q conversion of the random-weight t5-small-shaped teacher, calibrated on cnn_dailymail, refined on
the same calibration batches (`mlx_mqa.conversion.refine.refine`, exactly what `convert --refine` runs), KL to the
teacher measured on held-out xsum at every evaluation point.

    python experiments/refine_testbed.py lr       # lr sweep: G=1, attention, seed 0
    python experiments/refine_testbed.py params   # attention / attention+norms / all at G = 1, 2, 4, seed 0
    python experiments/refine_testbed.py target --params attention --seeds 1,2
    python experiments/refine_testbed.py calib --calib-samples 200   # more calibration text (merge and refine)
    python experiments/refine_testbed.py calib --calib-samples 128 --calib-lengths 512x128 --steps 100
                                                  # convert's default calibration size
    python experiments/refine_testbed.py report
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from hard_testbed import GS, RESULTS, Testbed, write_table

OUT = RESULTS / "refine_testbed.json"


def load():
    return json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}


def one(tb, res, kind, G, params, lr, steps, method="svd-q"):
    from mlx_mqa.conversion.refine import refine

    key = dict(kind=kind, seed=tb.settings["seed"], G=G, params=params, lr=lr, steps=steps, method=method)
    if kind == "calib":
        key["calib_samples"] = len(tb.calib_examples)
        key["calib_lengths"] = tb.settings["calib_lengths"]
    if any(all(r.get(k) == v for k, v in key.items()) for r in res["runs"]):
        return
    student = tb.convert(G, method)
    shared = params != "all"
    curve = []

    def on_eval(step, model):
        d = tb.held_out(model, shared)
        curve.append({"step": step, "held_out_kl": d["kl"], "held_out_top1": d["top1"]})

    t0 = time.perf_counter()
    rec = refine(student, tb.teacher, tb.calib_batches, steps, params, lr, eval_every=steps, on_eval=on_eval)
    final = tb.held_out(student, shared)  # the kept (best by calibration KL) weights
    run = {
        **key,
        "seconds": time.perf_counter() - t0,
        "record": {k: v for k, v in rec.items() if k != "train_kl"},
        "train_kl": rec["train_kl"],
        "curve": curve,
        "held_out_before": curve[0]["held_out_kl"],
        "held_out_after": final["kl"],
        "held_out_top1_after": final["top1"],
    }
    res["runs"].append(run)
    OUT.write_text(json.dumps(res, indent=1))
    print(
        f"{kind} seed {key['seed']} G={G} {params} lr={lr:g} {steps} steps: calib KL {rec['kl_before']:.4f} -> "
        f"{rec['kl_after']:.4f}, held-out {run['held_out_before']:.4f} -> {final['kl']:.4f} "
        f"({run['seconds']:.0f}s)",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["lr", "params", "target", "calib", "report"])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--params", default="attention")
    p.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[3e-5, 1e-4, 3e-4, 1e-3])
    p.add_argument("--lr", default="auto", help="a number, or auto: the sweep's best by calibration KL")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--modes", type=lambda s: s.split(","), default=["attention", "attention+norms", "all"])
    p.add_argument("--gs", type=lambda s: [int(x) for x in s.split(",")], default=list(GS))
    p.add_argument("--calib-samples", type=int, default=64, help="calib: cnn_dailymail records to merge and refine on")
    p.add_argument(
        "--calib-lengths",
        type=lambda s: [int(x) for x in s.split("x")],
        default=[256, 64],
        help="calib: INPUTxTARGET tokens of the calibration records (held-out stays 256x64)",
    )
    a = p.parse_args()
    if a.what == "report":
        return report()
    res = load()
    if a.lr == "auto" and a.what != "lr":
        sweep = [r for r in res["runs"] if r["G"] == 1 and r["params"] == "attention" and r["steps"] == a.steps]
        a.lr = min(sweep, key=lambda r: r["record"]["kl_after"])["lr"] if sweep else 1e-4
        print(f"lr {a.lr:g}", flush=True)
    elif a.what != "lr":
        a.lr = float(a.lr)
    for seed in a.seeds:
        tb = Testbed(seed, calib_samples=a.calib_samples, calib_lengths=a.calib_lengths)
        if a.what == "calib":
            for G in a.gs:
                one(tb, res, "calib", G, a.params, a.lr, a.steps)
        elif a.what == "lr":
            for lr in a.lrs:
                one(tb, res, "params", 1, a.params, lr, a.steps)
        elif a.what == "params":
            for G in a.gs:
                for params in a.modes:
                    one(tb, res, "params", G, params, a.lr, a.steps)
        else:
            for G in a.gs:
                one(tb, res, "params", G, a.params, a.lr, a.steps)
    report()


def report():
    res = load()
    tb = json.loads((RESULTS / "hard_testbed.json").read_text())
    svdq = {(r["seed"], r["G"]): r["kl"] for r in tb["runs"] if r["method"] == "svd-q"}
    lines = [
        "### learning-rate sweep (G = 1, svd-q start, seed 0)",
        "",
        "| params | lr | steps | calib KL before -> after | held-out KL before -> after | s |",
        "|---|---|---:|---|---|---:|",
    ]
    sweep = [r for r in res["runs"] if r["kind"] == "params" and r["G"] == 1 and r["params"] == "attention"]
    for r in sorted(sweep, key=lambda r: r["lr"]):
        c = r["record"]
        lines.append(
            f"| {r['params']} | {r['lr']:g} | {r['steps']} | {c['kl_before']:.4f} -> {c['kl_after']:.4f} | "
            f"{r['held_out_before']:.4f} -> {r['held_out_after']:.4f} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "### which parameters (svd-q start; held-out xsum KL; ratio = after / svd-q's)",
        "",
        "| G | params | trainable | lr | steps | calib KL before -> after | held-out KL after | "
        "ratio to svd-q (mean ± sd) | seeds | s/run |",
        "|---|---|---:|---|---:|---|---|---|---:|---:|",
    ]
    groups = {}
    for r in res["runs"]:
        if r["kind"] == "params":
            groups.setdefault((r["G"], r["params"], r["lr"], r["steps"]), []).append(r)
    for (G, params, lr, steps), rs in sorted(groups.items()):
        ratio = np.array([r["held_out_after"] / svdq[(r["seed"], G)] for r in rs])
        after = np.array([r["held_out_after"] for r in rs])
        cb = np.mean([r["record"]["kl_before"] for r in rs])
        ca = np.mean([r["record"]["kl_after"] for r in rs])
        sd = lambda x: x.std(ddof=1) if len(x) > 1 else 0.0  # noqa: E731
        lines.append(
            f"| {G} | {params} | {rs[0]['record']['trainable_parameters']:,} | {lr:g} | {steps} | "
            f"{cb:.4f} -> {ca:.4f} | {after.mean():.4f} ± {sd(after):.4f} | {ratio.mean():.2f} ± "
            f"{sd(ratio):.2f} | {len(rs)} | {np.mean([r['seconds'] for r in rs]):.0f} |"
        )
    calib = [r for r in res["runs"] if r["kind"] == "calib"]
    if calib:
        lines += [
            "",
            "### more calibration text (svd-q merged and refined on N cnn_dailymail records; ratio = after / before)",
            "",
            "| G | records | lengths | calib target tokens | steps | calib KL before -> after | "
            "held-out KL svd-q -> refined | ratio | s |",
            "|---|---:|---|---:|---:|---|---|---:|---:|",
        ]
        for r in sorted(calib, key=lambda r: (r["G"], r["calib_samples"], r["steps"])):
            c = r["record"]
            n_in, n_out = r["calib_lengths"]
            lines.append(
                f"| {r['G']} | {r['calib_samples']} | {n_in}x{n_out} | {c['target_tokens']:,} | {r['steps']} | "
                f"{c['kl_before']:.4f} -> "
                f"{c['kl_after']:.4f} | {r['held_out_before']:.4f} -> {r['held_out_after']:.4f} | "
                f"{r['held_out_after'] / r['held_out_before']:.2f} | {r['seconds']:.0f} |"
            )
    write_table(lines, "refine_testbed_table.md")


if __name__ == "__main__":
    main()
