"""Reading Hugging Face T5 checkpoints: hub ids or directories, safetensors or .bin, sharded or not."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Mapping, Tuple

import numpy as np
from mlx.utils import tree_flatten

from ..errors import CheckpointError, ConfigError
from ..models.config import ModelArgs, tied_word_embeddings
from .tensors import CheckpointTensors

WEIGHT_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve(path_or_repo: str, allow_patterns=None) -> Path:
    """A local directory as is, else a hub id downloaded to the local cache."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; expected a checkpoint directory with config.json")
        return path
    if path_or_repo.startswith((".", "/", "~")) or path_or_repo.count("/") > 1:
        raise CheckpointError(f"checkpoint directory {path_or_repo!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        local = Path(
            snapshot_download(
                path_or_repo, allow_patterns=allow_patterns or ["*.json", "*.safetensors", "*.model", "*.txt"]
            )
        )
        if allow_patterns is None and not any(local.glob("*.safetensors")):
            # Older checkpoints (e.g. some google/t5-* repos) only ship PyTorch .bin files.
            local = Path(snapshot_download(path_or_repo, allow_patterns=["*.json", "pytorch_model*.bin"]))
        return local
    except Exception as e:  # network down, unknown repo, auth...
        raise CheckpointError(
            f"{path_or_repo!r} is neither a local directory nor a reachable hub model ({type(e).__name__}: {e})"
        ) from None


def model_file(directory: Path, name: str) -> Path:
    """`directory / name`, the one way files of a model directory are read or copied: refused unless it
    resolves inside the directory, so that a shard index, a link or a name cannot make loading read (or
    copy into an output) a file from elsewhere. A hub snapshot's files are links into its repository's
    blobs/, which count as inside."""
    root = Path(directory).resolve()
    if root.parent.name == "snapshots":  # huggingface_hub cache: REPO/snapshots/REV/NAME -> REPO/blobs/HASH
        root = root.parent.parent
    path = Path(directory) / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
        raise CheckpointError(f"{name!r} in {directory} resolves outside the model directory; refusing to read it")
    return path


def read_config(path: Path) -> dict:
    cfg = model_file(path, "config.json")
    if not cfg.exists():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face or converted checkpoint?")
    try:
        config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{cfg} must hold a JSON object of settings, not a {type(config).__name__}")
    return config


def weight_files(path: Path) -> list:
    for index_name in WEIGHT_INDEX_NAMES:
        index = model_file(path, index_name)
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid shard index: {type(e).__name__} {e}") from None
            if not all(isinstance(n, str) for n in names):
                raise CheckpointError(f"{index} is not a valid shard index: its weight_map values must be file names")
            files = [model_file(path, n) for n in names]
            missing = [n for n, f in zip(names, files) if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {missing}")
            return files
    # Only model weights: other safetensors files (optimizer state, adapters) may sit beside them.
    for pattern in (
        "model.safetensors",
        "model-*.safetensors",
        "pytorch_model.bin",
        "pytorch_model-*.bin",
        "*.safetensors",
    ):
        files = sorted(path.glob(pattern))
        if files:
            return [model_file(path, f.name) for f in files]
    raise CheckpointError(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")


def open_checkpoint(path: Path) -> CheckpointTensors:
    """The tensors of a HF checkpoint, each read when asked for (float32 numpy; exact for bf16/fp16 sources)."""
    tensors = CheckpointTensors(weight_files(path))
    if "shared.weight" not in tensors:
        raise CheckpointError(f"{path} does not look like a T5 checkpoint: no 'shared.weight' tensor")
    return tensors


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


def check_shapes(weights: Dict[str, object], args: ModelArgs, where: str = "the checkpoint") -> None:
    """Every tensor against the shape config.json implies; none missing, none unknown."""
    from ..models.t5 import Model

    model = Model(args)  # parameters are lazy: nothing is allocated here
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    given = model.sanitize(weights)
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    wrong = [(k, tuple(given[k].shape), s) for k, s in expected.items() if k in given and tuple(given[k].shape) != s]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"{where}: {k} has shape {got} but config.json implies {want} "
            f"({len(wrong)} tensor(s) disagree); is config.json the one of these weights?"
        )
    if missing or unknown:
        blocks = [_count_blocks(given, stack) for stack in ("encoder", "decoder")]
        if blocks != [args.num_layers, args.num_decoder_layers]:
            raise CheckpointError(
                f"{where} has {blocks[0]} encoder / {blocks[1]} decoder blocks but config.json says "
                f"{args.num_layers} / {args.num_decoder_layers}"
            )
        raise CheckpointError(
            f"{where} does not match config.json: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unknown {unknown[:3]}{'...' if len(unknown) > 3 else ''}"
        )


def _count_blocks(weights, stack: str) -> int:
    pattern = re.compile(rf"^{stack}\.block\.(\d+)\.")
    return len({m.group(1) for m in map(pattern.match, weights) if m})


def check_t5_config(config: dict) -> None:
    if config.get("model_type", "t5") not in ("t5", "mt5") or "d_model" not in config or "num_heads" not in config:
        raise ConfigError(f"config.json is not a T5 config (model_type={config.get('model_type')!r})")
    ModelArgs.from_dict(config)  # every setting's type and range, before a weight is read


def hf_model_args(config: dict, weights: Mapping[str, object]) -> Tuple[dict, ModelArgs]:
    """A Hugging Face T5 config made explicit (gated FFN from the weights, tying recorded) and checked
    against every tensor of the checkpoint (`weights`: arrays, or `Spec`s: only names and shapes are read)."""
    check_t5_config(config)
    config = fix_feed_forward(config, weights)
    config["tie_word_embeddings"] = tied_word_embeddings(config)
    args = ModelArgs.from_dict(config)
    check_shapes(weights, args)
    return config, args
