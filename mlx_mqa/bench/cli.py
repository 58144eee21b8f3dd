"""The command `python bench.py` (or `python -m mlx_mqa.bench`)."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Optional

import click

from ..cli import CONTEXT, calibration_options, fail, lengths_pair, parse_size
from ..conversion import GROUPINGS
from ..errors import MlxMqaError
from . import report
from .config import DEFAULT_QUALITY_LENGTHS, PRESETS, BenchConfig
from .data import HUB_DATASETS
from .run import run
from .speed import parse_ints, parse_lengths
from .variants import parse_pools


def _pair(lengths) -> str:
    return "{}x{}".format(*lengths)


QUALITY_LENGTHS_HELP = (
    "INPUTxOUTPUT for generation (input truncated). Default: each dataset's paper setting ("
    + ", ".join(f"{name} {_pair(d.lengths)}" for name, d in HUB_DATASETS.items())
    + f"), {_pair(DEFAULT_QUALITY_LENGTHS)} for --data files, {PRESETS['quick']['quality_lengths']} for the quick "
    "preset's bundled demo."
)
POOL_HELP = (
    "Comma list of conversion methods: mean (the paper), first, random, or fit, svd, svd-q (from calibration "
    "data), e.g. mean,fit,svd. Every method has mean's shapes, so only the mean variants are timed."
)
opt = functools.partial(click.option, show_default=True)
flag = lambda name, help: opt(f"--{name}/--no-{name}", default=True, help=help)  # noqa: E731
choice = lambda *names: click.Choice(names)  # noqa: E731
MODEL_HELP = (
    "Multi-head T5: hub id, local Hugging Face directory, or random:<shape> (t5-small, t5-base, flan-t5-*, ...)."
)
GROUPING_HELP = "Which query heads share a K/V head: contiguous (the paper) or similar (by calibration error)."
PRESET_HELP = (
    "quick: speed at 256x32, batch 1 and 4, 6 bundled CNN/DailyMail examples. paper: speed at 512x256 and "
    "2048x512; cnn_dailymail, arxiv, pubmed from the hub. Explicit options override it."
)


@click.command(context_settings=CONTEXT)
@opt("--model", default="random:t5-small", help=MODEL_HELP)
@opt("--layers", type=int, help="random:<shape> only: encoder and decoder layers (offline demo: 2).")
@opt("--kv-heads", help="Comma list of K/V head counts (H or mha, 1 or mqa), e.g. H,4,1. [H, ~H/3, 1]")
@opt("--pool", default="mean", help=POOL_HELP)
@opt("--grouping", metavar="[" + "|".join(GROUPINGS) + "]", default="contiguous", help=GROUPING_HELP)
@calibration_options
@opt("--quantize", help="Also quantized MLX copies of every variant at these bits, e.g. 8,4.")
@opt("--q-group-size", type=choice("32", "64", "128"), default="64")
@opt("--dtype", type=choice("float32", "bfloat16", "float16"), help="MLX and PyTorch. [float32 on CPU, else bfloat16]")
@opt("--preset", type=choice(*PRESETS), default="quick", help=PRESET_HELP)
@opt("--batch-sizes", help="Comma list of batch sizes for the speed sweep [preset].")
@opt("--lengths", help="Speed INPUTxOUTPUT lengths, comma list, e.g. 512x64,2048x64; EOS ignored [preset].")
@opt("--warmup", type=int, default=1, help="Untimed runs per variant and setting.")
@opt("--repeats", type=int, default=3, help="Timed runs, interleaved across variants.")
@opt("--memory-budget", metavar="SIZE", help="E.g. 6GB: each timed variant's largest batch that fits (fresh process).")
@flag("speed", "Run the speed sweep.")
@flag("quality", "Run generation + ROUGE (pip install 'mlx-mqa[bench]').")
@opt("--dataset", help="Comma list: cnn_dailymail, arxiv, pubmed, xsum (hub), or bundled:<name> [preset].")
@opt(
    "--data",
    "data_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="JSON Lines file with id, document, summary (repeatable); replaces the preset's --dataset.",
)
@opt("--split", default="test", help="Hub dataset split.")
@opt("--limit", type=int, help="Examples per dataset (quick preset: 6; paper: all).")
@opt("--prefix", default="summarize: ", help="Task prefix put before every document.")
@opt("--quality-lengths", help=QUALITY_LENGTHS_HELP)
@opt("--quality-batch-size", type=int, default=8)
@opt("--num-beams", default="1", help="Beam width(s) of the quality runs, e.g. 1,4.")
@opt("--bootstrap", type=int, default=1000, help="Bootstrap resamples for 95% intervals.")
@opt("--torch/--no-torch", "use_torch", default=True, help="Run the PyTorch reference.")
@opt("--torch-device", type=choice("auto", "cpu", "cuda", "mps"), default="auto", help="auto: mps > cuda > cpu.")
@opt(
    "--torch-quality",
    type=choice("all", "mha", "none"),
    default="all",
    help="PyTorch quality references: one per --kv-heads value (group-mean K/V), only MHA, or none.",
)
@opt(
    "--decode",
    "decode_path",
    type=choice("auto", "eager", "compiled"),
    default="auto",
    help="MLX decode loop of the speed runs (auto: the library's default); speed.csv's decode_step says which ran.",
)
@opt("--seed", type=int, default=0, help="Random weights and random speed inputs.")
@opt("--out", metavar="DIRECTORY", help="Output directory [results/bench-YYYYmmdd-HHMMSS].")
@opt(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Cache of random checkpoints and conversions [$MLX_MQA_CACHE, else ~/.cache/mlx_mqa].",
)
@flag("plots", "Figures (needs matplotlib).")
@flag("progress", "Progress bars on stderr.")
def main(**opts):
    """Benchmark T5 with multi-head, grouped-query and multi-query attention (Ainslie et al. 2023).

    One multi-head checkpoint is converted (cached) to every --kv-heads value and compared with the PyTorch
    reference: speed, memory and the memory-traffic model's predicted speedup; ROUGE with bootstrap intervals.
    Without arguments it runs offline in minutes on a small random-weight T5 (ROUGE is then meaningless).
    docs/bench/README.md has the details.

    \b
    Examples:
      python bench.py                      # or: python -m mlx_mqa.bench
      python bench.py --model google/t5-base --dataset cnn_dailymail --limit 200 --quantize 8,4
      python bench.py --model ./t5-dir --data articles.jsonl --pool mean,fit,svd-q --no-speed
      python bench.py --model random:t5-base --kv-heads 12,4,1 --memory-budget 6GB --no-speed --no-quality
    """
    cfg = None
    try:
        cfg = build_config(click.get_current_context(), opts)
        started = time.perf_counter()
        res = run(cfg, log=lambda m: click.echo(f"[bench] {m}", err=True))
    except (ValueError, MlxMqaError) as e:
        fail(e)
    except KeyboardInterrupt:
        interrupted(cfg)
    click.echo(report.summary(res))
    click.echo(f"\nwrote {cfg.out}/: " + ", ".join(v for v in res["files"].values() if isinstance(v, str)))
    click.echo(f"total {time.perf_counter() - started:.0f} s")
    if res["model"]["provenance"]["kind"] == "random":
        click.echo("\n" + report.REAL_CHECKPOINT_HINT)


def command_line(ctx: click.Context) -> str:
    """How this run was started, for results.json: `python bench.py ...` or `python -m mlx_mqa.bench ...`."""
    prog = ctx.info_name or "bench.py"
    return " ".join([prog if prog.startswith("python") else f"python {prog}", *sys.argv[1:]])


def build_config(ctx: click.Context, o: dict) -> BenchConfig:
    """The run's settings: the preset's values where no option was given explicitly."""
    p = PRESETS[o["preset"]]
    layers = o["layers"]
    # The offline demo shrinks its default model; a --model given explicitly keeps its real depth.
    model_given = ctx.get_parameter_source("model") == click.core.ParameterSource.COMMANDLINE
    if layers is None and o["preset"] == "quick" and o["model"] == "random:t5-small" and not model_given:
        layers = 2
    # The preset's data (and its generation lengths) unless --dataset or --data names other data.
    preset_data = o["dataset"] is None and not o["data_files"]
    datasets = [d.strip() for d in (p["datasets"] if preset_data else o["dataset"] or "").split(",") if d.strip()]
    ql = o["quality_lengths"] or (p["quality_lengths"] if preset_data else None)
    same = """model seed kv_heads grouping calibration calibration_samples dtype torch_device torch_quality warmup
    repeats speed quality split prefix quality_batch_size bootstrap decode_path cache_dir plots progress""".split()
    return BenchConfig(
        **{k: o[k] for k in same},
        layers=layers,
        quantize=parse_ints(o["quantize"], "--quantize") if o["quantize"] else (),
        q_group_size=int(o["q_group_size"]),
        pool=parse_pools(o["pool"]),
        calibration_lengths=lengths_pair(o["calibration_lengths"]),
        torch=o["use_torch"],
        batch_sizes=parse_ints(o["batch_sizes"] or p["batch_sizes"], "--batch-sizes"),
        lengths=parse_lengths(o["lengths"] or p["lengths"]),
        memory_budget=parse_size(o["memory_budget"]) if o["memory_budget"] else None,
        datasets=datasets,
        data_files=list(o["data_files"]),
        limit=o["limit"] if o["limit"] is not None else p["limit"],
        quality_lengths=parse_lengths(ql)[0] if ql else None,
        num_beams=parse_ints(o["num_beams"], "--num-beams"),
        out=o["out"] or time.strftime("results/bench-%Y%m%d-%H%M%S"),
        command=command_line(ctx),
    )


def interrupted(cfg: Optional[BenchConfig]):
    """Ctrl-C: say where the settings finished so far are (results.json is written after each one)."""
    saved = Path(cfg.out) / "results.json" if cfg is not None else None
    where = f'; the settings finished so far are in {saved} ("complete": false)' if saved and saved.exists() else ""
    click.echo("interrupted" + where, err=True)
    raise SystemExit(130)


if __name__ == "__main__":
    main()
