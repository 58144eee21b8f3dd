"""Tensors of a checkpoint read one at a time: safetensors through a memory map (pages of the file, which the
system can reclaim, not the process's own memory), PyTorch `.bin` through `torch.load(mmap=True)`.

`CheckpointTensors` is a read-only mapping name -> float32 numpy array that reads a tensor when it is asked
for, so a conversion holds about one tensor at a time whatever the model's size."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError

# The safetensors dtype names, read (numpy; bfloat16 has none: it is read as uint16 and widened) and written (MLX).
DTYPES = {
    "F64": (np.float64, mx.float64),
    "F32": (np.float32, mx.float32),
    "F16": (np.float16, mx.float16),
    "BF16": (np.uint16, mx.bfloat16),
    "I64": (np.int64, mx.int64),
    "I32": (np.int32, mx.int32),
    "I16": (np.int16, mx.int16),
    "I8": (np.int8, mx.int8),
    "U8": (np.uint8, mx.uint8),
    "U32": (np.uint32, mx.uint32),
    "BOOL": (np.bool_, mx.bool_),
}
_NUMPY = {name: np_type for name, (np_type, _) in DTYPES.items()}
SAFETENSORS_NAME = {mx_type: name for name, (_, mx_type) in DTYPES.items()}


class Spec(NamedTuple):
    """A tensor's shape and stored dtype, known without reading it."""

    shape: Tuple[int, ...]
    dtype: str


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(file: Path) -> Tuple[int, dict]:
    """(offset of the data, {name: {dtype, shape, data_offsets}}) of a safetensors file, checked against its size."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if 8 + n + end > size:
            raise ValueError(f"{8 + n + end} bytes of tensors announced, {size} on disk")
        unknown = {t["dtype"] for t in header.values()} - set(_NUMPY)
        if unknown:
            raise ValueError(f"unsupported dtype(s) {sorted(unknown)}")
        return 8 + n, header
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e})") from None


class CheckpointTensors(Mapping):
    """Read-only name -> float32 numpy array over checkpoint files, each tensor read when asked for."""

    def __init__(self, files: Sequence[Path]):
        self._where: Dict[str, Tuple[Path, object]] = {}
        self._specs: Dict[str, Spec] = {}
        self._maps: Dict[Path, object] = {}
        for file in files:
            if file.suffix == ".bin":
                self._index_bin(file)
            else:
                self._index_safetensors(file)

    def _index_safetensors(self, file: Path) -> None:
        start, header = read_safetensors_header(file)
        self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r") if header else None
        for name, t in header.items():
            begin, end = t["data_offsets"]
            self._where[name] = (file, (start + begin, start + end, t["dtype"], tuple(t["shape"])))
            self._specs[name] = Spec(tuple(t["shape"]), t["dtype"])

    def _index_bin(self, file: Path) -> None:
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{file} is a PyTorch .bin checkpoint; install torch (pip install 'mlx-mqa[torch]')"
            ) from None
        try:
            try:  # zip-format files map their storages; legacy ones are read whole
                state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({type(e).__name__}: {e})") from None
        for name, t in state.items():
            self._where[name] = (file, t)
            self._specs[name] = Spec(tuple(t.shape), str(t.dtype).replace("torch.", ""))

    def specs(self) -> Dict[str, Spec]:
        return dict(self._specs)

    def __getitem__(self, name: str) -> np.ndarray:
        file, ref = self._where[name]
        if not isinstance(ref, tuple):  # a torch tensor (mapped)
            import torch

            return ref.detach().to(torch.float32).numpy()
        begin, end, dtype, shape = ref
        raw = self._maps[file][begin:end].view(_NUMPY[dtype]).reshape(shape)
        if dtype == "BF16":
            return bf16_to_f32(raw)
        return raw if dtype == "F32" else raw.astype(np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
