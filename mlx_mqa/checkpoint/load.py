"""Loading converted (or plain Hugging Face) T5 models for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import mlx.core as mx
from mlx.utils import tree_map_with_path

from ..errors import CheckpointError
from ..models.config import ModelArgs
from ..models.dtypes import check_dtype, default_dtype, weight_dtype
from ..models.t5 import Model
from .files import TOKENIZER_FILES, VOCAB_FILES
from .hf import hf_model_args, model_file, open_checkpoint, read_config, resolve, weight_files
from .tensors import read_safetensors_header


def has_tokenizer(path: Path) -> bool:
    """Whether `path` holds a vocabulary (without one transformers makes a placeholder that encodes garbage)."""
    return any(model_file(path, name).exists() for name in VOCAB_FILES)


def load_tokenizer(path):
    path = Path(path)
    if not has_tokenizer(path):
        raise CheckpointError(
            f"{path} has no tokenizer ({' or '.join(VOCAB_FILES)}); copy the tokenizer files of the source "
            f"checkpoint into it"
        )
    for name in TOKENIZER_FILES:  # what transformers will read: only files inside the directory
        model_file(path, name)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {e}") from None


def check_tokenizer(tokenizer, args: ModelArgs, where: str = "the tokenizer") -> None:
    """A tokenizer whose ids the model cannot embed, or whose EOS/pad differ, gives silent garbage: refuse it."""
    n = len(tokenizer)
    if n > args.vocab_size:
        raise CheckpointError(
            f"{where} has {n} tokens but the model's vocabulary has {args.vocab_size}; "
            "use the tokenizer of the model's checkpoint"
        )
    for name in ("eos_token_id", "pad_token_id"):
        tok_id = getattr(tokenizer, name, None)
        if tok_id is not None and tok_id != getattr(args, name):
            raise CheckpointError(
                f"{where} has {name}={tok_id} but config.json says {getattr(args, name)}; "
                "use the tokenizer of the model's checkpoint"
            )


def is_mlx_checkpoint(config: dict) -> bool:
    return "conversion" in config or "mlx_mqa_version" in config


def load_model(path, dtype: Optional[str] = None, strict: bool = True) -> Model:
    """Load a converted directory. A plain HF checkpoint is converted in memory (multi-head)."""
    path = _local(path)
    config = read_config(path)
    if dtype is not None:
        check_dtype(dtype)
    if not is_mlx_checkpoint(config):
        return _load_hf_in_memory(path, config, dtype)
    model = Model(ModelArgs.from_dict(config))
    weights = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":  # offsets, shapes and dtypes agree before MLX reads the data
            read_safetensors_header(file)
        try:
            weights.update(mx.load(str(file)))
        except Exception as e:
            raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e})") from None
    if any(k.endswith(".scales") for k in weights):
        # Which layers are quantized is read from the weights (as mlx-lm does), not recomputed.
        from ..models.quantize import quantize_model

        q = config.get("quantization")
        if not q:
            raise CheckpointError(f"{path}: the weights are quantized but config.json has no 'quantization' record")
        quantize_model(model, q["bits"], q["group_size"], only=lambda p: f"{p}.scales" in weights)
    try:
        model.load_weights(list(model.sanitize(weights).items()), strict=strict)
    except ValueError as e:
        raise CheckpointError(f"{path}: the weights do not match config.json: {e}") from None
    if dtype is not None:
        cast_model(model, dtype)
    mx.eval(model.parameters())
    return model


def cast_model(model: Model, dtype: str) -> None:
    """Cast floating-point parameters to `dtype` (float16 keeps the FFN output projection in float32)."""
    check_dtype(dtype)

    def cast(path, p):
        return p.astype(weight_dtype(path, dtype)) if mx.issubdtype(p.dtype, mx.floating) else p

    model.update(tree_map_with_path(cast, model.parameters()))


def _load_hf_in_memory(path: Path, config: dict, dtype: Optional[str]) -> Model:
    tensors = open_checkpoint(path)
    _, args = hf_model_args(config, tensors.specs())
    model = Model(args)
    dtype = dtype or default_dtype()
    weights = []
    for name in model.sanitize(tensors.specs()):  # one float32 tensor at a time
        weights.append((name, mx.array(tensors[name]).astype(weight_dtype(name, dtype))))
        mx.eval(weights[-1][1])
    model.load_weights(weights)
    return model


def _local(path) -> Path:
    local = Path(str(path)).expanduser()
    return local if local.exists() else resolve(str(path))


def load(path, dtype: Optional[str] = None) -> Tuple[Model, object]:
    """(model, tokenizer) from a converted directory, a Hugging Face checkpoint directory or a hub id."""
    local = _local(path)
    tokenizer = load_tokenizer(local)  # first: a directory without one fails before the weights are read
    model = load_model(local, dtype)
    check_tokenizer(tokenizer, model.args, f"the tokenizer in {local}")
    return model, tokenizer
