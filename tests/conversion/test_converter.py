"""Conversion from every checkpoint format, and bad input refused cleanly with nothing left behind."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa import load, load_model
from mlx_mqa.checkpoint.random_init import random_t5_weights, save_random_checkpoint
from mlx_mqa.conversion import convert
from mlx_mqa.errors import CheckpointError
from tests.helpers import batch, t5_config

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "convert.py"), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def small_cfg():
    return t5_config("flan-t5-small", num_layers=1, num_decoder_layers=1, vocab_size=4200)


def reference(path, tokenizer):
    model = load_model(path, dtype="float32")
    ids, mask = batch(tokenizer)
    return np.array(model(mx.array(ids), mx.zeros((3, 2), mx.int32), mx.array(mask)))


def test_single_sharded_and_bin_convert_to_the_same_model(tmp_path, small_cfg, tokenizer):
    single = save_random_checkpoint(small_cfg, tmp_path / "single", seed=1, tokenizer=tokenizer)
    sharded = save_random_checkpoint(small_cfg, tmp_path / "sharded", seed=1, tokenizer=tokenizer, shards=3)
    assert (sharded / "model.safetensors.index.json").exists() and len(list(sharded.glob("*.safetensors"))) == 3
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(
        {k: torch.from_numpy(v) for k, v in random_t5_weights(small_cfg, 1).items()}, bin_dir / "pytorch_model.bin"
    )
    shutil.copy(single / "config.json", bin_dir)
    tokenizer.save_pretrained(str(bin_dir))
    outs = []
    for src in (single, sharded, bin_dir):
        out = convert(str(src), tmp_path / f"mlx-{src.name}", kv_heads=2, dtype="float32")
        assert json.loads((out / "config.json").read_text())["conversion"]["kv_heads"] == 2
        assert (out / "tokenizer.json").exists()
        outs.append(reference(out, tokenizer))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_bf16_source_checkpoint(tmp_path, small_cfg, tokenizer):
    from safetensors.torch import save_file

    src = tmp_path / "bf16"
    src.mkdir()
    w = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in random_t5_weights(small_cfg, 2).items()}
    save_file(w, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(small_cfg))
    tokenizer.save_pretrained(str(src))
    model, tok = load(convert(str(src), tmp_path / "out", dtype="float32"))
    np.testing.assert_array_equal(np.array(model.shared.weight), w["shared.weight"].float().numpy())


def test_cli_converts_and_load_generates(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    r = run_cli("--hf-path", src, "--mlx-path", tmp_path / "mqa", "--kv-heads", 1, "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    model, tok = load(tmp_path / "mqa")
    assert model.args.num_key_value_heads == 1 and model.shared.weight.dtype == mx.bfloat16
    from mlx_mqa import generate

    assert len(generate(model, tok, ["summarize: hello world"], max_new_tokens=4)) == 1


def test_uneven_group_count_is_refused_with_valid_values(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    r = run_cli("--hf-path", src, "--mlx-path", tmp_path / "out", "--kv-heads", 4)
    assert r.returncode == 2
    assert "--kv-heads 4 does not divide the 6 attention heads; valid values: 1, 2, 3, 6" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_directory(tmp_path):
    r = run_cli("--hf-path", tmp_path / "nope", "--mlx-path", tmp_path / "out")
    assert r.returncode == 3 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_not_a_t5_config(tmp_path):
    src = tmp_path / "bert"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    r = run_cli("--hf-path", src, "--mlx-path", tmp_path / "out")
    assert r.returncode == 2 and "is not a T5 config" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_weights_are_refused(tmp_path, small_cfg, tokenizer, fmt):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    if fmt == "bin":
        torch.save({k: torch.from_numpy(v) for k, v in random_t5_weights(small_cfg).items()}, src / "pytorch_model.bin")
        (src / "model.safetensors").unlink()
    f = src / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    r = run_cli("--hf-path", src, "--mlx-path", tmp_path / "out")
    assert r.returncode == 3 and "truncated or corrupt" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_missing_shard_and_missing_weights(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer, shards=2)
    next(src.glob("model-00002*")).unlink()
    with pytest.raises(CheckpointError, match="shards that are missing"):
        convert(str(src), tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(small_cfg))
    with pytest.raises(CheckpointError, match="holds no weights"):
        convert(str(empty), tmp_path / "out")


def test_interrupted_conversion_leaves_nothing(tmp_path, small_cfg, tokenizer, monkeypatch):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    import mlx_mqa.conversion.converter as conv

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "atomic_write_json", boom)  # dies after the weights were written
    with pytest.raises(KeyboardInterrupt):
        convert(str(src), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_output_is_kept_unless_overwrite(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    out = convert(str(src), tmp_path / "out", kv_heads=2)
    with pytest.raises(CheckpointError, match="already exists"):
        convert(str(src), out, kv_heads=1)
    convert(str(src), out, kv_heads=1, overwrite=True)
    assert load_model(out).args.num_key_value_heads == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_config_weights_mismatch(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_decoder_layers"] = 3
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="1 decoder blocks but config.json says 1 / 3"):
        convert(str(src), tmp_path / "out")


def test_tokenizer_that_does_not_fit_the_vocabulary_is_refused(tmp_path, small_cfg, tokenizer):
    cfg = dict(small_cfg, vocab_size=1000)  # the test tokenizer has 4100 tokens
    src = save_random_checkpoint(cfg, tmp_path / "src", tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match="has 4100 tokens but the model's vocabulary has 1000"):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="4100 tokens"):
        load(src)  # a plain HF directory with the same mismatch


def test_every_tensor_is_checked_against_the_config(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    cfg = json.loads((src / "config.json").read_text())
    cfg["d_ff"] = small_cfg["d_ff"] * 2  # the FFN weights disagree; attention and embeddings do not
    (src / "config.json").write_text(json.dumps(cfg))
    msg = r"DenseReluDense\.wi_0\.weight has shape \(1024, 512\) but config.json implies \(2048, 512\) \(6 tensor"
    with pytest.raises(CheckpointError, match=msg):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="config.json implies"):
        load_model(src)


def test_a_full_disk_is_refused_before_writing_or_cleaned_up_after(tmp_path, small_cfg, tokenizer, monkeypatch):
    import errno
    from collections import namedtuple

    from mlx_mqa.checkpoint import files

    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 20))
    with pytest.raises(CheckpointError, match=r"not enough disk space at .*the model needs .* GiB is free"):
        convert(str(src), tmp_path / "out")
    monkeypatch.undo()

    def full(a):  # the disk fills up in the middle of the weights
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_tensor_bytes", full)
    with pytest.raises(CheckpointError, match="cannot write .*No space left on device; nothing was written"):
        convert(str(src), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_conversion_holds_about_one_tensor_at_a_time(tmp_path, tokenizer):
    """MLX's peak memory during a conversion stays within a few tensors, not the model's size."""
    cfg = t5_config("t5-small", num_layers=4, num_decoder_layers=4, vocab_size=4200)
    src = save_random_checkpoint(cfg, tmp_path / "src", tokenizer=tokenizer)
    sizes = [np.prod(s) * 4 for s in (t.shape for t in mx.load(str(src / "model.safetensors")).values())]
    mx.clear_cache()
    mx.reset_peak_memory()
    convert(str(src), tmp_path / "out", kv_heads=1, dtype="bfloat16")
    assert mx.get_peak_memory() < 3 * max(sizes) < 0.5 * sum(sizes), (mx.get_peak_memory(), max(sizes), sum(sizes))


def convert_cli(*args):
    """The convert CLI in this process (fast): its result."""
    from click.testing import CliRunner

    from mlx_mqa.convert import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("target", ["src", ".", "src/../src"])  # the source, its parent, another spelling
def test_overwrite_never_deletes_the_source_or_an_ancestor_of_it(tmp_path, small_cfg, tokenizer, target):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    before = sorted(p.name for p in src.iterdir())
    r = convert_cli("--hf-path", src, "--mlx-path", tmp_path / target, "--kv-heads", 2, "--overwrite")
    assert r.exit_code == 2 and r.output.startswith("error: --mlx-path ") and "which this run reads" in r.output
    assert len(r.output.strip().splitlines()) == 1 and sorted(p.name for p in src.iterdir()) == before
    r = convert_cli("--hf-path", src, "--mlx-path", tmp_path / "tok", "--tokenizer", src, "--overwrite")
    assert r.exit_code == 0, r.output


def test_a_stale_partial_output_of_a_killed_convert_is_removed(tmp_path, small_cfg, tokenizer):
    import subprocess

    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".out.partial-{p.pid}-0badc0de"  # what a SIGKILL'd convert leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    r = convert_cli("--hf-path", src, "--mlx-path", tmp_path / "out", "--kv-heads", 2)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_an_unwritable_output_is_refused_before_reading_and_named(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    (tmp_path / "file").write_text("x")
    r = convert_cli("--hf-path", src, "--mlx-path", tmp_path / "file" / "out")
    assert r.exit_code == 2 and "cannot write --mlx-path" in r.output and "is a file" in r.output
    assert "disk space" not in r.output and "[convert] reading" not in r.output


def test_the_output_follows_the_umask(tmp_path, small_cfg, tokenizer):
    src = save_random_checkpoint(small_cfg, tmp_path / "src", tokenizer=tokenizer)
    old = os.umask(0o022)
    try:
        out = convert(str(src), tmp_path / "out", kv_heads=2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
