"""Uptrain (continue training) a converted T5: `python -m mlx_mqa.uptrain --help`.

Objectives: T5 span corruption over a text corpus, or supervised document -> summary pairs.
Checkpoints (weights, optimizer state, step, data position and RNG state) are written
atomically to RUN_DIR/ckpt-NNNNNNN; `--resume` continues exactly where the last one left off.
Ctrl-C writes a checkpoint at the end of the current step and exits; a second Ctrl-C (or a kill)
exits at once, leaving the last complete checkpoint.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import click

from ..cli import CONTEXT, fail
from ..errors import ConfigError, MlxMqaError


def steps_from(steps, alpha, pretrain_steps) -> int:
    """Total optimizer updates from --steps, or --alpha times --pretrain-steps."""
    if steps is not None and alpha is not None:
        raise ConfigError("give --steps or --alpha (with --pretrain-steps), not both")
    if alpha is not None:
        if not pretrain_steps or pretrain_steps < 1:
            raise ConfigError("--alpha needs --pretrain-steps P >= 1 (the original pretraining length)")
        if alpha <= 0:
            raise ConfigError(f"--alpha must be > 0, not {alpha}")
        return max(int(round(alpha * pretrain_steps)), 1)
    if steps is None:
        raise ConfigError("give --steps N, or --alpha A with --pretrain-steps P (the paper: alpha = 0.05)")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, not {steps}")
    return steps


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    from .checkpoints import list_checkpoints

    existing = list_checkpoints(run_dir)
    if existing and not (resume or overwrite):
        raise ConfigError(
            f"{run_dir} already has checkpoints (newest {existing[-1].name}); "
            f"pass --resume to continue or --overwrite to start over"
        )


def check_places(o: dict, run_dir: Path) -> None:
    """--run-dir and --output, before anything is read: writable, and never a place this run reads from
    (the model, the teacher), whatever --overwrite says."""
    from ..checkpoint.files import check_output, check_writable
    from .checkpoints import list_checkpoints

    if o["resume"] and o["overwrite"]:
        raise ConfigError("give --resume (continue the run) or --overwrite (start it over), not both")
    check_writable(run_dir, "--run-dir")
    sources = [Path(p).expanduser().resolve() for p in (o["model_path"], o["teacher"]) if p and Path(p).exists()]
    if o["overwrite"]:
        for ckpt in map(Path.resolve, list_checkpoints(run_dir)):
            for src in sources:
                if src == ckpt or ckpt in src.parents:
                    raise ConfigError(
                        f"--overwrite would delete {ckpt}, which this run reads; copy it elsewhere or use "
                        f"another --run-dir"
                    )
    if o["output"]:
        check_output(Path(o["output"]), o["overwrite"], [*sources, run_dir], option="--output")
    check_run_dir(run_dir, o["resume"], o["overwrite"])


def check_data_options(o: dict) -> None:
    """The data options' ranges, before the model is loaded."""
    from .objectives import MIN_INPUT_LENGTH

    if o["input_length"] < MIN_INPUT_LENGTH:
        raise ConfigError(f"--input-length must be at least {MIN_INPUT_LENGTH}, not {o['input_length']}")
    if not 0 <= o["eval_fraction"] < 1:
        raise ConfigError(f"--eval-fraction must be in [0, 1), not {o['eval_fraction']}")
    for name in ("eval_examples", "max_source_length", "max_target_length"):
        if o[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {o[name]}")


def clear_run_dir(run_dir: Path) -> None:
    """--overwrite: delete the run's checkpoints and log (once everything else has been checked)."""
    from .checkpoints import LOG_FILE, list_checkpoints

    for p in list_checkpoints(run_dir):
        shutil.rmtree(p)
    (run_dir / LOG_FILE).unlink(missing_ok=True)


def progress(bar):
    def callback(e):
        if e["event"] == "step":
            bar.update(1)
            bar.set_postfix(loss=f"{e['loss']:.4f}", tok_s=f"{e['tok_s']:.0f}", lr=f"{e['lr']:.1e}")
        elif e["event"] == "eval":
            bar.write(f"step {e['step']}: held-out loss {e['eval_loss']:.4f}")
        elif e["event"] == "checkpoint":
            bar.write(f"checkpoint {e['path']}")

    return callback


@click.command(context_settings=CONTEXT)
@click.option(
    "--model",
    "model_path",
    required=True,
    help="converted MLX model dir (or HF T5 dir / hub id); "
    "not quantized (convert without -q, quantize after uptraining)",
)
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="checkpoints and log.jsonl")
@click.option(
    "--data",
    "sources",
    multiple=True,
    required=True,
    help="span: .jsonl/.txt files, dirs, globs or hf:NAME[:CONFIG][@SPLIT]; supervised: .jsonl files, "
    "dirs (every *.jsonl inside) or globs; repeatable",
)
@click.option(
    "--stream",
    is_flag=True,
    help="span: read the corpus lazily (hf: through datasets streaming), each process its own documents; "
    "memory does not grow with the corpus; held out: the first --eval-examples windows",
)
@click.option("--eval-data", "eval_sources", multiple=True, help="held-out data (default: split off --eval-fraction)")
@click.option(
    "--objective",
    type=click.Choice(["span", "supervised"]),
    default="span",
    show_default=True,
    help="T5 span corruption (density 0.15, mean span 3) or document -> summary fine-tuning",
)
@click.option("--eval-fraction", default=0.05, show_default=True, help="documents held out when no --eval-data")
@click.option("--eval-examples", default=256, show_default=True, help="at most this many held-out windows/pairs")
@click.option("--input-length", default=128, show_default=True, help="span corruption: encoder length after corruption")
@click.option(
    "--source-field",
    "--text-field",
    "source_field",
    default="document",
    show_default=True,
    help="JSONL (or hf: column) field holding the text (span) or the source (supervised)",
)
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
@click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine", "rsqrt", "linear"]),
    default="constant",
    show_default=True,
    help="after the linear warm-up",
)
@click.option(
    "--schedule-steps",
    type=int,
    default=None,
    help="cosine/linear: steps the decay spans (default: the run's steps); keep it when resuming "
    "with more --steps, so the schedule does not change",
)
@click.option("--warmup", default=0, show_default=True, help="linear warm-up steps")
@click.option("--min-lr-ratio", default=0.0, show_default=True, help="cosine/linear floor, as a fraction of --lr")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--clip-grad-norm", type=float, default=None)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="weights and compute (float32 is much faster on the Linux CPU backend)",
)
@click.option(
    "--teacher",
    default=None,
    help="distil from this model (usually the multi-head source of the conversion: directory or hub id); "
    "its vocabulary and tokenizer must be the student's",
)
@click.option("--kd-weight", type=float, default=None, help="weight w of the KL term [with --teacher: 0.5]")
@click.option("--kd-temperature", type=float, default=1.0, show_default=True, help="softmax temperature T")
@click.option(
    "--teacher-dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default=None,
    help="the teacher's weights (bfloat16 halves its memory) [--dtype]",
)
@click.option("--seed", default=0, show_default=True, help="data order and span-corruption noise")
@click.option("--eval-every", default=0, show_default=True, help="steps between held-out evaluations (0: end only)")
@click.option("--save-every", default=100, show_default=True, help="steps between checkpoints (0: end only)")
@click.option("--keep", default=2, show_default=True, help="checkpoints kept")
@click.option("--resume", is_flag=True, help="continue from the newest checkpoint in --run-dir")
@click.option(
    "--overwrite", is_flag=True, help="delete --run-dir's checkpoints and start over; replace an existing --output"
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="also write the final model (no optimizer state) here",
)
def main(**options):
    """Continue training a converted T5 (GQA uptraining, Ainslie et al. 2023)."""
    try:
        run(options)
    except MlxMqaError as e:
        fail(e)


