"""`python -m mlx_mqa.convert`: a multi-head Hugging Face T5 checkpoint to MLX with G K/V heads."""

from __future__ import annotations

import sys

import click

from .cli import CONTEXT, calibration_options, fail, lengths_pair
from .conversion import GROUPINGS, GROUPS_IN, METHODS, Calibration, convert
from .conversion.refine import DEFAULT_LR, DEFAULT_PARAMS, REFINE_PARAMS
from .errors import MlxMqaError
from .models.dtypes import DTYPES, default_dtype

POOL_HELP = (
    "How each group of H/G heads becomes one K/V head. mean: the paper's mean pooling; first / random: its "
    "ablations; fit: closed-form fit to calibration data (query-weighted keys, output-weighted values); svd: "
    "SVD of the group's calibrated keys/values with per-head maps folded into q and o (Yu et al. 2024); "
    "svd-q: the same, whitened by query and output statistics. See docs/conversion.md."
)


def _bar(total, desc):
    from tqdm.auto import tqdm

    unit = "step" if desc == "refine" else "sample"
    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=False, dynamic_ncols=True)


@click.command(context_settings=CONTEXT)
@click.option(
    "--hf-path",
    required=True,
    help="Hub id (e.g. google/t5-large-lm-adapt) or local directory with "
    "config.json and *.safetensors or pytorch_model*.bin (sharded or not).",
)
@click.option("--mlx-path", default="mlx_model", show_default=True, help="Output directory (written atomically).")
@click.option(
    "--kv-heads",
    type=int,
    default=None,
    help="Key/value heads G of the converted attention. Must divide "
    "the number of heads H; 1 = multi-query, H (default) = multi-head.",
)
@click.option("--pool", type=click.Choice(METHODS), default="mean", show_default=True, help=POOL_HELP)
@click.option(
    "--grouping",
    type=click.Choice(GROUPINGS),
    default="contiguous",
    show_default=True,
    help="Which query heads share a K/V head: contiguous groups (the paper), or the groups of most similar "
    "heads by the merge's calibration error (a per-layer head permutation, recorded in config.json).",
)
@calibration_options
@click.option(
    "--calibration-prefix",
    default="summarize: ",
    show_default=True,
    help="Task prefix put before each calibration document that has a summary.",
)
@click.option(
    "--refine",
    "refine_steps",
    type=int,
    default=0,
    show_default=True,
    help="After the merge, distil the converted model toward the multi-head one for this many steps on the "
    "calibration text (--calibration, bundled by default, whatever --pool is): KL per target token, Adam; the "
    "best weights by calibration KL are kept, never worse than the merge; KL before/after in config.json. "
    "Skipped when G = H. Runs in float32 before any -q quantization.",
)
@click.option(
    "--refine-params",
    type=click.Choice(REFINE_PARAMS),
    default=DEFAULT_PARAMS,
    show_default=True,
    help="What --refine trains: the decoder's attention projections, those and the decoder's layer norms, or all.",
)
@click.option(
    "--refine-lr", type=float, default=DEFAULT_LR, show_default=True, help="Peak Adam learning rate of --refine."
)
@click.option(
    "--groups-in",
    type=click.Choice(GROUPS_IN),
    default="decoder",
    show_default=True,
    help="decoder: group decoder self- and cross-attention, the encoder stays multi-head (as the paper); "
    "all: the encoder too (mean/first/random only).",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Weight dtype. Default: bfloat16 on "
    "Metal/CUDA, float32 on CPU. float16 keeps the FFN output projection (wo) in float32 to avoid overflow.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --pool random.")
@click.option("--tokenizer", "tokenizer_path", default=None, help="Take tokenizer files from here instead.")
@click.option("-q", "--quantize", is_flag=True, help="Quantize linear and embedding weights (mlx.nn.quantize).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Bits per weight.")
@click.option(
    "--q-group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Weights sharing one scale and bias.",
)
@click.option(
    "--upload-repo",
    default=None,
    help="Also upload the result to this Hugging Face Hub repository (needs a token: `huggingface-cli login`).",
)
@click.option("--overwrite", is_flag=True, help="Replace --mlx-path if it exists (only once the new one is complete).")
def main(
    hf_path,
    mlx_path,
    kv_heads,
    pool,
    grouping,
    calibration,
    calibration_samples,
    calibration_lengths,
    calibration_prefix,
    refine_steps,
    refine_params,
    refine_lr,
    groups_in,
    dtype,
    seed,
    tokenizer_path,
    quantize,
    q_bits,
    q_group_size,
    upload_repo,
    overwrite,
):
    """Convert a Hugging Face T5 / T5 v1.1 / LM-adapt / Flan-T5 checkpoint to MLX, grouping the decoder's
    key/value heads into G heads (Ainslie et al. 2023, "GQA").

    The output directory holds the weights (model.safetensors, or shards with an index over 5 GB),
    config.json with a `conversion` record, the tokenizer and a model card (README.md).

    \b
    Examples:
      python -m mlx_mqa.convert --hf-path google/t5-large-lm-adapt --mlx-path t5l-mqa --kv-heads 1
      python -m mlx_mqa.convert --hf-path ./flan-t5-small --mlx-path flan-gqa2 --kv-heads 2 --dtype bfloat16
      python -m mlx_mqa.convert --hf-path google/flan-t5-base --mlx-path fb-mqa --kv-heads 1 --pool fit \\
          --grouping similar --calibration articles.jsonl --calibration-samples 256
    """
    try:
        cal = Calibration(
            calibration, calibration_samples, *lengths_pair(calibration_lengths), prefix=calibration_prefix
        )
        out = convert(
            hf_path,
            mlx_path,
            kv_heads=kv_heads,
            pool=pool,
            groups_in=groups_in,
            dtype=dtype or default_dtype(),
            seed=seed,
            tokenizer_path=tokenizer_path,
            overwrite=overwrite,
            quantize=quantize,
            q_bits=int(q_bits),
            q_group_size=int(q_group_size),
            upload_repo=upload_repo,
            grouping=grouping,
            calibration=cal,
            progress=lambda m: click.echo(f"[convert] {m}", err=True),
            bar=_bar,
            refine_steps=refine_steps,
            refine_params=refine_params,
            refine_lr=refine_lr,
        )
    except MlxMqaError as e:
        fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        raise SystemExit(130)
    click.echo(f"saved {out}")


if __name__ == "__main__":
    main()
