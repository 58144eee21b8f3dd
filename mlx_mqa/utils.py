"""Loading converted (or plain Hugging Face) T5 models for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import read_config, resolve
from .config import ModelArgs
from .errors import CheckpointError
from .model import Model


def load_tokenizer(path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {e}") from None


def _is_mlx_checkpoint(path: Path, config: dict) -> bool:
    return "conversion" in config or "mlx_mqa_version" in config


def load_model(path, dtype: Optional[str] = None, strict: bool = True) -> Model:
    """Load a converted directory. A plain HF checkpoint is converted in memory (multi-head)."""
    path = resolve(str(path)) if not isinstance(path, Path) or not path.exists() else path
    config = read_config(path)
    if not _is_mlx_checkpoint(path, config):
        return _load_hf_in_memory(path, dtype)
    args = ModelArgs.from_dict(config)
    model = Model(args)
    if "quantization" in config:
        from .quantize import quantize_model

        q = config["quantization"]
        quantize_model(model, q["bits"], q["group_size"])
    file = path / "model.safetensors"
    if not file.exists():
        raise CheckpointError(f"{path} has config.json but no model.safetensors")
    try:
        weights = mx.load(str(file))
    except Exception as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e})") from None
    try:
        model.load_weights(list(model.sanitize(weights).items()), strict=strict)
    except ValueError as e:
        raise CheckpointError(f"{file} does not match its config.json: {e}") from None
    if dtype is not None:
        cast_model(model, dtype)
    mx.eval(model.parameters())
    return model


def cast_model(model: Model, dtype: str) -> None:
    from .convert import DTYPES

    target = DTYPES[dtype]
    keep = "float32" if dtype == "float16" else None

    def cast(path, p):
        if not mx.issubdtype(p.dtype, mx.floating):
            return p
        if keep and path.endswith("DenseReluDense.wo.weight"):
            return p.astype(mx.float32)
        return p.astype(target)

    from mlx.utils import tree_map_with_path

    model.update(tree_map_with_path(cast, model.parameters()))


def _load_hf_in_memory(path: Path, dtype: Optional[str]) -> Model:
    from .checkpoint import load_hf_weights
    from .convert import DTYPES, convert_weights, default_dtype, fix_feed_forward

    config = read_config(path)
    weights = load_hf_weights(path)
    config = fix_feed_forward(config, weights)
    config["tie_word_embeddings"] = config.get("tie_word_embeddings", True) is not False
    args = ModelArgs.from_dict(config)
    model = Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in model.sanitize(weights).items()])
    cast_model(model, dtype or default_dtype())
    mx.eval(model.parameters())
    return model


def load(path, dtype: Optional[str] = None) -> Tuple[Model, object]:
    """(model, tokenizer) from a converted directory, a Hugging Face checkpoint directory or a hub id."""
    local = Path(str(path)).expanduser()
    local = local if local.exists() else resolve(str(path))
    return load_model(local, dtype), load_tokenizer(local)