def load_teacher(o: dict, student, tokenizer):
    """The teacher, checked against the student before any data is read or any step runs."""
    from ..checkpoint.load import load
    from .distill import check_teacher

    say(f"loading teacher {o['teacher']}")
    teacher, teacher_tokenizer = load(o["teacher"], dtype=o["teacher_dtype"] or o["dtype"])
    check_teacher(teacher, student, teacher_tokenizer, tokenizer)
    return teacher


def say(*args, **kwargs):
    """Rank 0 speaks (and writes); the other processes of an `mlx.launch` run are silent."""
    import mlx.core as mx

    if mx.distributed.init().rank() == 0:
        click.echo(*args, **kwargs)


def run(o: dict) -> None:
    import mlx.core as mx
    from tqdm import tqdm

    from ..checkpoint.load import load
    from .config import TrainConfig
    from .run_data import run_data
    from .trainer import Trainer, check_trainable

    total = steps_from(o["steps"], o["alpha"], o["pretrain_steps"])
    if o["stream"] and o["objective"] != "span":
        raise ConfigError("--stream reads span-corruption corpora; supervised pairs are read into memory")
    cfg = TrainConfig(
        steps=total,
        batch_size=o["batch_size"],
        grad_accum=o["grad_accum"],
        optimizer=o["optimizer"],
        lr=o["lr"],
        schedule=o["schedule"],
        warmup_steps=o["warmup"],
        total_steps_for_schedule=o["schedule_steps"],
        min_lr_ratio=o["min_lr_ratio"],
        weight_decay=o["weight_decay"],
        clip_grad_norm=o["clip_grad_norm"],
        dtype=o["dtype"],
        seed=o["seed"],
        eval_every=o["eval_every"],
        save_every=o["save_every"],
        keep_checkpoints=o["keep"],
        kd_weight=o["kd_weight"] if o["kd_weight"] is not None else (0.5 if o["teacher"] else 0.0),
        kd_temperature=o["kd_temperature"],
    )
    cfg.validate()
    check_data_options(o)
    run_dir = Path(o["run_dir"])
    check_places(o, run_dir)

    say(f"loading {o['model_path']}")
    model, tokenizer = load(o["model_path"], dtype=o["dtype"])
    check_trainable(model)
    teacher = load_teacher(o, model, tokenizer) if o["teacher"] else None
    data, eval_batches, desc = run_data(tokenizer, o)
    say(f"data: {desc}")
    if o["overwrite"] and mx.distributed.init().rank() == 0:
        clear_run_dir(run_dir)
    trainer = Trainer(
        model,
        data,
        cfg,
        run_dir,
        tokenizer=tokenizer,
        eval_batches=eval_batches,
        extra_state={"source_model": str(o["model_path"]), "objective": o["objective"], "teacher": o["teacher"]},
        teacher=teacher,
    )
    if o["resume"]:
        restored = trainer.resume()
        say(
            f"resumed from {restored} (step {trainer.step})"
            if restored
            else f"no checkpoint in {run_dir}; starting at step 0"
        )
    with tqdm(total=total, initial=trainer.step, unit="step", dynamic_ncols=True, disable=trainer.rank != 0) as bar:
        trainer.callback = progress(bar)
        summary = train_interruptibly(trainer, bar, run_dir)
    if trainer.rank == 0:
        finish(summary, total, run_dir, o)


