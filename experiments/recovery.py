"""Recovery by distillation on a laptop: from `mean` and `svd-q` conversions (G = 1, 2, 4) of the random-weight
t5-small-shaped testbed (hard_testbed.py), train every parameter with the project's uptraining library
(`mlx_mqa.train.trainer.Trainer` + `SupervisedData`, i.e. `python -m mlx_mqa.uptrain --objective supervised
--teacher MHA --kd-weight 1`, its default Adafactor, lr 1e-3 constant) on cnn_dailymail document -> summary pairs,
and measure KL(MHA || student) on held-out xsum against steps and training seconds.

    python experiments/recovery.py run --start svd-q --gs 1 --minutes 10
    python experiments/recovery.py report
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from hard_testbed import DATA, GS, PREFIX, RESULTS, Testbed, pyplot, write_table

OUT = RESULTS / "recovery.json"


def load():
    return json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}


def run_one(tb, res, start, G, minutes, eval_every, lr, batch_size, train_records):
    from mlx_mqa.conversion.calibration import read_pairs
    from mlx_mqa.train.config import TrainConfig
    from mlx_mqa.train.data import SupervisedData, encode_pairs
    from mlx_mqa.train.trainer import Trainer

    seed = tb.settings["seed"]
    if any(r["seed"] == seed and r["G"] == G and r["start"] == start for r in res["runs"]):
        return
    student = tb.convert(G, start)
    pairs = read_pairs(str(DATA / "cnn_dailymail" / "sample.jsonl"), train_records)
    examples = encode_pairs(tb.tok, pairs, 256, 64, PREFIX)
    data = SupervisedData(examples, tb.tok, batch_size, seed=seed)
    max_steps = 10_000
    cfg = TrainConfig(steps=max_steps, batch_size=batch_size, lr=lr, kd_weight=1.0, seed=seed, save_every=0)
    curve = [{"step": 0, "train_seconds": 0.0, **tb.held_out(student)}]
    print(f"{start} G={G}: step 0 KL {curve[0]['kl']:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(student, data, cfg, d, tokenizer=tb.tok, teacher=tb.teacher)
        step, train_s = 0, 0.0
        while train_s < minutes * 60:
            t0 = time.perf_counter()
            trainer.train_step()  # one Adafactor update on the distillation loss (kd weight 1)
            train_s += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0:
                ev = tb.held_out(student, shared_encoder=False)
                curve.append({"step": step, "train_seconds": train_s, **ev})
                print(f"  step {step} ({train_s:.0f}s) KL {ev['kl']:.4f} top1 {ev['top1']:.3f}", flush=True)
    res["runs"].append(
        {
            "seed": seed,
            "G": G,
            "start": start,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "adafactor (uptrain default)",
            "train_records": len(examples),
            "curve": curve,
        }
    )
    OUT.write_text(json.dumps(res, indent=1))


def half_point(curve):
    """First (step, seconds) where KL <= half of the starting KL, linear between evaluations."""
    k0 = curve[0]["kl"]
    for a, b in zip(curve, curve[1:]):
        if b["kl"] <= k0 / 2:
            f = (a["kl"] - k0 / 2) / max(a["kl"] - b["kl"], 1e-12)
            return (
                a["step"] + f * (b["step"] - a["step"]),
                a["train_seconds"] + f * (b["train_seconds"] - a["train_seconds"]),
            )
    return None


def report():
    res = load()
    lines = [
        "| start | G | KL step 0 | KL best (step) | KL last (step, train s) | half of step-0 KL closed at "
        "(step, train min) | seeds |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for r in sorted(res["runs"], key=lambda r: (r["start"], r["G"], r["seed"])):
        c = r["curve"]
        best = min(c, key=lambda e: e["kl"])
        h = half_point(c)
        hs = f"{h[0]:.0f}, {h[1] / 60:.1f}" if h else "not reached"
        lines.append(
            f"| {r['start']} | {r['G']} | {c[0]['kl']:.4f} | {best['kl']:.4f} ({best['step']}) | "
            f"{c[-1]['kl']:.4f} ({c[-1]['step']}, {c[-1]['train_seconds']:.0f}) | {hs} | 1 |"
        )
    write_table(lines, "recovery_table.md")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in res["runs"]:
        c = r["curve"]
        ls = "-" if r["start"] == "svd-q" else "--"
        lab = f"{r['start']} G={r['G']}"
        axes[0].plot([e["step"] for e in c], [e["kl"] for e in c], ls, marker=".", label=lab)
        axes[1].plot([e["train_seconds"] / 60 for e in c], [e["kl"] for e in c], ls, marker=".", label=lab)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("KL(MHA || student), held-out xsum")
    axes[0].set_xlabel("distillation steps (batch 8)")
    axes[1].set_xlabel("training minutes (shared 2-core CPU)")
    axes[0].legend(fontsize=8)
    fig.suptitle("recovery by distillation (kd weight 1), random-weight t5-small shape")
    fig.tight_layout()
    fig.savefig(RESULTS / "recovery.png", dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["run", "report"])
    p.add_argument("--start", default="svd-q")
    p.add_argument("--gs", type=lambda s: [int(x) for x in s.split(",")], default=list(GS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-records", type=int, default=200)
    a = p.parse_args()
    if a.what == "report":
        return report()
    res = load()
    tb = Testbed(a.seed)
    for G in a.gs:
        run_one(tb, res, a.start, G, a.minutes, a.eval_every, a.lr, a.batch_size, a.train_records)
    report()


if __name__ == "__main__":
    main()
