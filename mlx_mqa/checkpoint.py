"""Reading Hugging Face T5 checkpoints and writing/reading converted MLX models."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Dict, Iterator, Optional

import mlx.core as mx
import numpy as np

from .errors import CheckpointError

WEIGHT_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                   "added_tokens.json")


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

        local = Path(snapshot_download(path_or_repo, allow_patterns=allow_patterns or [
            "*.json", "*.safetensors", "*.model", "*.txt"]))
        if allow_patterns is None and not any(local.glob("*.safetensors")):
            # Older checkpoints (e.g. some google/t5-* repos) only ship PyTorch .bin files.
            local = Path(snapshot_download(path_or_repo, allow_patterns=["*.json", "pytorch_model*.bin"]))
        return local
    except Exception as e:  # network down, unknown repo, auth...
        raise CheckpointError(
            f"{path_or_repo!r} is neither a local directory nor a reachable hub model ({type(e).__name__}: {e})"
        ) from None


def read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face or converted checkpoint?")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg} is not valid JSON: {e}") from None


def _weight_files(path: Path) -> list:
    for index_name in WEIGHT_INDEX_NAMES:
        index = path / index_name
        if index.exists():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid shard index: {e}") from None
            missing = [n for n in names if not (path / n).exists()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {missing}")
            return [path / n for n in names]
    # Only model weights: other safetensors files (optimizer state, adapters) may sit beside them.
    for pattern in ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin",
                    "*.safetensors"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise CheckpointError(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")


def _load_safetensors(file: Path) -> Dict[str, np.ndarray]:
    try:
        arrays = mx.load(str(file))
        return {k: np.array(v.astype(mx.float32)) for k, v in arrays.items()}
    except Exception as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e})") from None


def _load_bin(file: Path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{file} is a PyTorch .bin checkpoint; install torch (pip install 'mlx-mqa[torch]')") from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({type(e).__name__}: {e})") from None
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def load_hf_weights(path: Path) -> Dict[str, np.ndarray]:
    """All tensors of a HF checkpoint as float32 numpy arrays (exact for bf16/fp16 sources)."""
    weights: Dict[str, np.ndarray] = {}
    for file in _weight_files(path):
        loader = _load_bin if file.suffix == ".bin" else _load_safetensors
        weights.update(loader(file))
    if "shared.weight" not in weights:
        raise CheckpointError(f"{path} does not look like a T5 checkpoint: no 'shared.weight' tensor")
    return weights


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; choose another path or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def save_mlx_weights(directory: Path, weights: Dict[str, mx.array]) -> None:
    mx.save_safetensors(str(Path(directory) / "model.safetensors"), weights, metadata={"format": "mlx"})


def copy_tokenizer(source: Path, dest: Path) -> bool:
    """Copy tokenizer files; True if at least one was found."""
    found = False
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
            found = True
    return found
