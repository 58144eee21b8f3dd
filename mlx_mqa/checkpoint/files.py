"""Writing model directories: atomically, weights in shards with an index, tokenizer files beside them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..errors import CheckpointError
from .tensors import SAFETENSORS_NAME

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


def check_disk_space(target: Path, nbytes: int) -> None:
    """Refuse, before writing anything, a model that the disk under `target` cannot hold."""
    parent = Path(target).resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < nbytes + (64 << 20):
        raise CheckpointError(
            f"not enough disk space at {parent}: the model needs {nbytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB is free; free some or choose another --mlx-path"
        )


def atomic_write_json(path: Path, data) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# mlx-lm's shard size and file names (its `make_shards` counts whole GB; bytes here, so tests can shard small).
MAX_SHARD_BYTES = 5 << 30


class TensorPlan(NamedTuple):
    """A tensor to write: its shape and dtype, known before it is computed."""

    shape: Tuple[int, ...]
    dtype: mx.Dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.size


def make_shards(sizes: Dict[str, int], max_bytes: int = MAX_SHARD_BYTES) -> List[List[str]]:
    """Names in consecutive groups of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    shards: List[List[str]] = []
    size = 0
    for k, n in sizes.items():
        if not shards or size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    return shards


def _tensor_bytes(a: mx.array) -> memoryview:
    if a.dtype == mx.bfloat16:  # numpy has no bfloat16: its bits
        a = a.view(mx.uint16)
    return memoryview(np.ascontiguousarray(np.asarray(a))).cast("B")


def _write_safetensors(file: Path, names: List[str], plan: Dict[str, TensorPlan], produce) -> None:
    """One safetensors file written tensor by tensor: the header first (offsets from the plan), then each
    tensor as `produce(name)` returns it, checked against the plan."""
    header, offset = {}, 0
    for k in names:
        t = plan[k]
        header[k] = {
            "dtype": SAFETENSORS_NAME[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    header["__metadata__"] = {"format": "mlx"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k in names:
            a = produce(k)
            if tuple(a.shape) != plan[k].shape or a.dtype != plan[k].dtype:
                raise ValueError(f"{k}: produced {a.dtype}{tuple(a.shape)}, planned {plan[k].dtype}{plan[k].shape}")
            f.write(_tensor_bytes(a))
            del a


def save_streamed(
    directory: Path, plan: Dict[str, TensorPlan], produce: Callable[[str], mx.array], max_bytes: Optional[int] = None
) -> None:
    """Weights computed one at a time by `produce(name)` (in `plan`'s order) and written as they come:
    `model.safetensors`, or mlx-lm's shards `model-0000i-of-0000n.safetensors` with a
    `model.safetensors.index.json` weight map when they exceed `max_bytes`. Memory holds one tensor."""
    shards = make_shards({k: t.nbytes for k, t in plan.items()}, max_bytes or MAX_SHARD_BYTES)
    n = len(shards)
    weight_map = {}
    for i, names in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _write_safetensors(Path(directory) / name, names, plan, produce)
        weight_map.update({k: name for k in names})
    if n > 1:
        total = sum(t.nbytes for t in plan.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(Path(directory) / "model.safetensors.index.json", index)


def save_mlx_weights(directory: Path, weights: Dict[str, mx.array], max_bytes: Optional[int] = None) -> None:
    """Weights in memory, written as `save_streamed` writes them."""
    plan = {k: TensorPlan(tuple(v.shape), v.dtype) for k, v in weights.items()}
    save_streamed(directory, plan, weights.__getitem__, max_bytes)


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
