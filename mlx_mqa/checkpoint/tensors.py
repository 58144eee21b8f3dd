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
    "U16": (np.uint16, mx.uint16),
    "U32": (np.uint32, mx.uint32),
    "U64": (np.uint64, mx.uint64),
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
    """(offset of the data, {name: {dtype, shape, data_offsets}}) of a safetensors file, every entry checked
    against its shape, its dtype and the file's size before anything is read. The messages never quote the
    file's bytes (it may be any file)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"its header length exceeds the file's {size} bytes")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise ValueError("its header is not JSON") from None
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        header.pop("__metadata__", None)
        for name, t in header.items():
            _check_entry(name, t, size - 8 - n)
        return 8 + n, header
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e})") from None


def _check_entry(name: str, t, data_bytes: int) -> None:
    """One header entry: a known dtype, a shape of sizes, and offsets inside the data spanning exactly
    shape x dtype bytes."""

    def ints(x, n=None):
        return isinstance(x, list) and (n is None or len(x) == n) and all(type(i) is int and i >= 0 for i in x)

    if not isinstance(t, dict) or t.get("dtype") not in _NUMPY:
        raise ValueError(f"{name}: unsupported dtype {t.get('dtype') if isinstance(t, dict) else None!r}")
    shape, offsets = t.get("shape"), t.get("data_offsets")
    if not ints(shape) or not ints(offsets, 2) or offsets[0] > offsets[1]:
        raise ValueError(f"{name}: malformed shape {shape!r} or data_offsets {offsets!r}")
    if offsets[1] > data_bytes:
        raise ValueError(f"{name}: data up to byte {offsets[1]} announced, the file holds {data_bytes}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NUMPY[t["dtype"]]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(
            f"{name}: {offsets[1] - offsets[0]} bytes stored for a {t['dtype']} tensor of shape {tuple(shape)} "
            f"({nbytes} bytes)"
        )


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
            # The message of a failed unpickling quotes the file's bytes: only its kind is told.
            raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({type(e).__name__})") from None
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
