"""`python -m mlx_mqa.random_checkpoint`: a random-weight Hugging Face T5 checkpoint of a real shape, offline.

The shapes are the public configs bundled in `mlx_mqa/assets/t5-configs/`, the tokenizer is the bundled T5
tokenizer (`mlx_mqa/assets/tokenizer`). The weights are random: the text such a model generates is
gibberish, but its speed and memory are those of the real model of that shape. The result is a plain
Hugging Face directory (config.json, model.safetensors, tokenizer), so `mlx_mqa.convert`,
`mlx_mqa.generate`, `mlx_mqa.load` and transformers all read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli import CONTEXT, fail
from .errors import CheckpointError, MlxMqaError
from .models.config import tied_word_embeddings

ASSETS = Path(__file__).resolve().parent / "assets"
CONFIGS = ASSETS / "t5-configs"
# As the benchmark's random:<shape> models: a small std for the (often tied) shared embedding, so greedy
# decoding gives varied tokens instead of echoing one (see checkpoint/random_init.py).
SHARED_STD = 0.05


def config_names() -> list:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def shaped_config(name: str, layers=None) -> dict:
    """The bundled config `name`, with `layers` encoder and decoder layers if given."""
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    if layers is not None:
        cfg["num_layers"] = int(layers)
        cfg["num_decoder_layers"] = int(layers)
    return cfg


def parameter_count(cfg: dict) -> int:
    """Parameters of the checkpoint `random_t5_weights(cfg)` writes (for the disk-space check)."""
    d, inner, dff, V = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["vocab_size"]
    buckets = cfg.get("relative_attention_num_buckets", 32) * cfg["num_heads"]
    n_enc = cfg["num_layers"]
    n_dec = cfg.get("num_decoder_layers") or n_enc
    attention = 4 * inner * d + d  # q, k, v, o and the layer norm
    ffn = (3 if cfg.get("feed_forward_proj", "relu").startswith("gated-") else 2) * dff * d + d
    return (
        V * d
        + n_enc * (attention + ffn)
        + n_dec * (2 * attention + ffn)
        + 2 * buckets
        + 2 * d
        + (0 if tied_word_embeddings(cfg) else V * d)
    )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} exists and is not empty; choose another path or remove it first")


def _silence_unknown_ids(path: Path, cfg: dict, known: int) -> None:
    """Zero the output rows of the ids the bundled tokenizer lacks (it has `known` < vocab_size ids).

    The real shapes have 32,128 output rows; the bundled tokenizer knows 4,100 ids. A random head would
    mostly pick ids that decode to nothing (empty output); with those rows zero their logit is 0, below the
    largest of the others, so generation picks ids that decode to (gibberish) text. Shapes are unchanged.
    """
    if known >= cfg["vocab_size"]:
        return
    from safetensors.numpy import load_file, save_file

    file = path / "model.safetensors"
    weights = load_file(str(file))
    weights["shared.weight" if tied_word_embeddings(cfg) else "lm_head.weight"][known:] = 0
    save_file(weights, str(file), metadata={"format": "pt"})


def write(name: str, out, layers=None, seed: int = 0) -> Path:
    """Write the random checkpoint `name` (a bundled config) to `out`, atomically. Returns `out`."""
    from transformers import AutoTokenizer

    from .checkpoint.files import atomic_directory, check_disk_space
    from .checkpoint.random_init import save_random_checkpoint

    out = Path(out)
    _check_out(out)
    cfg = shaped_config(name, layers)
    check_disk_space(out, 4 * parameter_count(cfg))
    tokenizer = AutoTokenizer.from_pretrained(str(ASSETS / "tokenizer"))
    # An empty existing directory is replaced; atomic_directory leaves nothing behind if writing fails.
    with atomic_directory(out, overwrite=out.is_dir()) as tmp:
        save_random_checkpoint(cfg, tmp, seed=seed, tokenizer=tokenizer, shared_std=SHARED_STD)
        _silence_unknown_ids(tmp, cfg, len(tokenizer))
        (tmp / "README.md").write_text(
            f"# Random-weight T5 ({name} shape)\n\n"
            f"Written by `python -m mlx_mqa.random_checkpoint --config {name}"
            f"{f' --layers {layers}' if layers is not None else ''} --seed {seed}`.\n\n"
            "**The weights are random.** Generated text is gibberish; speed and memory are those of a real "
            f"model of this shape ({cfg['num_layers']} encoder and {cfg['num_decoder_layers']} decoder layers, "
            f"{parameter_count(cfg) / 1e6:.1f} M parameters).\n"
        )
    return out


EPILOG = "Bundled shapes: " + ", ".join(config_names()) + " (mlx_mqa/assets/t5-configs/)."


@click.command(context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "--config",
    "name",
    type=click.Choice(config_names()),
    required=True,
    help="Shape: one of the bundled public T5 configs (listed below).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New (or empty) output directory.")
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="Encoder and decoder layers (default: the config's). Fewer layers: a smaller, faster model of the same width.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random weights.")
def main(name, out, layers, seed):
    """Write a RANDOM-WEIGHT Hugging Face T5 checkpoint of a real shape, offline.

    THE WEIGHTS ARE RANDOM: text generated with this checkpoint is gibberish. Its speed and memory are real
    (those of a trained model of the same shape), and every tool reads it: convert it to GQA/MQA with
    mlx_mqa.convert, generate with mlx_mqa.generate, benchmark it. For real text use a trained checkpoint
    (e.g. google/flan-t5-base from the Hugging Face Hub).

    The output holds config.json (with `random_weights_seed`), model.safetensors (float32), the bundled T5
    tokenizer and a README.md saying what it is. The same shape, layers and seed give the same weights.

    \b
    Example (a 1+1-layer t5-small, converted to multi-query, then used to generate):
      python -m mlx_mqa.random_checkpoint --config t5-small --layers 1 --out tiny-t5
      python -m mlx_mqa.convert --hf-path tiny-t5 --mlx-path tiny-t5-mqa --kv-heads 1
      python -m mlx_mqa.generate --model tiny-t5-mqa --prompt "summarize: The cat sat on the mat." -m 16
    """
    try:
        path = write(name, out, layers=layers, seed=seed)
    except MlxMqaError as e:
        fail(e)
    except OSError as e:
        fail(CheckpointError(f"could not write {out}: {e.strerror or e}"))
    cfg = shaped_config(name, layers)
    click.echo(
        f"wrote {path}: random-weight {name} ({cfg['num_layers']}+{cfg['num_decoder_layers']} layers, "
        f"{parameter_count(cfg) / 1e6:.1f} M parameters, seed {seed}); its generated text is gibberish",
        err=True,
    )


if __name__ == "__main__":
    main()
