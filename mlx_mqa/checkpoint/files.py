"""Writing model directories: atomically, weights in shards with an index, tokenizer files beside them."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..errors import CheckpointError, ConfigError
from .hf import model_file
from .tensors import SAFETENSORS_NAME

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "added_tokens.json",
)
# The files that hold a vocabulary: a tokenizer directory without either is unusable.
VOCAB_FILES = ("tokenizer.json", "spiece.model")


def check_output(target: Path, overwrite: bool, protect: Sequence[Path] = (), option: str = "--mlx-path") -> None:
    """The one rule for every output: an existing `target` is replaced only with `overwrite`, never when it is
    (or contains) a protected path such as the source model or the run directory, and only in a place this
    process can write. Checked before any work starts."""
    where = Path(target).resolve()
    for p in protect:
        p = Path(p).resolve()
        if where == p or where in p.parents:
            raise ConfigError(f"{option} {target} would replace {p}, which this run reads; choose another {option}")
    if where.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; choose another {option} or pass --overwrite")
    check_writable(target, option)


def check_writable(target: Path, option: str) -> None:
    """`target` (a directory) can be created or written by this process: its nearest existing ancestor is a
    writable directory."""
    where = Path(target).resolve()
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise ConfigError(f"cannot write {option} {target}: {where} is a file; choose another {option}")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {option} {target}: {where} is not writable; choose another {option}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def remove_stale(parent: Path, name: str) -> None:
    """Remove the temporary directories `.NAME.partial-PID-*` / `.NAME.old-PID-*` in `parent` (`name`: a regex
    of NAME) whose writing process is dead: a killed writer's leftovers. A live writer's are kept."""
    pattern = re.compile(rf"^\.(?:{name})\.(?:partial|old)-(\d+)-[0-9a-f]+$")
    if not Path(parent).is_dir():
        return
    for stale in Path(parent).iterdir():
        m = pattern.match(stale.name)
        if m and stale.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)


def _temp_name(target: Path, kind: str) -> Path:
    # The pid tells a rerun whether the writer is still alive (remove_stale).
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_tree(path: Path) -> None:
    """Flush `path`'s files and directories to disk, so a crash after the rename cannot leave them empty."""
    for root, _, names in os.walk(path):
        for name in names:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(
    target: Path, overwrite: bool = False, protect: Sequence[Path] = (), option: str = "--mlx-path"
) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds (see
    `check_output`). Its mode follows the umask; a killed writer's leftovers are removed on the next write."""
    target = Path(target)
    check_output(target, overwrite, protect, option)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, re.escape(target.name))
    tmp = _temp_name(target, "partial")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists() and overwrite:
            trash = _temp_name(target, "old")
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _claim(tmp, target, option)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _claim(tmp: Path, target: Path, option: str) -> None:
    """Rename `tmp` to `target` unless another process wrote `target` meanwhile: the first writer wins."""
    taken = CheckpointError(
        f"{target} was written by another process meanwhile; it is kept as that one wrote it (choose another {option})"
    )
    if target.exists():
        raise taken
    try:
        os.replace(tmp, target)  # fails on a non-empty directory made since the check
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise taken from None
        raise


def check_disk_space(target: Path, nbytes: int, option: str = "--mlx-path") -> None:
    """Refuse, before writing anything, a model that the disk under `target` cannot hold."""
    parent = Path(target).resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < nbytes + (64 << 20):
        raise CheckpointError(
            f"not enough disk space at {parent}: the model needs {nbytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB is free; free some or choose another {option}"
        )


def atomic_write_json(path: Path, data) -> None:
    """`path` holds the old JSON or the new one, never a part (flushed to disk before and after the rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


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
    """Copy the tokenizer files of `source` (each inside it); True if they hold a vocabulary."""
    for name in TOKENIZER_FILES:
        file = model_file(source, name)
        if file.exists():
            shutil.copyfile(file, dest / name)
    return any((dest / name).exists() for name in VOCAB_FILES)


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
