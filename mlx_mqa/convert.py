"""Convert a multi-head Hugging Face T5 checkpoint to MLX with G pooled key/value heads.

Pooling follows Ainslie et al. 2023: the K and V projection heads of each contiguous group
(heads g*H/G .. (g+1)*H/G-1) are mean-pooled into one head. `first` and `random` are the
paper's ablations.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Optional

import mlx.core as mx
import numpy as np

from . import __version__
from .checkpoint import (atomic_directory, atomic_write_json, copy_tokenizer, load_hf_weights, read_config,
                         resolve, save_mlx_weights)
from .config import ModelArgs, valid_kv_heads
from .errors import CheckpointError, ConfigError

POOL_METHODS = ("mean", "first", "random")
GROUPS_IN = ("decoder", "all")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}

_DECODER_KV = re.compile(r"^decoder\.block\.\d+\.layer\.[01]\.(SelfAttention|EncDecAttention)\.[kv]\.weight$")
_ENCODER_KV = re.compile(r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.[kv]\.weight$")
_WO = re.compile(r"\.DenseReluDense\.wo\.weight$")


def default_dtype() -> str:
    """bfloat16 where there is a GPU; float32 on CPU, where MLX half-precision matmuls are slow."""
    return "float32" if mx.default_device() == mx.cpu or not mx.is_available(mx.gpu) else "bfloat16"


def pool_heads(weight: np.ndarray, num_heads: int, kv_heads: int, method: str,
               rng: Optional[np.random.Generator] = None, init_std: float = 1.0) -> np.ndarray:
    """[H*D, d_model] projection -> [G*D, d_model], pooling contiguous groups of H/G heads."""
    out_dim, d_model = weight.shape
    d_kv = out_dim // num_heads
    grouped = weight.reshape(kv_heads, num_heads // kv_heads, d_kv, d_model)
    if method == "mean":
        pooled = grouped.mean(axis=1, dtype=np.float64).astype(np.float32)
    elif method == "first":
        pooled = grouped[:, 0]
    elif method == "random":
        pooled = rng.normal(0.0, init_std, size=(kv_heads, d_kv, d_model)).astype(np.float32)
    else:
        raise ConfigError(f"unknown pooling {method!r}; choose from {POOL_METHODS}")
    return np.ascontiguousarray(pooled.reshape(kv_heads * d_kv, d_model))


def convert_weights(weights: Dict[str, np.ndarray], args: ModelArgs, kv_heads: int, pool: str = "mean",
                    groups_in: str = "decoder", seed: int = 0) -> Dict[str, np.ndarray]:
    """Pool K/V heads of the selected attention layers; other tensors pass through."""
    H = args.num_heads
    if kv_heads < 1 or H % kv_heads:
        raise ConfigError(f"--kv-heads {kv_heads} does not divide the {H} attention heads; "
                          f"valid values: {', '.join(map(str, valid_kv_heads(H)))}")
    if groups_in not in GROUPS_IN:
        raise ConfigError(f"unknown --groups-in {groups_in!r}; choose from {GROUPS_IN}")
    if pool not in POOL_METHODS:
        raise ConfigError(f"unknown pooling {pool!r}; choose from {POOL_METHODS}")
    rng = np.random.default_rng(seed)
    # T5's own initialisation of k/v (factor 1.0): normal with std d_model**-0.5.
    init_std = args.d_model ** -0.5
    out = {}
    for name in sorted(weights):
        w = weights[name]
        selected = _DECODER_KV.match(name) or (groups_in == "all" and _ENCODER_KV.match(name))
        if selected and kv_heads != H:
            w = pool_heads(w, H, kv_heads, pool, rng, init_std)
        elif selected and pool == "random":
            w = pool_heads(w, H, H, pool, rng, init_std)
        out[name] = w
    return out


def fix_feed_forward(config: dict, weights: Dict[str, np.ndarray]) -> dict:
    """Legacy Flan-T5 configs say 'gelu' while their FFN is gated (wi_0/wi_1): trust the weights."""
    config = dict(config)
    gated = any(k.endswith("DenseReluDense.wi_0.weight") for k in weights)
    proj = config.get("feed_forward_proj", "relu")
    if gated and not proj.startswith("gated-"):
        config["feed_forward_proj"] = "gated-gelu" if proj in ("gelu", "gelu_new") else f"gated-{proj}"
    elif not gated and proj.startswith("gated-"):
        raise CheckpointError(f"config says {proj!r} but the checkpoint has no gated FFN weights (wi_0/wi_1)")
    return config


def check_shapes(weights: Dict[str, np.ndarray], args: ModelArgs) -> None:
    expect = {"shared.weight": (args.vocab_size, args.d_model),
              "encoder.block.0.layer.0.SelfAttention.q.weight": (args.inner_dim, args.d_model)}
    for name, shape in expect.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise CheckpointError(f"{name} has shape {tuple(weights[name].shape)} but config.json implies {shape}")
    n_dec = sum(1 for k in weights if re.match(r"^decoder\.block\.\d+\.layer\.0\.layer_norm\.weight$", k))
    n_enc = sum(1 for k in weights if re.match(r"^encoder\.block\.\d+\.layer\.0\.layer_norm\.weight$", k))
    if (n_enc, n_dec) != (args.num_layers, args.num_decoder_layers):
        raise CheckpointError(f"checkpoint has {n_enc} encoder / {n_dec} decoder blocks but config.json says "
                              f"{args.num_layers} / {args.num_decoder_layers}")


def convert(hf_path: str, mlx_path: str, kv_heads: Optional[int] = None, pool: str = "mean",
            groups_in: str = "decoder", dtype: Optional[str] = None, seed: int = 0,
            tokenizer_path: Optional[str] = None, overwrite: bool = False,
            quantize: bool = False, q_bits: int = 4, q_group_size: int = 64,
            progress: Optional[Callable[[str], None]] = None) -> Path:
    """Convert `hf_path` (hub id or directory) into an MLX model directory at `mlx_path`."""
    say = progress or (lambda msg: None)
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {list(DTYPES)}")
    mlx_path = Path(mlx_path)
    if mlx_path.exists() and not overwrite:
        raise CheckpointError(f"{mlx_path} already exists; choose another path or pass --overwrite")
    say(f"reading {hf_path}")
    src = resolve(hf_path)
    config = read_config(src)
    if config.get("model_type", "t5") not in ("t5", "mt5") or "d_model" not in config:
        raise ConfigError(f"{src}/config.json is not a T5 config (model_type={config.get('model_type')!r})")
    if config.get("num_key_value_heads", config["num_heads"]) != config["num_heads"]:
        raise ConfigError("the source is already grouped-query; convert from the multi-head checkpoint")
    H = config["num_heads"]
    kv_heads = H if kv_heads is None else int(kv_heads)
    if kv_heads < 1 or H % kv_heads:
        raise ConfigError(f"--kv-heads {kv_heads} does not divide the {H} attention heads; "
                          f"valid values: {', '.join(map(str, valid_kv_heads(H)))}")
    weights = load_hf_weights(src)
    config = fix_feed_forward(config, weights)
    # Absent tie_word_embeddings means tied (T5 v1.0); record it explicitly.
    config["tie_word_embeddings"] = config.get("tie_word_embeddings", True) is not False
    args = ModelArgs.from_dict(config)
    check_shapes(weights, args)
    say(f"pooling K/V heads: {H} -> {kv_heads} ({pool}, {groups_in})")
    weights = convert_weights(weights, args, kv_heads, pool, groups_in, seed)
    from .model import Model

    weights = Model(args).sanitize(weights)
    target = DTYPES[dtype]
    mlx_weights = {}
    for name, w in weights.items():
        # float16 keeps the FFN output projection in float32: its output is what overflows.
        keep_fp32 = dtype == "float16" and _WO.search(name)
        mlx_weights[name] = mx.array(w).astype(mx.float32 if keep_fp32 else target)

    config.update(
        model_type="t5",
        num_key_value_heads=kv_heads,
        encoder_num_key_value_heads=kv_heads if groups_in == "all" else H,
        conversion={"source": str(hf_path), "num_heads": H, "kv_heads": kv_heads, "pool": pool,
                    "groups_in": groups_in, "dtype": dtype, "seed": seed if pool == "random" else None,
                    "mlx_mqa_version": __version__},
    )
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    if quantize:
        config["quantization"] = {"bits": q_bits, "group_size": q_group_size}

    with atomic_directory(mlx_path, overwrite=overwrite) as tmp:
        if quantize:
            from .quantize import quantize_weights

            say(f"quantizing to {q_bits} bits, group size {q_group_size}")
            mlx_weights = quantize_weights(ModelArgs.from_dict(config), mlx_weights, q_bits, q_group_size)
        say(f"writing {mlx_path}")
        save_mlx_weights(tmp, mlx_weights)
        tok_src = resolve(tokenizer_path) if tokenizer_path else src
        if not copy_tokenizer(tok_src, tmp):
            raise CheckpointError(f"no tokenizer files in {tok_src}; pass --tokenizer with a directory that has them")
        atomic_write_json(tmp / "config.json", config)
    return mlx_path
