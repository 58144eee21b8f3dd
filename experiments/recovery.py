"""Recovery by distillation on a laptop: from `mean` and `svd-q` conversions (G = 1, 2, 4) of the random-weight
t5-small-shaped testbed (hard_testbed.py, one random teacher per seed), train every parameter with the project's
uptraining library (`mlx_mqa.train.trainer.Trainer` + `SupervisedData`, i.e. `python -m mlx_mqa.uptrain
--objective supervised --teacher MHA --kd-weight 1`, its default Adafactor, constant lr) on cnn_dailymail
document -> summary pairs, and measure KL(MHA || student) on held-out xsum against steps.

The budget is in steps, so runs may share the CPU; minutes come from the step cost measured alone at each shape
(refine_cost.py, "uptrain"), which also scales them to t5-base and t5-large.

    python experiments/recovery.py run --start svd-q --gs 1,2,4 --seeds 0,1,2 --steps 40
    python experiments/recovery.py run --start mean --gs 1,2,4 --seeds 0,1,2 --steps 30
    python experiments/recovery.py report
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from hard_testbed import DATA, GS, PREFIX, RESULTS, Testbed, pyplot, write_table

OUT = RESULTS / "recovery.json"
COST = RESULTS / "refine_cost.json"
SHAPES = ("t5-small", "t5-base", "t5-large")


def load():
    return json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}


def save_run(run: dict) -> None:
    """Re-read before writing: two lanes may append to the same file."""
    res = load()
    res["runs"].append(run)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(OUT)


def done(seed, G, start, lr) -> bool:
    return any((r["seed"], r["G"], r["start"], r["lr"]) == (seed, G, start, lr) for r in load()["runs"])


def run_one(tb, start, G, steps, eval_every, lr, batch_size, train_records, shared_cpu):
    from mlx_mqa.conversion.calibration import read_pairs
    from mlx_mqa.train.config import TrainConfig
    from mlx_mqa.train.data import SupervisedData, encode_pairs
    from mlx_mqa.train.trainer import Trainer

    seed = tb.settings["seed"]
    student = tb.convert(G, start)
    pairs = read_pairs(str(DATA / "cnn_dailymail" / "sample.jsonl"), train_records)
    examples = encode_pairs(tb.tok, pairs, 256, 64, PREFIX)
    data = SupervisedData(examples, tb.tok, batch_size, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, kd_weight=1.0, seed=seed, save_every=0)
    curve = [{"step": 0, "train_seconds": 0.0, **tb.held_out(student)}]
    print(f"seed {seed} {start} G={G}: step 0 KL {curve[0]['kl']:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(student, data, cfg, d, tokenizer=tb.tok, teacher=tb.teacher)
        train_s = 0.0
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            trainer.train_step()  # one Adafactor update on the distillation loss (kd weight 1)
            train_s += time.perf_counter() - t0
            if step % eval_every == 0 or step == steps:
                ev = tb.held_out(student, shared_encoder=False)
                curve.append({"step": step, "train_seconds": train_s, **ev})
                print(f"  step {step} ({train_s:.0f}s) KL {ev['kl']:.4f} top1 {ev['top1']:.3f}", flush=True)
    save_run(
        {
            "seed": seed,
            "G": G,
            "start": start,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "adafactor (uptrain default)",
            "train_records": len(examples),
            "cpu_shared": shared_cpu,
            "curve": curve,
        }
    )


def half_step(curve):
    """First step where KL <= half of the starting KL, linear between evaluations; None if not reached."""
    k0 = curve[0]["kl"]
    for a, b in zip(curve, curve[1:]):
        if b["kl"] <= k0 / 2:
            f = (a["kl"] - k0 / 2) / max(a["kl"] - b["kl"], 1e-12)
            return a["step"] + f * (b["step"] - a["step"])
    return None


def kl_at(curve, step):
    return next(e["kl"] for e in curve if e["step"] == step)


def step_costs() -> dict:
    """Seconds per uptraining step (batch 8, all parameters, teacher forward), measured alone per shape."""
    res = json.loads(COST.read_text()) if COST.exists() else {}
    return {s: res[s]["uptrain"]["seconds_per_step"] for s in SHAPES if "uptrain" in res.get(s, {})}


def groups(runs):
    out = {}
    for r in runs:
        out.setdefault((r["start"], r["G"], r["lr"]), []).append(r)
    return dict(sorted(out.items()))


def report():
    res, costs = load(), step_costs()
    cost_cols = [s for s in SHAPES if s in costs]
    head = ["start", "lr", "G", "seeds", "KL step 0", "steps", "KL after", "share of step-0 KL closed (min-max)"]
    head += ["minutes of those steps, " + " / ".join(cost_cols)] if cost_cols else []
    head += ["half closed at step (min-max)"] + [f"minutes to half, {s}" for s in cost_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (start, G, lr), rs in groups(res["runs"]).items():
        n = min(r["curve"][-1]["step"] for r in rs)  # the common budget
        k0 = [r["curve"][0]["kl"] for r in rs]
        kn = [kl_at(r["curve"], n) for r in rs]
        closed = [1 - b / a for a, b in zip(k0, kn)]
        halves = [half_step(r["curve"]) for r in rs]
        if all(h is not None for h in halves):
            h = statistics.median(halves)
            cells = [f"{h:.0f} ({min(halves):.0f}-{max(halves):.0f})"]
            cells += [f"{h * costs[s] / 60:.1f}" for s in cost_cols]
        else:
            cells = [f"not reached in {n} ({sum(h is None for h in halves)} of {len(rs)} seeds)"]
            cells += ["-"] * len(cost_cols)
        row = [start, f"{lr:g}", G, len(rs), f"{statistics.mean(k0):.4f}", n, f"{statistics.mean(kn):.4f}"]
        row += [f"{statistics.mean(closed):.1%} ({min(closed):.1%}-{max(closed):.1%})"]
        row += [" / ".join(f"{n * costs[s] / 60:.1f}" for s in cost_cols)] if cost_cols else []
        lines.append("| " + " | ".join(str(c) for c in row + cells) + " |")
    if costs:
        lines += ["", "Seconds per step measured alone: " + ", ".join(f"{s} {c:.1f}" for s, c in costs.items())]
    write_table(lines, "recovery_table.md")
    plot(res, costs)


def plot(res, costs):
    """Relative KL against steps and against minutes at the t5-small shape; absolute KL against steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    minutes = costs.get("t5-small", 0) / 60
    for (start, G, lr), rs in groups(res["runs"]).items():
        n = min(r["curve"][-1]["step"] for r in rs)
        steps = [e["step"] for e in rs[0]["curve"] if e["step"] <= n]
        kl = [[kl_at(r["curve"], s) for s in steps] for r in rs]
        rel = [[k / c[0] for k in c] for c in kl]
        lab = f"{start} G={G}" + ("" if lr == 1e-4 else f" lr {lr:g}") + f" ({len(rs)} seeds)"
        ls = "-" if start == "svd-q" else "--"
        for ax, xs, ys in ((axes[0], steps, rel), (axes[1], [s * minutes for s in steps], rel), (axes[2], steps, kl)):
            if minutes == 0 and ax is axes[1]:
                continue
            (line,) = ax.plot(xs, [statistics.mean(c) for c in zip(*ys)], ls, marker=".", label=lab)
            lo, hi = [min(c) for c in zip(*ys)], [max(c) for c in zip(*ys)]
            ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
    for ax in axes[:2]:
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("KL(MHA || student) / KL at step 0")
        ax.set_ylim(bottom=0)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("KL(MHA || student), held-out xsum")
    for ax in (axes[0], axes[2]):
        ax.set_xlabel("distillation steps (batch 8, all parameters)")
    axes[1].set_xlabel("minutes on this 2-core CPU (t5-small shape, step cost measured alone)")
    axes[0].legend(fontsize=7)
    fig.suptitle("recovery by distillation (kd weight 1), random-weight t5-small shape; mean and min-max of seeds")
    fig.tight_layout()
    fig.savefig(RESULTS / "recovery.png", dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["run", "report"])
    p.add_argument("--start", default="svd-q")
    p.add_argument("--gs", type=lambda s: [int(x) for x in s.split(",")], default=list(GS))
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-records", type=int, default=200)
    p.add_argument("--shared-cpu", action="store_true", help="record that another job shared the CPU")
    a = p.parse_args()
    if a.what == "report":
        return report()
    for seed in a.seeds:
        todo = [G for G in a.gs if not done(seed, G, a.start, a.lr)]
        if not todo:
            continue
        tb = Testbed(seed, stats=a.start != "mean")
        for G in todo:
            run_one(tb, a.start, G, a.steps, a.eval_every, a.lr, a.batch_size, a.train_records, a.shared_cpu)
    report()


if __name__ == "__main__":
    main()
