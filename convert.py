#!/usr/bin/env python
"""Convert a multi-head Hugging Face T5 checkpoint to MLX with G pooled key/value heads."""

import click

from mlx_mqa.convert import DTYPES, GROUPS_IN, POOL_METHODS, convert, default_dtype
from mlx_mqa.errors import MlxMqaError


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--hf-path", required=True, help="Hub id (e.g. google/t5-large-lm-adapt) or local directory "
              "with config.json and *.safetensors or pytorch_model*.bin (sharded or not).")
@click.option("--mlx-path", default="mlx_model", show_default=True, help="Output directory (written atomically).")
@click.option("--kv-heads", type=int, default=None, help="Key/value heads G of the converted attention. "
              "Must divide the number of heads H; 1 = multi-query, H (default) = multi-head.")
@click.option("--pool", type=click.Choice(POOL_METHODS), default="mean", show_default=True,
              help="How each group of H/G heads becomes one: mean (the paper's method), first head of the "
              "group, or random re-initialisation (ablations).")
@click.option("--groups-in", type=click.Choice(GROUPS_IN), default="decoder", show_default=True,
              help="decoder: pool decoder self- and cross-attention, encoder stays multi-head (as the paper); "
              "all: pool the encoder too.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help=f"Weight dtype. Default: bfloat16 on Metal/CUDA, float32 on CPU (here: {default_dtype()}). "
              "float16 keeps the FFN output projection (wo) in float32 to avoid overflow.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --pool random.")
@click.option("--tokenizer", "tokenizer_path", default=None, help="Take tokenizer files from here instead.")
@click.option("-q", "--quantize", is_flag=True, help="Quantize linear and embedding weights (mlx.nn.quantize).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Bits per weight.")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@click.option("--overwrite", is_flag=True, help="Replace --mlx-path if it exists (only once the new one is complete).")
def main(hf_path, mlx_path, kv_heads, pool, groups_in, dtype, seed, tokenizer_path, quantize, q_bits, q_group_size,
         overwrite):
    """Convert a Hugging Face T5 / T5 v1.1 / LM-adapt / Flan-T5 checkpoint to MLX, pooling the decoder's
    key/value heads into G groups (Ainslie et al. 2023, "GQA").

    \b
    Examples:
      python convert.py --hf-path google/t5-large-lm-adapt --mlx-path t5l-mqa --kv-heads 1
      python convert.py --hf-path ./flan-t5-small --mlx-path flan-gqa2 --kv-heads 2 --dtype bfloat16
    """
    try:
        out = convert(hf_path, mlx_path, kv_heads=kv_heads, pool=pool, groups_in=groups_in, dtype=dtype, seed=seed,
                      tokenizer_path=tokenizer_path, overwrite=overwrite, quantize=quantize, q_bits=int(q_bits),
                      q_group_size=int(q_group_size), progress=lambda m: click.echo(f"[convert] {m}", err=True))
    except MlxMqaError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        raise SystemExit(130)
    click.echo(f"saved {out}")


if __name__ == "__main__":
    main()
