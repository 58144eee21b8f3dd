"""Uptrain (continue training) a converted T5: `python -m mlx_mqa.uptrain --help`.

Objectives: T5 span corruption over a text corpus, or supervised document -> summary pairs.
Checkpoints (weights, optimizer state, step, data position and RNG state) are written
atomically to RUN_DIR/ckpt-NNNNNNN; `--resume` continues exactly where the last one left off.
Ctrl-C writes a checkpoint at the end of the current step and exits; a second Ctrl-C (or a kill)
exits at once, leaving the last complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

from . import backend  # noqa: F401  (OpenBLAS before mlx.core)

import click  # noqa: E402
import numpy as np  # noqa: E402

from .errors import ConfigError, InputError, MlxMqaError  # noqa: E402


def steps_from(steps, alpha, pretrain_steps):
    if steps is not None and alpha is not None:
        raise ConfigError("give --steps or --alpha (with --pretrain-steps), not both")
    if alpha is not None:
        if not pretrain_steps:
            raise ConfigError("--alpha needs --pretrain-steps (the original pretraining length)")
        return max(int(round(alpha * pretrain_steps)), 1)
    if steps is None:
        raise ConfigError("give --steps N, or --alpha A with --pretrain-steps P (the paper: alpha = 0.05)")
    return steps


def build_data(objective, tokenizer, sources, eval_sources, eval_fraction, batch_size, seed, input_length,
               eval_examples, source_field, target_field, prefix, max_source_length, max_target_length):
    from .span_corruption import (SpanCorruptionData, SupervisedData, encode_pairs, make_windows, read_pairs,
                                  read_texts, span_lengths, split_documents, tokenize_stream)

    if objective == "span":
        texts = read_texts(sources, field=source_field)
        if eval_sources:
            train_texts, held_texts = texts, read_texts(eval_sources, field=source_field)
        else:
            train_texts, held_texts = split_documents(texts, eval_fraction, seed=0)
        raw, _ = span_lengths(input_length)
        train = make_windows(tokenize_stream(tokenizer, train_texts), raw)
        held = make_windows(tokenize_stream(tokenizer, held_texts), raw) if held_texts else train[:0]
        if len(train) == 0:
            raise InputError(f"the corpus has fewer than {raw} tokens: no training window")
        if len(held) > eval_examples:
            held = held[np.sort(np.random.default_rng(0).choice(len(held), eval_examples, replace=False))]
        data = SpanCorruptionData(train, tokenizer, batch_size, seed=seed)
        return data, (data.eval_batches(held, batch_size) if len(held) else []), \
            f"{len(train)} windows of {raw} tokens ({input_length} after corruption), {len(held)} held out"
    pairs = []
    for s in sources:
        pairs.extend(read_pairs(s, source_field, target_field))
    if eval_sources:
        held_pairs = [p for s in eval_sources for p in read_pairs(s, source_field, target_field)]
    else:
        order = np.random.default_rng(0).permutation(len(pairs))
        n_eval = int(round(len(pairs) * eval_fraction))
        held_pairs = [pairs[i] for i in order[:n_eval]]
        pairs = [pairs[i] for i in sorted(order[n_eval:])]
    enc = encode_pairs(tokenizer, pairs, max_source_length, max_target_length, prefix)
    held = encode_pairs(tokenizer, held_pairs[:eval_examples], max_source_length, max_target_length, prefix)
    data = SupervisedData(enc, tokenizer, batch_size, seed=seed)
    return data, data.eval_batches(held, batch_size), f"{len(enc)} training pairs, {len(held)} held out"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--model", "model_path", required=True, help="converted MLX model dir (or HF T5 dir / hub id)")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="checkpoints and log.jsonl")
@click.option("--data", "sources", multiple=True, required=True,
              help="corpus: .jsonl/.txt files, dirs, globs or hf:NAME[:CONFIG][@SPLIT]; repeatable")
@click.option("--eval-data", "eval_sources", multiple=True, help="held-out data (default: split off --eval-fraction)")
@click.option("--objective", type=click.Choice(["span", "supervised"]), default="span", show_default=True,
              help="T5 span corruption (density 0.15, mean span 3) or document -> summary fine-tuning")
@click.option("--eval-fraction", default=0.05, show_default=True, help="documents held out when no --eval-data")
@click.option("--eval-examples", default=256, show_default=True, help="at most this many held-out windows/pairs")
@click.option("--input-length", default=128, show_default=True, help="span corruption: encoder length after corruption")
@click.option("--source-field", default="document", show_default=True, help="JSONL text / source field")
@click.option("--target-field", default="summary", show_default=True, help="JSONL target field (supervised)")
@click.option("--prefix", default="summarize: ", show_default=True, help="supervised: prepended to sources")
@click.option("--max-source-length", default=512, show_default=True)
@click.option("--max-target-length", default=128, show_default=True)
@click.option("--steps", type=int, default=None, help="optimizer updates to run in total")
@click.option("--alpha", type=float, default=None, help="uptraining proportion: steps = alpha * --pretrain-steps")
@click.option("--pretrain-steps", type=int, default=None, help="the original model's pretraining steps")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--grad-accum", default=1, show_default=True, help="micro-batches per update")
@click.option("--optimizer", type=click.Choice(["adafactor", "adamw"]), default="adafactor", show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="peak learning rate")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "rsqrt", "linear"]), default="constant",
              show_default=True, help="after the linear warm-up")
@click.option("--warmup", default=0, show_default=True, help="linear warm-up steps")
@click.option("--min-lr-ratio", default=0.0, show_default=True, help="cosine/linear floor, as a fraction of --lr")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--clip-grad-norm", type=float, default=None)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="weights and compute (float32 is much faster on the Linux CPU backend)")
@click.option("--seed", default=0, show_default=True, help="data order and span-corruption noise")
@click.option("--eval-every", default=0, show_default=True, help="steps between held-out evaluations (0: end only)")
@click.option("--save-every", default=100, show_default=True, help="steps between checkpoints (0: end only)")
@click.option("--keep", default=2, show_default=True, help="checkpoints kept")
@click.option("--resume", is_flag=True, help="continue from the newest checkpoint in --run-dir")
@click.option("--overwrite", is_flag=True, help="delete --run-dir's checkpoints and start over")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="also write the final model (no optimizer state) here")
def main(model_path, run_dir, sources, eval_sources, objective, eval_fraction, eval_examples, input_length,
         source_field, target_field, prefix, max_source_length, max_target_length, steps, alpha, pretrain_steps,
         batch_size, grad_accum, optimizer, lr, schedule, warmup, min_lr_ratio, weight_decay, clip_grad_norm, dtype,
         seed, eval_every, save_every, keep, resume, overwrite, output):
    """Continue training a converted T5 (GQA uptraining, Ainslie et al. 2023)."""
    try:
        run(**locals())
    except MlxMqaError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


def run(model_path, run_dir, sources, eval_sources, objective, eval_fraction, eval_examples, input_length,
        source_field, target_field, prefix, max_source_length, max_target_length, steps, alpha, pretrain_steps,
        batch_size, grad_accum, optimizer, lr, schedule, warmup, min_lr_ratio, weight_decay, clip_grad_norm, dtype,
        seed, eval_every, save_every, keep, resume, overwrite, output):
    from tqdm import tqdm

    from .trainer import Trainer, TrainConfig, list_checkpoints
    from .utils import load

    total = steps_from(steps, alpha, pretrain_steps)
    run_dir = Path(run_dir)
    existing = list_checkpoints(run_dir)
    if existing and not (resume or overwrite):
        raise ConfigError(f"{run_dir} already has checkpoints (newest {existing[-1].name}); "
                          f"pass --resume to continue or --overwrite to start over")
    if overwrite and run_dir.exists():
        for p in existing:
            shutil.rmtree(p)
        (run_dir / "log.jsonl").unlink(missing_ok=True)

    click.echo(f"loading {model_path}")
    model, tokenizer = load(model_path, dtype="float32")
    data, eval_batches, desc = build_data(objective, tokenizer, sources, eval_sources, eval_fraction, batch_size,
                                          seed, input_length, eval_examples, source_field, target_field, prefix,
                                          max_source_length, max_target_length)
    click.echo(f"data: {desc}")
    cfg = TrainConfig(steps=total, batch_size=batch_size, grad_accum=grad_accum, optimizer=optimizer, lr=lr,
                      schedule=schedule, warmup_steps=warmup, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay,
                      clip_grad_norm=clip_grad_norm, dtype=dtype, seed=seed, eval_every=eval_every,
                      save_every=save_every, keep_checkpoints=keep)
    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def callback(e):
        if e["event"] == "step":
            bar.update(1)
            bar.set_postfix(loss=f"{e['loss']:.4f}", tok_s=f"{e['tok_s']:.0f}", lr=f"{e['lr']:.1e}")
        elif e["event"] == "eval":
            bar.write(f"step {e['step']}: held-out loss {e['eval_loss']:.4f}")
        elif e["event"] == "checkpoint":
            bar.write(f"checkpoint {e['path']}")

    trainer = Trainer(model, data, cfg, run_dir, tokenizer=tokenizer, eval_batches=eval_batches, callback=callback,
                      extra_state={"source_model": str(model_path), "objective": objective})
    if resume:
        restored = trainer.resume()
        if restored:
            bar.write(f"resumed from {restored} (step {trainer.step})")
            bar.update(trainer.step)
        else:
            bar.write(f"no checkpoint in {run_dir}; starting at step 0")

    def on_sigint(signum, frame):
        if trainer._stop:
            raise KeyboardInterrupt
        trainer.request_stop()
        bar.write("interrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = trainer.train()
    except KeyboardInterrupt:
        bar.close()
        last = list_checkpoints(run_dir)
        click.echo(f"interrupted; last complete checkpoint: {last[-1] if last else 'none'}. "
                   f"Rerun with --resume to continue.", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, old)
    bar.close()
    ev = summary["eval"]
    click.echo(f"step {summary['step']}/{total}: train loss {summary['final_loss']:.4f}"
               + (f", held-out loss {ev['eval_loss']:.4f}" if ev else "")
               + f", {summary['tokens_per_s']:.0f} tokens/s")
    if summary["stopped"]:
        click.echo(f"stopped early; rerun with --resume to continue from step {summary['step']}")
        sys.exit(130)
    final = list_checkpoints(run_dir)[-1]
    if output:
        from .checkpoint import atomic_directory

        with atomic_directory(Path(output), overwrite=True) as tmp:
            for f in final.iterdir():
                if f.is_file() and f.name != "trainer_state.json":
                    shutil.copy2(f, tmp / f.name)
        click.echo(f"model written to {output}")
    click.echo(f"final checkpoint: {final} (loads with mlx_mqa.load)")


if __name__ == "__main__":
    main()
