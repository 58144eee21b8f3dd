"""Small-scale reproduction of GQA's conversion + uptraining results (Ainslie et al. 2023, Fig. 5/6, Table 3).

1. Train a T5 tokenizer on the train split of ../shared/data (10% of records held out).
2. Pretrain a multi-head T5 (v1.1 style: gated-GELU, untied head) from scratch with span corruption.
3. Convert it to MQA, GQA-2, GQA-4 with mean / first / random pooling (decoder self+cross attention).
4. Uptrain each conversion for 0.1 P steps with span corruption, evaluating held-out loss at
   alpha = 0, 0.025, 0.05, 0.075, 0.1; also continue the MHA model itself for 0.1 P steps.

Every stage is resumable: rerun the same command and finished pieces are skipped, interrupted
training resumes from its last checkpoint. Checkpoints go to experiments/runs/ (gitignored);
results (small JSON) to experiments/results/gqa_uptrain.json; `--report` writes the table and plot.

    .venv/bin/python experiments/gqa_uptrain.py            # everything
    .venv/bin/python experiments/gqa_uptrain.py --trial    # 20-step throughput trial only
    .venv/bin/python experiments/gqa_uptrain.py --report   # table + plot from the results JSON
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import json
import time
from pathlib import Path

import click
import numpy as np
from mlx.utils import tree_flatten

from mlx_mqa.checkpoint.files import atomic_write_json
from mlx_mqa.jsonl import read_jsonl
from mlx_mqa.models.config import ModelArgs
from mlx_mqa.train.checkpoints import export_model, list_checkpoints
from mlx_mqa.train.config import TrainConfig
from mlx_mqa.train.data import SpanCorruptionData, make_windows, split_held_out, tokenize_stream
from mlx_mqa.train.init import init_model
from mlx_mqa.train.objectives import span_lengths
from mlx_mqa.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
DATA = ROOT.parent / "shared" / "data"
DATASETS = ("cnn_dailymail", "xsum", "arxiv", "pubmed")

MODEL = dict(
    vocab_size=8192,
    d_model=256,
    d_kv=32,
    d_ff=768,
    num_layers=4,
    num_decoder_layers=4,
    num_heads=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
INPUT_LEN = 128
BATCH = 16
EVAL_WINDOWS = 256
PRETRAIN_LR, PRETRAIN_WARMUP = 1e-2, 100
# Most informative first (mean pooling), so that a cut-short run still answers the main questions.
CONVERSIONS = [(g, pool) for pool in ("mean", "first", "random") for g in (1, 2, 4)]
ALPHAS = (0.0, 0.025, 0.05, 0.075, 0.1)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def load_results(path):
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path, res):
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, res)


def results_options(default: Path, what: str):
    """--results and --merge: a second process may write its own results file, merged afterwards."""

    def wrap(f):
        f = click.option(
            "--merge", "merge_from", multiple=True, help="Add the runs of these results files, then report."
        )(f)
        return click.option(
            "--results",
            "results_path",
            default=str(default),
            show_default=True,
            help=f"Results JSON; another file lets a second process run other {what} in parallel (see --merge).",
        )(f)

    return wrap


def load_merged(results_path, merge_from) -> dict:
    """The results at `results_path` with the uptraining runs of `merge_from` added (and saved)."""
    results = Path(results_path)
    res = load_results(results)
    for other in merge_from:
        for seed, runs in load_results(Path(other)).get("runs", {}).items():
            res.setdefault("runs", {}).setdefault(seed, {}).update(runs)
        save_results(results, res)
    return res


def records(seed=0, eval_fraction=0.1):
    """Train/held-out texts: whole records (document and summary) are held out together."""
    train, held = [], []
    for k, name in enumerate(DATASETS):
        rows = [rec for _, rec in read_jsonl(DATA / name / "sample.jsonl")]
        train_rows, held_rows = split_held_out(rows, eval_fraction, seed=[seed, k])
        train.extend(t for r in train_rows for t in (r["document"], r["summary"]))
        held.extend(t for r in held_rows for t in (r["document"], r["summary"]))
    return train, held


def prepare(run, res):
    """Tokenizer and token windows, cached in the run dir."""
    from transformers import AutoTokenizer

    tok_dir, data_file = run / "tokenizer", run / "windows.npz"
    train_texts, held_texts = records()
    if not (tok_dir / "tokenizer.json").exists():
        from mlx_mqa.train.tokenizer import train_tokenizer

        t0 = time.time()
        log(f"training an {MODEL['vocab_size']}-token tokenizer on {len(train_texts)} train texts")
        tok = train_tokenizer(train_texts, vocab_size=MODEL["vocab_size"] - 100, extra_ids=100)
        tok.save_pretrained(str(tok_dir))
        res["tokenizer_seconds"] = time.time() - t0
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) <= MODEL["vocab_size"], len(tok)
    if not data_file.exists():
        raw, tgt = span_lengths(INPUT_LEN)
        train = make_windows(tokenize_stream(tok, train_texts), raw)
        held = make_windows(tokenize_stream(tok, held_texts), raw)
        pick = np.sort(np.random.default_rng(0).choice(len(held), size=min(EVAL_WINDOWS, len(held)), replace=False))
        np.savez(data_file, train=train, eval=held[pick])
        res["data"] = {
            "train_windows": int(len(train)),
            "heldout_windows_total": int(len(held)),
            "eval_windows": int(len(pick)),
            "raw_tokens_per_window": raw,
            "input_length": INPUT_LEN,
            "target_length": tgt,
            "train_tokens": int(train.size),
            "train_texts": len(train_texts),
            "heldout_texts": len(held_texts),
        }
        log(f"data: {res['data']}")
    d = np.load(data_file)
    return tok, d["train"], d["eval"]


def printer(prefix, every=50):
    def cb(e):
        if e["event"] == "step" and (e["step"] % every == 0 or e["step"] <= 3):
            log(f"{prefix} step {e['step']} loss {e['loss']:.4f} lr {e['lr']:.2e} tok/s {e['tok_s']:.0f}")
        elif e["event"] == "eval":
            log(f"{prefix} step {e['step']} EVAL {e['eval_loss']:.4f} ({e['seconds']:.1f}s)")

    return cb


def pretrain_config(steps, eval_every=100):
    return TrainConfig(
        steps=steps,
        batch_size=BATCH,
        optimizer="adafactor",
        lr=PRETRAIN_LR,
        schedule="rsqrt",
        warmup_steps=PRETRAIN_WARMUP,
        eval_every=eval_every,
        save_every=100,
        keep_checkpoints=2,
        seed=0,
    )


def uptrain_lr(pretrain_steps):
    """The pretraining schedule's last learning rate: uptraining continues at it (constant)."""
    return PRETRAIN_LR * (PRETRAIN_WARMUP / pretrain_steps) ** 0.5


