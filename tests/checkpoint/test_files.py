"""Model directories: written atomically, in shards with an index when large, loaded back exactly."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_mqa import load_model
from mlx_mqa.checkpoint import files
from mlx_mqa.conversion import convert
from tests.helpers import batch


def test_make_shards_respects_the_limit_and_keeps_order():
    sizes = {f"t{i}": 40 for i in range(5)}
    assert files.make_shards(sizes, max_bytes=100) == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert files.make_shards({"big": 400}, max_bytes=8) == [["big"]]  # never split a tensor


def test_sharded_conversion_loads_to_the_same_model(tmp_path, tokenizer, monkeypatch, hf_checkpoint):
    src = hf_checkpoint("t5-small")
    whole = load_model(convert(str(src), tmp_path / "whole", kv_heads=2, dtype="float32"))
    monkeypatch.setattr(files, "MAX_SHARD_BYTES", 4 << 20)
    out = convert(str(src), tmp_path / "sharded", kv_heads=2, dtype="float32")
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(names) > 2 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == names
    assert index["metadata"]["total_size"] == sum(v.nbytes for _, v in tree_flatten(whole.parameters()))
    sharded = load_model(out)
    ids, mask = batch(tokenizer)
    dec = mx.array([[0, 5, 6]] * ids.shape[0])
    a = np.array(whole(mx.array(ids), dec, mx.array(mask)))
    b = np.array(sharded(mx.array(ids), dec, mx.array(mask)))
    np.testing.assert_array_equal(a, b)


def test_model_card_names_the_conversion(tmp_path, hf_checkpoint):
    out = convert(str(hf_checkpoint("t5-small")), tmp_path / "mqa", kv_heads=1, dtype="float32")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: mlx" in card
    assert "multi-query" in card and "(`mean`" in card
    assert "base_model" not in card  # a local source path is no hub id


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with files.atomic_directory(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_streamed_writing_round_trips_and_checks_what_it_is_given(tmp_path):
    w = {"a": mx.arange(12, dtype=mx.float32).reshape(3, 4).astype(mx.bfloat16), "b": mx.ones((5,), mx.uint32)}
    plan = {k: files.TensorPlan(tuple(v.shape), v.dtype) for k, v in w.items()}
    files.save_streamed(tmp_path, plan, w.__getitem__, max_bytes=16)  # two shards
    back = {}
    for f in sorted(tmp_path.glob("*.safetensors")):
        back.update(mx.load(str(f)))
    assert set(back) == set(w) and all(back[k].dtype == w[k].dtype for k in w)
    assert all(mx.array_equal(back[k], w[k]).item() for k in w)
    bad = dict(w, b=mx.ones((6,), mx.uint32))
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match=r"b: produced .*\(6,\), planned"):
        files.save_streamed(tmp_path / "x", plan, bad.__getitem__)
