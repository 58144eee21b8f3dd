"""Writing model directories: atomically, weights in shards with an index, tokenizer files beside them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from ..errors import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "added_tokens.json",
)


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


# mlx-lm's shard size and file names (its `make_shards` counts whole GB; bytes here, so tests can shard small).
MAX_SHARD_BYTES = 5 << 30


def make_shards(weights: Dict[str, mx.array], max_bytes: int = MAX_SHARD_BYTES) -> List[Dict[str, mx.array]]:
    """Consecutive groups of tensors of at most `max_bytes` each (a bigger tensor gets a shard of its own)."""
    shards: List[Dict[str, mx.array]] = []
    size = 0
    for k, v in weights.items():
        if not shards or size + v.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    return shards


def save_mlx_weights(directory: Path, weights: Dict[str, mx.array], max_bytes: Optional[int] = None) -> None:
    """`model.safetensors`, or shards `model-0000i-of-0000n.safetensors` with a
    `model.safetensors.index.json` weight map when the weights exceed `max_bytes`."""
    shards = make_shards(weights, max_bytes or MAX_SHARD_BYTES)
    n = len(shards)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        mx.save_safetensors(str(Path(directory) / name), shard, metadata={"format": "mlx"})
        weight_map.update({k: name for k in shard})
        total += sum(v.nbytes for v in shard.values())
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(Path(directory) / "model.safetensors.index.json", index)


def copy_tokenizer(source: Path, dest: Path) -> bool:
    """Copy tokenizer files; True if at least one was found."""
    found = False
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
            found = True
    return found


def save_model(out: Path, model, tokenizer=None, overwrite: bool = False) -> Path:
    """A model in memory (e.g. from `conversion.convert_model`) as a directory `load()` reads, atomically."""
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        save_mlx_weights(tmp, dict(tree_flatten(model.parameters())))
        config = model.args.to_dict()
        config.setdefault("conversion", {})
        atomic_write_json(tmp / "config.json", config)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out)