def span_trainer(model, cfg, run_dir, tok, train, held, name, data_seed=0, every=50, teacher=None):
    """A Trainer of `model` on span corruption of `train` (batches of BATCH), evaluated on `held`, logged as `name`;
    with `teacher`, distilled from it (cfg.kd_weight)."""
    data = SpanCorruptionData(train, tok, BATCH, seed=data_seed)
    evals = data.eval_batches(held, 32)
    cb = printer(name, every=every)
    return Trainer(model, data, cfg, run_dir, tokenizer=tok, eval_batches=evals, callback=cb, teacher=teacher)


def uptrain_steps(P):
    """Uptraining for alpha = 0.1 of the P pretraining steps, evaluated and saved every 0.025 P."""
    return max(int(round(0.1 * P)), 1), max(int(round(0.025 * P)), 1)


def uptrain_config(P, seed):
    """Uptraining continues at the pretraining schedule's last lr (constant, fresh Adafactor, 5 warm-up steps)."""
    steps, every = uptrain_steps(P)
    return TrainConfig(
        steps=steps,
        batch_size=BATCH,
        optimizer="adafactor",
        lr=uptrain_lr(P),
        schedule="constant",
        warmup_steps=5,
        eval_every=every,
        save_every=every,
        keep_checkpoints=1,
        seed=seed,
    )


