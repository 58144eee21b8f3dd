"""Model directories: written atomically, in shards with an index when large, loaded back exactly."""

import json
import os
import re
import stat

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_mqa import load_model
from mlx_mqa.checkpoint import files
from mlx_mqa.conversion import convert
from mlx_mqa.errors import CheckpointError, ConfigError
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


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_existing_outputs_are_replaced_only_with_overwrite_and_never_a_source(tmp_path):
    src = tmp_path / "models" / "src"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match=r"notes already exists; choose another --output or pass --overwrite"):
        files.check_output(tmp_path / "notes", False, [src], option="--output")
    files.check_output(tmp_path / "notes", True, [src], option="--output")
    for target in (src, src.parent, tmp_path, src / ".." / "src"):  # the source, its ancestors, another spelling
        with pytest.raises(ConfigError, match=r"would replace .*src, which this run reads; choose another --output"):
            files.check_output(target, True, [src], option="--output")
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ConfigError, match="which this run reads"):
        files.check_output(tmp_path / "link", True, [src])
    with pytest.raises(ConfigError, match=r"cannot write --mlx-path .*: .*config.json is a file"):
        files.check_output(src / "config.json" / "out", False)
    assert (src / "config.json").read_text() == "{}"


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".out.partial-{dead}-0badc0de"
    trash = tmp_path / f".out.old-{dead}-0badc0de"
    live = tmp_path / f".out.partial-{alive}-12345678"  # another writer, still running
    other = tmp_path / f".out2.partial-{dead}-0badc0de"  # another output's
    for d in (stale, trash, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    with files.atomic_directory(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])


def test_the_first_of_two_writers_wins_and_the_second_fails_cleanly(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"out was written by another process meanwhile; it is kept"):
        with files.atomic_directory(out) as tmp:
            (tmp / "config.json").write_text('{"mine": 2}')
            out.mkdir()  # the other writer finishes first
            (out / "config.json").write_text('{"mine": 1}')
    assert json.loads((out / "config.json").read_text()) == {"mine": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_processes_writing_one_output_leave_the_winners_output(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, time; from pathlib import Path; from mlx_mqa.checkpoint.files import atomic_directory\n"
        "from mlx_mqa.errors import CheckpointError\n"
        "try:\n"
        "    with atomic_directory(Path(sys.argv[1])) as tmp:\n"
        "        (tmp / 'who').write_text(sys.argv[2]); time.sleep(float(sys.argv[3]))\n"
        "except CheckpointError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out"), name, delay], stdout=subprocess.PIPE)
        for name, delay in (("first", "0.5"), ("second", "3"))
    ]
    codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0, 3], codes
    assert (tmp_path / "out" / "who").read_text() == "first"
    assert b"written by another process" in procs[1].stdout.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with files.atomic_directory(tmp_path / "out") as tmp:
        files.save_mlx_weights(tmp, {"w": mx.ones((4,))})
        files.atomic_write_json(tmp / "config.json", {"a": 1})
    partial = [s for s in synced if ".out.partial-" in s]
    assert any(s.endswith("model.safetensors") for s in partial) and any(s.endswith("config.json") for s in partial)
    assert any(re.fullmatch(r".*/\.out\.partial-\d+-[0-9a-f]+", s) for s in partial)  # the directory
    assert synced[-1] == str(tmp_path)  # the rename itself


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with files.atomic_directory(tmp_path / "out") as tmp:
            files.save_mlx_weights(tmp, {"w": mx.ones((4,))})
            files.atomic_write_json(tmp / "config.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()} == {0o640}