def train_interruptibly(trainer, bar, run_dir: Path) -> dict:
    """trainer.train(); the first Ctrl-C checkpoints after the current step, a second one quits at once."""
    from .checkpoints import list_checkpoints

    def on_sigint(signum, frame):
        if trainer.stopping:
            raise KeyboardInterrupt
        trainer.request_stop()
        bar.write("interrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        return trainer.train()
    except KeyboardInterrupt:
        bar.close()
        last = list_checkpoints(run_dir)
        say(
            f"interrupted; last complete checkpoint: {last[-1] if last else 'none'}. Rerun with --resume to continue.",
            err=True,
        )
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, old)


def finish(summary: dict, total: int, run_dir: Path, o: dict) -> None:
    from .checkpoints import export_model, list_checkpoints

    ev = summary["eval"]
    say(
        f"step {summary['step']}/{total}: train loss {summary['final_loss']:.4f}"
        + (f", held-out loss {ev['eval_loss']:.4f}" if ev else "")
        + f", {summary['tokens_per_s']:.0f} tokens/s"
    )
    if summary["stopped"]:
        say(f"stopped early; rerun with --resume to continue from step {summary['step']}")
        sys.exit(130)
    final = list_checkpoints(run_dir)[-1]
    if o["output"]:
        sources = [Path(p) for p in (o["model_path"], o["teacher"]) if p and Path(p).exists()]
        export_model(final, Path(o["output"]), overwrite=o["overwrite"], protect=[*sources, run_dir])
        say(f"model written to {o['output']}")
    say(f"final checkpoint: {final} (loads with mlx_mqa.load)")