def run_pretrain(run, res, tok, train, held, steps):
    model = init_model(ModelArgs.from_dict(MODEL), seed=0)
    tr = span_trainer(model, pretrain_config(steps), run / "pretrain", tok, train, held, "pretrain")
    if tr.resume():
        log(f"pretrain: resumed at step {tr.step}")
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    t0 = time.time()
    out = tr.train()
    prev = res.get("pretrain", {})
    res["pretrain"] = {
        "steps": steps,
        "params": int(n_params),
        "batch_size": BATCH,
        "input_length": INPUT_LEN,
        "eval_curve": tr.evals,
        "final_eval_loss": tr.evals[-1]["eval_loss"],
        "train_seconds": out["train_seconds"],
        "tokens": out["tokens"],
        "tokens_per_s": out["tokens_per_s"],
        "wall_seconds": prev.get("wall_seconds", 0.0) + (time.time() - t0),
        "optimizer": f"Adafactor lr {PRETRAIN_LR} warm-up {PRETRAIN_WARMUP} then rsqrt",
    }
    out = run / "pretrained-mha"
    if not out.exists():
        export_model(list_checkpoints(run / "pretrain")[-1], out)
    return out


def run_uptrain(run, res, tok, train, held, name, source, P, G, pool, seed=1):
    from mlx_mqa import load_model
    from mlx_mqa.conversion import convert

    conv_dir = run / "converted" / name
    t0 = time.time()
    if G is not None and not conv_dir.exists():
        convert(str(source), str(conv_dir), kv_heads=G, pool=pool, dtype="float32", seed=0)
    model = load_model(conv_dir if G is not None else source)
    cfg = uptrain_config(P, seed)
    steps, every = cfg.steps, cfg.eval_every
    run_name = name if seed == 1 else f"{name}-seed{seed}"
    tr = span_trainer(model, cfg, run / "uptrain" / run_name, tok, train, held, name, data_seed=seed, every=every)
    if tr.resume():
        log(f"{name}: resumed at step {tr.step}")
    out = tr.train()
    store = res.setdefault("runs", {}) if seed == 1 else res.setdefault("replicates", {}).setdefault(str(seed), {})
    prev = store.get(name, {})
    store[name] = {
        "kv_heads": G if G is not None else MODEL["num_heads"],
        "pool": pool,
        "steps": steps,
        "evals": [{"step": e["step"], "alpha": e["step"] / P, "eval_loss": e["eval_loss"]} for e in tr.evals],
        "train_seconds": out["train_seconds"],
        "tokens_per_s": out["tokens_per_s"],
        "wall_seconds": prev.get("wall_seconds", 0.0) + (time.time() - t0),
        "lr": cfg.lr,
        "seed": seed,
        "done": True,
    }


def run_continue_pretraining(run, res, tok, train, held, P):
    """Reference: the MHA model continued from its pretraining checkpoint *with* its optimizer state, data
    position and lr schedule, i.e. pretraining simply goes on for 0.1 P steps (no optimizer restart)."""
    name = "mha-continued-same-optimizer"
    ckpt = run / "pretrain" / f"ckpt-{P:07d}"
    steps, every = uptrain_steps(P)
    model = init_model(ModelArgs.from_dict(MODEL), seed=0)
    cfg = pretrain_config(P + steps, eval_every=every)
    cfg.save_every, cfg.keep_checkpoints = every, 1
    t0 = time.time()
    tr = span_trainer(model, cfg, run / "uptrain" / name, tok, train, held, name, every=every)
    if not tr.resume():
        tr.resume(ckpt)
    log(f"{name}: starting at step {tr.step}")
    out = tr.train()
    res.setdefault("runs", {})[name] = {
        "kv_heads": MODEL["num_heads"],
        "pool": None,
        "steps": steps,
        "evals": [
            {"step": e["step"] - P, "alpha": (e["step"] - P) / P, "eval_loss": e["eval_loss"]}
            for e in tr.evals
            if e["step"] >= P
        ],
        "train_seconds": out["train_seconds"],
        "tokens_per_s": out["tokens_per_s"],
        "wall_seconds": time.time() - t0,
        "lr": "pretraining rsqrt schedule continued",
        "done": True,
    }


