"""`python -m mlx_mqa.convert`: a multi-head Hugging Face T5 checkpoint to MLX with G K/V heads."""

from __future__ import annotations

import click

from .cli import CONTEXT, fail
from .conversion import GROUPS_IN, POOL_METHODS, convert
from .errors import MlxMqaError
from .models.dtypes import DTYPES, default_dtype


@click.command(context_settings=CONTEXT)
@click.option(
    "--hf-path",
    required=True,
    help="Hub id (e.g. google/t5-large-lm-adapt) or local directory "
    "with config.json and *.safetensors or pytorch_model*.bin (sharded or not).",
)
@click.option("--mlx-path", default="mlx_model", show_default=True, help="Output directory (written atomically).")
@click.option(
    "--kv-heads",
    type=int,
    default=None,
    help="Key/value heads G of the converted attention. "
    "Must divide the number of heads H; 1 = multi-query, H (default) = multi-head.",
)
@click.option(
    "--pool",
    type=click.Choice(POOL_METHODS),
    default="mean",
    show_default=True,
    help="How each group of H/G heads becomes one: mean (the paper's method), first head of the "
    "group, or random re-initialisation (ablations).",
)
@click.option(
    "--groups-in",
    type=click.Choice(GROUPS_IN),
    default="decoder",
    show_default=True,
    help="decoder: pool decoder self- and cross-attention, encoder stays multi-head (as the paper); "
    "all: pool the encoder too.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Weight dtype. Default: bfloat16 on Metal/CUDA, float32 on CPU. "
    "float16 keeps the FFN output projection (wo) in float32 to avoid overflow.",
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
    """Convert a Hugging Face T5 / T5 v1.1 / LM-adapt / Flan-T5 checkpoint to MLX, pooling the decoder's
    key/value heads into G groups (Ainslie et al. 2023, "GQA").

    The output directory holds the weights (model.safetensors, or shards with an index over 5 GB),
    config.json with a `conversion` record, the tokenizer and a model card (README.md).

    \b
    Examples:
      python -m mlx_mqa.convert --hf-path google/t5-large-lm-adapt --mlx-path t5l-mqa --kv-heads 1
      python -m mlx_mqa.convert --hf-path ./flan-t5-small --mlx-path flan-gqa2 --kv-heads 2 --dtype bfloat16
    """
    try:
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
            progress=lambda m: click.echo(f"[convert] {m}", err=True),
        )
    except MlxMqaError as e:
        fail(e)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        raise SystemExit(130)
    click.echo(f"saved {out}")


if __name__ == "__main__":
    main()
