"""Calibrated K/V merging and similarity grouping vs mean pooling, on the 12 M model of gqa_uptrain.py.

1. The pretrained multi-head model, tokenizer and windows of `gqa_uptrain.py` (run it first, or this script
   runs its preparation and pretraining).
2. Calibration statistics on 512 span-corrupted *training* windows; the same statistics on the 256 held-out
   windows only to measure how well the calibration error generalises (never to fit anything).
3. For G = 1, 2, 4: mean (contiguous), fit, svd, svd-q; then the best calibrated method (lowest held-out loss
   at alpha = 0) with similarity grouping (G = 2, 4; one group has nothing to choose).
4. Every conversion uptrained to alpha = 0.1 (80 steps) with the recipe of gqa_uptrain.py, for 3 data seeds.

Resumable: rerun the same command. Results: experiments/results/calibrated_merge.json; `--report` writes the
table and plot (calibrated_merge_report.py).

    .venv/bin/python experiments/calibrated_merge.py              # everything (about 1.5 h on 2 cores)
    .venv/bin/python experiments/calibrated_merge.py --seeds 1    # one uptraining seed
    .venv/bin/python experiments/calibrated_merge.py --report
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import json
import time
from pathlib import Path

import click
import mlx.core as mx
import numpy as np
from gqa_uptrain import (
    BATCH,
    EXP,
    load_merged,
    log,
    prepare,
    results_options,
    run_pretrain,
    save_results,
    span_trainer,
    uptrain_config,
)
from mlx.utils import tree_flatten

from mlx_mqa import load_model
from mlx_mqa.checkpoint.files import save_model
from mlx_mqa.conversion import convert_model
from mlx_mqa.conversion.calibrated import calibrated_weights
from mlx_mqa.conversion.statistics import collect
from mlx_mqa.train.data import IGNORE, SpanCorruptionData
from mlx_mqa.train.objectives import loss_terms

GROUPS = (1, 2, 4)
METHODS = ("mean", "fit", "svd", "svd-q")
CALIBRATION_WINDOWS = 512
SEEDS = (1, 2, 3)


def stat_batches(batches):
    """Training batches (dicts) -> (input ids, mask, decoder input ids, decoder mask) for `collect`."""
    for b in batches:
        yield (
            mx.array(b["input_ids"]),
            mx.array(b["attention_mask"]),
            mx.array(b["decoder_input_ids"]),
            mx.array((b["labels"] != IGNORE).astype(np.int32)),
        )


def heldout_loss(model, batches) -> float:
    total = count = 0.0
    for b in batches:
        loss_sum, n = loss_terms(model, {k: mx.array(v) for k, v in b.items()})
        total, count = total + loss_sum.item(), count + n.item()
    return total / count


def calibration(tok, train, held):
    """Calibration batches (training windows) and the held-out batches (the eval set of every run)."""
    pick = np.sort(np.random.default_rng(7).choice(len(train), CALIBRATION_WINDOWS, replace=False))
    data = SpanCorruptionData(train, tok, BATCH, seed=0)
    return data.eval_batches(train[pick], 32, seed=99), data.eval_batches(held, 32)


def convert_one(res, run, mha, name, G, method, grouping, stats, held_stats, held_batches, tok):
    """Convert, measure the calibration error (calibration and held-out statistics) and the alpha = 0 loss."""
    out = run / "converted-cal" / name
    if not out.exists():
        model = convert_model(mha, G, method, grouping, stats, source="pretrained-mha")
        save_model(out, model, tok)
    weights = {k: np.array(v) for k, v in tree_flatten(mha.parameters())}
    _, record = calibrated_weights(weights, mha.args, stats, G, method, grouping, eval_stats=held_stats)
    model = load_model(out)
    res.setdefault("conversions", {})[name] = {
        "kv_heads": G,
        "method": method,
        "grouping": grouping,
        "path": str(out),
        "alpha0_loss": heldout_loss(model, held_batches),
        "layer_errors": record["errors"],
        "decoder_head_order": record["decoder_head_order"],
        "cross_head_order": record["cross_head_order"],
        "regularized": record["regularized"],
    }
    log(f"{name}: alpha=0 loss {res['conversions'][name]['alpha0_loss']:.4f}")


def uptrain(res, run, tok, train, held, name, P, seed):
    conv = res["conversions"][name]
    store = res.setdefault("runs", {}).setdefault(str(seed), {})
    if store.get(name, {}).get("done"):
        return
    cfg = uptrain_config(P, seed)
    every = cfg.eval_every
    t0 = time.time()
    tr = span_trainer(
        load_model(conv["path"]),
        cfg,
        run / "uptrain-cal" / f"{name}-seed{seed}",
        tok,
        train,
        held,
        name,
        data_seed=seed,
        every=every,
    )
    tr.resume()
    out = tr.train()
    store[name] = {
        "evals": [{"step": e["step"], "alpha": e["step"] / P, "eval_loss": e["eval_loss"]} for e in tr.evals],
        "tokens_per_s": out["tokens_per_s"],
        "wall_seconds": time.time() - t0,
        "done": True,
    }
    log(f"{name} seed {seed}: " + ", ".join(f"{e['alpha']:.3f}:{e['eval_loss']:.4f}" for e in store[name]["evals"]))


def priority(name: str):
    """Mean pooling and the best calibrated merges first: a run cut short still answers the main question."""
    return ("svd-q" not in name and "mean" not in name, name)


def built(res, name: str) -> bool:
    """Recorded and on disk (runs/ is not in the repository: a fresh checkout rebuilds the conversions)."""
    conv = res.get("conversions", {}).get(name)
    return conv is not None and Path(conv["path"]).exists()


def conversions(res, run, mha, tok, train, held, results, only=None):
    """Every conversion, or only those named (a focused rerun on another checkpoint need not build them all)."""
    cal_batches, held_batches = calibration(tok, train, held)
    t0 = time.time()
    stats = collect(mha, stat_batches(cal_batches))
    held_stats = collect(mha, stat_batches(held_batches))
    res["calibration"] = {
        "windows": CALIBRATION_WINDOWS,
        "split": "train",
        "seconds": time.time() - t0,
        "encoder_tokens": stats.encoder_out.tokens,
        "decoder_tokens": stats.self_inputs[0].tokens,
    }
    res["mha_loss"] = heldout_loss(mha, held_batches)
    for G in GROUPS:
        for method in METHODS:
            name = f"g{G}-{method}"
            if (only is None or name in only) and not built(res, name):
                convert_one(res, run, mha, name, G, method, "contiguous", stats, held_stats, held_batches, tok)
                save_results(results, res)
        if G == 1 or only is not None:
            continue
        best = min(METHODS[1:], key=lambda m: res["conversions"][f"g{G}-{m}"]["alpha0_loss"])
        name = f"g{G}-{best}-similar"
        if not built(res, name):
            convert_one(res, run, mha, name, G, best, "similar", stats, held_stats, held_batches, tok)
            save_results(results, res)


RESULTS = EXP / "results" / "calibrated_merge.json"


def ranks(res, run, results):
    """Effective ranks of the pretrained model's attention inputs and the K/V capacity of G heads on the
    calibration windows (hard_testbed.py's measures, to set the two testbeds side by side), and KL(MHA || merged)
    on the held-out windows for mean pooling and svd-q, merged in memory."""
    from hard_testbed import effective_ranks, kv_capacity

    from mlx_mqa.conversion.refine import divergence

    tok, train, held = prepare(run, {})
    mha = load_model(run / "pretrained-mha")
    cal_batches, held_batches = calibration(tok, train, held)
    stats = collect(mha, stat_batches(cal_batches))
    res["effective_ranks"] = {"d_model": mha.args.d_model, **effective_ranks(stats)}
    res["kv_capacity"] = kv_capacity(mha, stats)
    batches = [{k: mx.array(v) for k, v in b.items()} for b in held_batches]
    enc = [mha.encode(b["input_ids"], b["attention_mask"]) for b in batches]
    res["kl_to_mha"] = {
        f"g{G}-{m}": divergence(convert_model(mha, G, m, stats=None if m == "mean" else stats), mha, batches, enc)
        for G in GROUPS
        for m in ("mean", "svd-q")
    }
    res["ranks_model_eval_loss"] = heldout_loss(mha, held_batches)
    save_results(results, res)
    log(json.dumps({k: res[k] for k in ("effective_ranks", "kv_capacity", "kl_to_mha")}))


@click.command()
@click.option(
    "--run-dir",
    default=str(EXP / "runs" / "gqa_uptrain"),
    show_default=True,
    help="gqa_uptrain.py's run directory (its pretrained model, tokenizer and windows).",
)
@click.option("--pretrain-steps", "P", type=int, default=800, show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True, help="Uptraining data seeds.")
@click.option(
    "--only",
    default=None,
    help="Comma list of conversions to build and uptrain (default: all, most informative first).",
)
@results_options(RESULTS, "seeds")
@click.option("--report", "report_only", is_flag=True, help="Only write the table and plot.")
@click.option("--ranks", "ranks_only", is_flag=True, help="Only measure ranks, K/V capacity and KL of mean/svd-q.")
def main(run_dir, P, seeds, only, results_path, merge_from, report_only, ranks_only):
    from calibrated_merge_report import write_report

    results = Path(results_path)
    res = load_merged(results, merge_from)
    if ranks_only:
        return ranks(res, Path(run_dir), results)
    if not report_only and not merge_from:
        run = Path(run_dir)
        tok, train, held = prepare(run, {})
        source = run / "pretrained-mha"
        if not source.exists():
            source = run_pretrain(run, {}, tok, train, held, P)
        mha = load_model(source)
        res["pretrained"] = str(source)
        names = only.split(",") if only else None
        conversions(res, run, mha, tok, train, held, results, names)
        names = names or sorted(res["conversions"], key=priority)
        for seed in (int(s) for s in seeds.split(",")):
            for name in names:
                uptrain(res, run, tok, train, held, name, P, seed)
                save_results(results, res)
    write_report(res, results)


if __name__ == "__main__":
    main()
