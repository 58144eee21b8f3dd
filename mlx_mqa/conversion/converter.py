"""`convert()`: a multi-head Hugging Face T5 checkpoint to an MLX model directory with G K/V heads."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx

from .. import __version__
from ..checkpoint.card import create_model_card
from ..checkpoint.files import TOKENIZER_FILES, atomic_directory, atomic_write_json, copy_tokenizer, save_mlx_weights
from ..checkpoint.hf import check_t5_config, hf_model_args, load_hf_weights, read_config, resolve
from ..checkpoint.load import check_tokenizer, load_tokenizer
from ..errors import CheckpointError, ConfigError
from ..models.config import ModelArgs
from ..models.dtypes import check_dtype, default_dtype, weight_dtype
from ..models.t5 import Model
from .pooling import check_options, convert_weights


def convert(
    hf_path: str,
    mlx_path: str,
    kv_heads: Optional[int] = None,
    pool: str = "mean",
    groups_in: str = "decoder",
    dtype: Optional[str] = None,
    seed: int = 0,
    tokenizer_path: Optional[str] = None,
    overwrite: bool = False,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    upload_repo: Optional[str] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Path:
    """Convert `hf_path` (hub id or directory) into an MLX model directory at `mlx_path`."""
    say = progress or (lambda msg: None)
    dtype = dtype or default_dtype()
    check_dtype(dtype)
    mlx_path = Path(mlx_path)
    if mlx_path.exists() and not overwrite:
        raise CheckpointError(f"{mlx_path} already exists; choose another path or pass --overwrite")
    say(f"reading {hf_path}")
    src = resolve(hf_path)
    config = read_config(src)
    check_t5_config(config)
    H = config["num_heads"]
    if config.get("num_key_value_heads", H) != H:
        raise ConfigError("the source is already grouped-query; convert from the multi-head checkpoint")
    kv_heads = H if kv_heads is None else int(kv_heads)
    check_options(kv_heads, H, pool, groups_in)
    tok_src = resolve(tokenizer_path) if tokenizer_path else src
    if not any((tok_src / name).exists() for name in TOKENIZER_FILES):
        raise CheckpointError(f"no tokenizer files in {tok_src}; pass --tokenizer with a directory that has them")
    check_tokenizer(load_tokenizer(tok_src), ModelArgs.from_dict(config), f"the tokenizer in {tok_src}")
    weights = load_hf_weights(src)
    config, args = hf_model_args(config, weights)
    say(f"pooling K/V heads: {H} -> {kv_heads} ({pool}, {groups_in})")
    weights = Model(args).sanitize(convert_weights(weights, args, kv_heads, pool, groups_in, seed))
    mlx_weights = {name: mx.array(w).astype(weight_dtype(name, dtype)) for name, w in weights.items()}

    config.update(
        model_type="t5",
        num_key_value_heads=kv_heads,
        encoder_num_key_value_heads=kv_heads if groups_in == "all" else H,
        conversion={
            "source": str(hf_path),
            "num_heads": H,
            "kv_heads": kv_heads,
            "pool": pool,
            "groups_in": groups_in,
            "dtype": dtype,
            "seed": seed if pool == "random" else None,
            "mlx_mqa_version": __version__,
        },
    )
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    if quantize:
        config["quantization"] = {"bits": q_bits, "group_size": q_group_size}

    with atomic_directory(mlx_path, overwrite=overwrite) as tmp:
        if quantize:
            from ..models.quantize import quantize_weights

            say(f"quantizing to {q_bits} bits, group size {q_group_size}")
            mlx_weights = quantize_weights(ModelArgs.from_dict(config), mlx_weights, q_bits, q_group_size)
        say(f"writing {mlx_path}")
        save_mlx_weights(tmp, mlx_weights)
        copy_tokenizer(tok_src, tmp)
        atomic_write_json(tmp / "config.json", config)
        create_model_card(tmp, config)
    if upload_repo:
        from ..checkpoint.card import upload_to_hub

        say(f"uploading to {upload_repo}")
        upload_to_hub(mlx_path, upload_repo)
    return mlx_path
