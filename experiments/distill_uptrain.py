"""Distillation from the multi-head teacher vs span-corruption uptraining, on the 12 M model of gqa_uptrain.py.

Students: the MQA and GQA-2 conversions of calibrated_merge.py (mean pooling, and svd-q, its best calibrated
merge). Each is uptrained to alpha = 0.1 with the recipe of gqa_uptrain.py on the same span-corrupted batches,
the loss being w * T^2 * KL(teacher || student) + (1 - w) * cross-entropy, T = 1, for w = 0.5 and 1.0, with
2 data seeds. The w = 0 runs (plain span corruption, same recipe and seeds) are calibrated_merge.py's. The
held-out loss is always the span-corruption cross-entropy on the same 256 held-out windows.

Resumable: rerun the same command. Results: experiments/results/distill_uptrain.{json,csv,png} and a table.

    .venv/bin/python experiments/calibrated_merge.py --seeds 1    # first (conversions and w = 0 runs)
    .venv/bin/python experiments/distill_uptrain.py               # about 1 h on 2 cores
    .venv/bin/python experiments/distill_uptrain.py --report
    sh experiments/run_kd_3seeds.sh    # MQA only, 3 seeds, one checkpoint: results/mqa_kd_3seeds/
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import time
from dataclasses import replace
from pathlib import Path

import click
from calibrated_merge import RESULTS as MERGE_RESULTS
from gqa_uptrain import (
    EXP,
    load_merged,
    load_results,
    log,
    prepare,
    results_options,
    save_results,
    span_trainer,
    uptrain_config,
)

from mlx_mqa import load_model

STUDENTS = ("g1-mean", "g2-mean", "g1-svd-q", "g2-svd-q")
WEIGHTS = (0.5, 1.0)
SEEDS = (1, 2)
RESULTS = EXP / "results" / "distill_uptrain.json"


def distill(res, run, tok, train, held, teacher, student, path, w, seed, P):
    name = f"{student}-kd{w:g}"
    store = res.setdefault("runs", {}).setdefault(str(seed), {})
    if store.get(name, {}).get("done"):
        return
    cfg = replace(uptrain_config(P, seed), kd_weight=w, kd_temperature=1.0)
    t0 = time.time()
    tr = span_trainer(
        load_model(path),
        cfg,
        run / "distill" / f"{name}-seed{seed}",
        tok,
        train,
        held,
        name,
        data_seed=seed,
        every=cfg.eval_every,
        teacher=teacher,
    )
    tr.resume()
    out = tr.train()
    store[name] = {
        "student": student,
        "kd_weight": w,
        "evals": [{"step": e["step"], "alpha": e["step"] / P, "eval_loss": e["eval_loss"]} for e in tr.evals],
        "tokens_per_s": out["tokens_per_s"],
        "wall_seconds": time.time() - t0,
        "done": True,
    }
    log(f"{name} seed {seed}: " + ", ".join(f"{e['alpha']:.3f}:{e['eval_loss']:.4f}" for e in store[name]["evals"]))


@click.command()
@click.option("--run-dir", default=str(EXP / "runs" / "gqa_uptrain"), show_default=True)
@click.option("--pretrain-steps", "P", type=int, default=800, show_default=True)
@click.option("--seeds", default="1,2", show_default=True, help="Uptraining data seeds.")
@click.option("--only", default=None, help="Comma list of students (default: all; mean pooling first).")
@click.option(
    "--conversions",
    "merge_path",
    default=str(MERGE_RESULTS),
    show_default=True,
    help="calibrated_merge.py's results: the students and their w = 0 (span corruption) runs.",
)
@results_options(RESULTS, "students")
@click.option("--report", "report_only", is_flag=True, help="Only write the table and plot.")
def main(run_dir, P, seeds, only, merge_path, results_path, merge_from, report_only):
    from distill_uptrain_report import write_report

    results = Path(results_path)
    res = load_merged(results, merge_from)
    merge = load_results(Path(merge_path))
    if not report_only and not merge_from:
        missing = [s for s in (only.split(",") if only else STUDENTS) if s not in merge.get("conversions", {})]
        if missing:
            raise click.ClickException(
                f"run experiments/calibrated_merge.py first (no conversion {', '.join(missing)})"
            )
        run = Path(run_dir)
        tok, train, held = prepare(run, {})
        teacher = load_model(run / "pretrained-mha")
        for seed in (int(s) for s in seeds.split(",")):
            for student in only.split(",") if only else STUDENTS:
                for w in WEIGHTS:
                    path = merge["conversions"][student]["path"]
                    distill(res, run, tok, train, held, teacher, student, path, w, seed, P)
                    save_results(results, res)
    write_report(res, merge, results)


if __name__ == "__main__":
    main()
