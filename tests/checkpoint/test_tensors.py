"""Reading checkpoints tensor by tensor: exact float32 for every stored dtype, sizes checked, .bin mapped."""

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
    with pytest.raises(CheckpointError, match="truncated or corrupt.*bytes of tensors announced"):
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
