"""Reading checkpoints tensor by tensor: exact float32 for every stored dtype, sizes checked, .bin mapped."""

import json
import struct

import mlx.core as mx
import numpy as np
import pytest

from mlx_mqa.checkpoint.tensors import CheckpointTensors, Spec
from mlx_mqa.errors import CheckpointError


def test_safetensors_of_every_float_dtype_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float32)}
    for dtype in (mx.float32, mx.bfloat16, mx.float16):
        f = tmp_path / f"{dtype}.safetensors".replace("mlx.core.", "")
        stored = {k: mx.array(v).astype(dtype) for k, v in base.items()}
        mx.save_safetensors(str(f), stored)
        t = CheckpointTensors([f])
        assert t.specs()["a"] == Spec((3, 5), {mx.float32: "F32", mx.bfloat16: "BF16", mx.float16: "F16"}[dtype])
        for k in base:
            assert t[k].dtype == np.float32
            np.testing.assert_array_equal(t[k], np.array(stored[k].astype(mx.float32)))


def test_truncated_or_garbage_files_are_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    mx.save_safetensors(str(f), {"a": mx.zeros((64, 64))})
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*up to byte 16384 announced, the file holds 16284"):
        CheckpointTensors([f])
    f.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        CheckpointTensors([f])


def test_bin_files_read_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    w = {"x": torch.randn(4, 3).to(torch.bfloat16), "y": torch.randn(2)}
    torch.save(w, tmp_path / "pytorch_model.bin")
    t = CheckpointTensors([tmp_path / "pytorch_model.bin"])
    assert set(t) == {"x", "y"} and t.specs()["x"] == Spec((4, 3), "bfloat16")
    np.testing.assert_array_equal(t["x"], w["x"].float().numpy())
    np.testing.assert_array_equal(t["y"], w["y"].numpy())


def _safetensors(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "entry,pattern",
    [
        ({"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}, r"32 bytes stored for a F32 .*\(64 bytes"),
        ({"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 64]}, r"64 bytes stored for a F16 .*\(32 bytes\)"),
        ({"dtype": "F32", "shape": [-4, 4], "data_offsets": [0, 64]}, r"malformed shape \[-4, 4\]"),
        ({"dtype": "F32", "shape": "4x4", "data_offsets": [0, 64]}, r"malformed shape '4x4'"),
        ({"dtype": "F32", "shape": [4, 4], "data_offsets": [64, 0]}, r"malformed shape .* data_offsets \[64, 0\]"),
        ({"dtype": "F32", "shape": [4, 4], "data_offsets": None}, r"data_offsets None"),
        ({"dtype": "Q4", "shape": [4, 4], "data_offsets": [0, 64]}, r"unsupported dtype 'Q4'"),
        ([1, 2], r"unsupported dtype None"),
    ],
)
def test_header_offsets_must_agree_with_shape_and_dtype(tmp_path, entry, pattern):
    f = _safetensors(tmp_path / "model.safetensors", {"w": entry}, bytes(64))
    with pytest.raises(CheckpointError, match=pattern):
        CheckpointTensors([f])


def test_errors_never_quote_the_bytes_of_the_file(tmp_path):
    secret = tmp_path / "model.safetensors"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        CheckpointTensors([secret])
    message = str(e.value).replace(str(tmp_path), "")
    assert "root" not in message and str(int.from_bytes(b"root:x:0", "little")) not in message
    secret.write_bytes(struct.pack("<Q", 8) + b"\xffroot:x:")
    with pytest.raises(CheckpointError, match="header is not JSON") as e:
        CheckpointTensors([secret])
    assert "root" not in str(e.value).replace(str(tmp_path), "")
    torch = pytest.importorskip("torch")  # noqa: F841
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"root:x:0:0")
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(\w+\)$"):
        CheckpointTensors([pickle])