@click.command()
@click.option("--run-dir", default=str(EXP / "runs" / "gqa_uptrain"), show_default=True)
@click.option("--results", default=str(EXP / "results" / "gqa_uptrain.json"), show_default=True)
@click.option("--pretrain-steps", "P", default=800, show_default=True, help="P; uptraining runs 0.1 P steps")
@click.option("--trial", is_flag=True, help="only time 20 training steps (no checkpoint kept)")
@click.option("--report", "report_only", is_flag=True, help="only write the table and plot")
@click.option(
    "--replicate-seed",
    type=int,
    default=None,
    help="after the main grid: uptrain every conversion again with this data-order/noise seed",
)
def main(run_dir, results, P, trial, report_only, replicate_seed):
    run, res_path = Path(run_dir), Path(results)
    run.mkdir(parents=True, exist_ok=True)
    res = load_results(res_path)
    if report_only:
        from report import write_report

        write_report(res, EXP)
        return
    t_all = time.time()
    tok, train, held = prepare(run, res)
    save_results(res_path, res)
    if trial:
        import shutil

        model = init_model(ModelArgs.from_dict(MODEL), seed=0)
        tr = Trainer(
            model,
            SpanCorruptionData(train, tok, BATCH, seed=0),
            pretrain_config(20, 0),
            run / "trial",
            callback=printer("trial", 5),
        )
        t0 = time.time()
        for i in range(20):
            loss, n = tr.train_step()
            if i in (0, 4, 9, 19):
                log(f"trial step {i + 1} loss {loss:.3f} {n} tokens, {(time.time() - t0) / (i + 1):.2f} s/step")
        shutil.rmtree(run / "trial", ignore_errors=True)
        return
    res.setdefault("timing", {}).setdefault("started_at", time.strftime("%Y-%m-%d %H:%M:%S"))
    pre = run_pretrain(run, res, tok, train, held, P)
    res["timing"]["pretrain_done_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_results(res_path, res)
    log(f"pretrained: {pre}  eval {res['pretrain']['final_eval_loss']:.4f}")
    todo = [("mha-continued", None, None)] + [(f"g{g}-{pool}", g, pool) for g, pool in CONVERSIONS]
    for name, G, pool in todo:
        if res.get("runs", {}).get(name, {}).get("done") and res["runs"][name]["steps"] == uptrain_steps(P)[0]:
            continue
        run_uptrain(run, res, tok, train, held, name, pre, P, G, pool)
        save_results(res_path, res)
        log(f"{name}: " + ", ".join(f"a={e['alpha']:.3f}:{e['eval_loss']:.4f}" for e in res["runs"][name]["evals"]))
    res["timing"]["grid_finished_at"] = res["timing"].get("grid_finished_at") or time.strftime("%Y-%m-%d %H:%M:%S")
    save_results(res_path, res)
    if not res["runs"].get("mha-continued-same-optimizer", {}).get("done"):
        run_continue_pretraining(run, res, tok, train, held, P)
        save_results(res_path, res)
    if replicate_seed is not None and replicate_seed != 1:
        for name, G, pool in todo:
            if res.get("replicates", {}).get(str(replicate_seed), {}).get(name, {}).get("done"):
                continue
            run_uptrain(run, res, tok, train, held, name, pre, P, G, pool, seed=replicate_seed)
            save_results(res_path, res)
            evals = res["replicates"][str(replicate_seed)][name]["evals"]
            log(
                f"{name} seed {replicate_seed}: " + ", ".join(f"a={e['alpha']:.3f}:{e['eval_loss']:.4f}" for e in evals)
            )
        res["timing"][f"replicate_{replicate_seed}_finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["timing"]["last_invocation_wall_seconds"] = time.time() - t_all
    res["timing"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_results(res_path, res)
    from report import write_report

    write_report(res, EXP)


if __name__ == "__main__":
    main()
