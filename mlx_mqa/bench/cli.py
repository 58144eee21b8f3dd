"""`python -m mlx_mqa.bench` (and `python bench.py`): speed, memory and ROUGE of MHA vs GQA vs MQA T5 in MLX,
side by side with the PyTorch reference."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import click

from ..cli import CONTEXT, calibration_options, fail, lengths_pair
from ..conversion import GROUPINGS
from ..errors import MlxMqaError
from . import report
from .config import DEFAULT_QUALITY_LENGTHS, PRESETS, QUANTIZE_BITS, BenchConfig
from .data import HUB_DATASETS
from .research.budget import parse_size
from .run import run
from .speed import parse_ints, parse_lengths
from .variants import check_methods, parse_pools


def _pair(lengths) -> str:
    return "{}x{}".format(*lengths)


QUALITY_LENGTHS_HELP = (
    "INPUTxOUTPUT for generation (input truncated). Default: each dataset's paper setting ("
    + ", ".join(f"{name} {_pair(d.lengths)}" for name, d in HUB_DATASETS.items())
    + f"), {_pair(DEFAULT_QUALITY_LENGTHS)} for --data files; the quick preset's bundled demo (neither --dataset "
    f"nor --data given): {PRESETS['quick']['quality_lengths']}."
)


@click.command(context_settings=CONTEXT)
@click.option(
    "--model",
    default="random:t5-small",
    show_default=True,
    help="Multi-head T5 checkpoint: hub id (google/t5-base), local Hugging Face directory, or "
    "random:<shape> for deterministic random weights of a real shape "
    "(t5-small, t5-base, t5-large, flan-t5-*, t5-v1_1-large, t5-large-lm-adapt).",
)
@click.option(
    "--layers",
    type=int,
    default=None,
    help="random:<shape> only: encoder and decoder layers (default: the shape's; 2 for the offline demo "
    "run without --model).",
)
@click.option(
    "--kv-heads",
    default=None,
    help="Comma list of K/V head counts G to convert to (H or mha = multi-head, 1 or mqa = multi-query), "
    "e.g. H,4,1 or 16,8,4,1. Default: H, the divisor nearest H/3, 1.",
)
@click.option(
    "--pool",
    default="mean",
    show_default=True,
    help="Comma list of conversion methods to compare, e.g. mean,fit,svd: mean (the paper), first, random, or "
    "fit, svd, svd-q (merged from calibration data; see python -m mlx_mqa.convert --help). Every GQA/MQA "
    "variant is converted by each (MHA once), named e.g. GQA-2 fit. Every method gives the shapes of mean "
    "pooling, hence its speed, so only the mean variants are timed (the first pool when mean is not listed); "
    "PyTorch token references (group-mean K/V) are for mean variants in contiguous groups only.",
)
@click.option(
    "--grouping",
    metavar="[" + "|".join(GROUPINGS) + "]",
    default="contiguous",
    show_default=True,
    help="Which query heads share a K/V head, for every --pool: contiguous groups (the paper), or the groups "
    "of most similar heads by calibration error (named e.g. MQA svd-q similar; not with random).",
)
@calibration_options
@click.option(
    "--quantize",
    default="",
    help="Also benchmark quantized MLX copies of every --kv-heads variant at these bit widths, e.g. 8,4.",
)
@click.option(
    "--q-group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Quantization group size.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Weights and activations, MLX and PyTorch alike. Default: float32 on CPU, bfloat16 on a GPU.",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="quick",
    show_default=True,
    help="quick: speed at 256->32, batch 1 and 4, and 6 bundled CNN/DailyMail examples at 512->32. "
    "paper: speed at 512->256 and 2048->512, quality on cnn_dailymail (512->256), arxiv and "
    "pubmed (2048->512) from the hub, greedy. "
    "Options given explicitly override the preset.",
)
@click.option("--batch-sizes", default=None, help="Comma list of batch sizes for the speed sweep [preset].")
@click.option(
    "--lengths",
    default=None,
    help="Speed sweep INPUTxOUTPUT token lengths, comma list, e.g. "
    "512x64,2048x64. Output length is forced (EOS ignored) [preset].",
)
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs per variant and setting.")
@click.option(
    "--repeats",
    type=int,
    default=3,
    show_default=True,
    help="Timed runs per variant and setting, interleaved across variants; medians with min-max.",
)
@click.option(
    "--memory-budget",
    default=None,
    metavar="SIZE",
    help="E.g. 6GB: for MHA, every timed GQA/MQA variant and PyTorch's MHA, find the largest batch whose peak "
    "memory (measured in a fresh process: weights, K/V, workspace) fits, at the first --lengths, and report "
    "tokens/s at it, with a plot. Exit code 5 when batch 1 does not fit; the message names the minimum.",
)
@click.option("--speed/--no-speed", default=True, show_default=True, help="Run the speed sweep.")
@click.option(
    "--quality/--no-quality",
    default=True,
    show_default=True,
    help="Run generation + ROUGE (needs rouge-score and nltk: pip install 'mlx-mqa[bench]').",
)
@click.option(
    "--dataset",
    default=None,
    help="Comma list: cnn_dailymail, arxiv, pubmed, xsum (streamed from the hub), or bundled:<name> for "
    "the few real examples shipped with mlx_mqa (offline) [preset].",
)
@click.option(
    "--data",
    "data_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Local JSON Lines file with fields id, document, summary (repeatable); replaces the preset's "
    "--dataset unless --dataset is also given.",
)
@click.option("--split", default="test", show_default=True, help="Hub dataset split.")
@click.option("--limit", type=int, default=None, help="Examples per dataset (quick preset: 6; paper: all).")
@click.option("--prefix", default="summarize: ", show_default=True, help="Task prefix put before every document.")
@click.option(
    "--quality-lengths",
    default=None,
    help=QUALITY_LENGTHS_HELP,
)
@click.option("--quality-batch-size", type=int, default=8, show_default=True)
@click.option(
    "--num-beams",
    default="1",
    show_default=True,
    help="Beam width(s) for the quality runs, comma list: e.g. 1,4 runs greedy and 4-beam search on the "
    "same examples (time per sample and ROUGE of each); speed runs are always greedy.",
)
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for 95% intervals.")
@click.option(
    "--torch/--no-torch",
    "use_torch",
    default=True,
    show_default=True,
    help="Run the PyTorch reference (needs torch: pip install 'mlx-mqa[torch]').",
)
@click.option(
    "--torch-device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="auto: mps > cuda > cpu.",
)
@click.option(
    "--torch-quality",
    type=click.Choice(["all", "mha", "none"]),
    default="all",
    show_default=True,
    help="PyTorch quality references: one per --kv-heads value (group-mean K/V repeated; the token reference "
    "of mean variants in contiguous groups), only MHA, none.",
)
@click.option(
    "--decode",
    "decode_path",
    type=click.Choice(["auto", "eager", "compiled"]),
    default="auto",
    show_default=True,
    help="MLX decode loop for speed runs: auto (the library's default: the compiled step, or on CPU the eager "
    "one where the C attention kernel reads a large cross K/V), compiled (fixed-capacity cache) or eager "
    "(model.decode + KVCache). speed.csv's decode_step says which ran.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random weights and random speed inputs.")
@click.option(
    "--out",
    metavar="DIRECTORY",
    default=None,
    help="Output directory [results/bench-YYYYmmdd-HHMMSS]; checked before any work.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Random checkpoints and conversions are cached here [$MLX_MQA_CACHE, else "
    "$XDG_CACHE_HOME/mlx_mqa, else ~/.cache/mlx_mqa].",
)
@click.option(
    "--plots/--no-plots",
    default=True,
    show_default=True,
    help="Figures (matplotlib; without it they are skipped with a note).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def main(**opts):
    """Benchmark T5 with multi-head, grouped-query and multi-query attention (Ainslie et al. 2023).

    One multi-head checkpoint is converted (mean-pooled K/V, or by each --pool method; cached) to every
    --kv-heads value and compared with the PyTorch reference (transformers, same dtype, inputs and greedy
    settings; for a GQA variant the reference is the MHA model with group-mean K/V repeated, so its ROUGE
    is comparable and its cost is the MHA cost). Speed: encoder time, decoder time per step, time per sample, tokens/s,
    peak memory, KV-cache bytes, and the decode speedup predicted by a memory-traffic model. Quality:
    ROUGE-1/2/L/Lsum F1 with bootstrap 95% intervals; predictions saved per example.

    With no arguments it runs offline in a few minutes: a small random-weight T5 (t5-small shape, 2
    layers), MHA vs GQA-2 vs MQA vs PyTorch, on 6 bundled real CNN/DailyMail examples. ROUGE of random
    weights is meaningless; the point is speed, and that MLX MHA gives PyTorch's tokens.

    \b
    Examples:
      python bench.py                      # or: python -m mlx_mqa.bench
      python bench.py --model random:t5-base --kv-heads 12,4,1 --batch-sizes 1,8,16 --lengths 2048x64 \\
          --repeats 1 --no-quality
      python bench.py --model google/t5-base --dataset cnn_dailymail --limit 200 --quantize 8,4
      python bench.py --model ./t5-dir --data articles.jsonl --quality-lengths 1024x128 --no-speed
      python bench.py --model ./t5-dir --data articles.jsonl --pool mean,fit,svd-q --no-speed
      python bench.py --model random:t5-base --kv-heads 12,4,1 --lengths 2048x128 --memory-budget 6GB \\
          --no-speed --no-quality
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
    pools = parse_pools(o["pool"])
    check_methods(pools, o["grouping"])
    quantize = parse_ints(o["quantize"], "--quantize") if o["quantize"] else ()
    if any(b not in QUANTIZE_BITS for b in quantize):
        raise click.BadParameter(
            f"bit widths must be among {', '.join(map(str, QUANTIZE_BITS))}", param_hint="--quantize"
        )
    same = """model seed kv_heads grouping calibration calibration_samples dtype torch_device torch_quality warmup
    repeats speed quality split prefix quality_batch_size bootstrap decode_path cache_dir plots progress""".split()
    return BenchConfig(
        **{k: o[k] for k in same},
        layers=layers,
        quantize=quantize,
        q_group_size=int(o["q_group_size"]),
        pool=pools,
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
