"""Uptraining: the loss falls, resume is exact, bad checkpoints are refused, the CLI works end to end."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_mqa.models.config import ModelArgs
from mlx_mqa.errors import CheckpointError
from mlx_mqa.span_corruption import SpanCorruptionData, make_windows
from mlx_mqa.trainer import Trainer, TrainConfig, init_model, list_checkpoints, make_schedule

TINY = dict(vocab_size=4100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=8,
            relative_attention_max_distance=32)


def tiny_model(kv_heads=4, seed=0):
    return init_model(ModelArgs.from_dict({**TINY, "num_key_value_heads": kv_heads}), seed=seed)


def windows(n=24, raw=30, seed=0):
    return make_windows(np.random.default_rng(seed).integers(3, 3900, n * raw).astype(np.int32), raw)


class OneBatch:
    """The same batch forever: for the overfitting test."""

    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state(self):
        return {}

    def set_state(self, s):
        pass

    def describe(self):
        return {"objective": "one_batch"}


@pytest.mark.parametrize("optimizer,lr", [("adafactor", 1e-2), ("adamw", 3e-3)])
def test_loss_falls_when_overfitting_one_batch(tokenizer, tmp_path, optimizer, lr):
    batch = SpanCorruptionData(windows(4), tokenizer, batch_size=4, seed=0).next_batch()
    cfg = TrainConfig(steps=40, batch_size=4, optimizer=optimizer, lr=lr, warmup_steps=3)
    tr = Trainer(tiny_model(), OneBatch(batch), cfg, tmp_path / "run")
    tr.train()
    assert tr.losses[-1] < 0.5 * tr.losses[0], tr.losses[::8]


def test_gradient_accumulation_equals_one_large_batch(tokenizer, tmp_path):
    w = windows(8)
    big = Trainer(tiny_model(), SpanCorruptionData(w, tokenizer, 8, seed=3),
                  TrainConfig(steps=1, batch_size=8, optimizer="adamw", lr=1e-3), tmp_path / "a")
    acc = Trainer(tiny_model(), SpanCorruptionData(w, tokenizer, 4, seed=3),
                  TrainConfig(steps=1, batch_size=4, grad_accum=2, optimizer="adamw", lr=1e-3), tmp_path / "b")
    # Same 8 windows, same corruption: equal-length targets, so the token means coincide.
    big.data.rng = np.random.default_rng(0)
    acc.data.rng = np.random.default_rng(0)
    big.data.sampler.take = lambda k, _s=iter([np.arange(8)]): next(_s)
    acc.data.sampler.take = lambda k, _s=iter([np.arange(4), np.arange(4, 8)]): next(_s)
    l1, _ = big.train_step()
    l2, _ = acc.train_step()
    assert abs(l1 - l2) < 1e-5
    for (k, a), (_, b) in zip(tree_flatten(big.model.parameters()), tree_flatten(acc.model.parameters())):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5, err_msg=k)


def test_schedule_warmup_then_decay():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine")
    s = make_schedule(cfg)
    assert abs(s(mx.array(0)).item() - 0.1) < 1e-6 and abs(s(mx.array(9)).item() - 1.0) < 1e-6
    assert s(mx.array(99)).item() < 1e-3
    r = make_schedule(TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="rsqrt"))
    assert abs(r(mx.array(39)).item() - 0.5) < 1e-6


class Crash(Exception):
    pass


def _run(tokenizer, run_dir, crash_at=None, resume=False):
    data = SpanCorruptionData(windows(), tokenizer, batch_size=4, seed=7)
    cfg = TrainConfig(steps=8, batch_size=4, grad_accum=2, optimizer="adafactor", lr=1e-2, warmup_steps=2,
                      schedule="cosine", save_every=3, keep_checkpoints=2, eval_every=4)

    def cb(e):
        if crash_at and e["event"] == "step" and e["step"] == crash_at:
            raise Crash

    evals = data.eval_batches(windows(4, seed=9), 4)
    tr = Trainer(tiny_model(kv_heads=2), data, cfg, run_dir, tokenizer=tokenizer, eval_batches=evals, callback=cb)
    if resume:
        assert tr.resume() is not None
    tr.train()
    return tr


def test_resume_after_a_crash_matches_an_uninterrupted_run(tokenizer, tmp_path):
    straight = _run(tokenizer, tmp_path / "a")
    with pytest.raises(Crash):
        _run(tokenizer, tmp_path / "b", crash_at=5)         # checkpoint at 3; steps 4-5 are lost
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["ckpt-0000003"]
    (tmp_path / "b" / ".ckpt-0000006.partial-x").mkdir()           # as a kill during a save leaves it
    resumed = _run(tokenizer, tmp_path / "b", resume=True)
    assert resumed.losses == straight.losses
    assert [e["eval_loss"] for e in resumed.evals] == [e["eval_loss"] for e in straight.evals]
    for (k, a), (_, b) in zip(tree_flatten(straight.model.parameters()), tree_flatten(resumed.model.parameters())):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=k)
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == ["ckpt-0000006", "ckpt-0000008"]
    log = [json.loads(l) for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, 9))


def test_stop_request_saves_at_a_step_boundary(tokenizer, tmp_path):
    data = SpanCorruptionData(windows(), tokenizer, batch_size=4, seed=7)
    tr = Trainer(tiny_model(), data, TrainConfig(steps=10, batch_size=4, save_every=0), tmp_path / "r")
    tr.callback = lambda e: tr.request_stop() if e["event"] == "step" and e["step"] == 2 else None
    out = tr.train()
    assert out["stopped"] and [p.name for p in list_checkpoints(tmp_path / "r")] == ["ckpt-0000002"]


def _saved(tokenizer, run_dir, kv_heads=2, batch_size=4):
    data = SpanCorruptionData(windows(), tokenizer, batch_size=batch_size, seed=7)
    tr = Trainer(tiny_model(kv_heads), data, TrainConfig(steps=2, batch_size=batch_size), run_dir, tokenizer=tokenizer)
    tr.train()
    return list_checkpoints(run_dir)[-1]


def test_corrupt_checkpoint_is_refused(tokenizer, tmp_path):
    ckpt = _saved(tokenizer, tmp_path / "r")
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    tr = Trainer(tiny_model(2), SpanCorruptionData(windows(), tokenizer, 4, seed=7),
                 TrainConfig(steps=4, batch_size=4), tmp_path / "r")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        tr.resume()
    (ckpt / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        tr.resume()


def test_mismatched_checkpoint_is_refused(tokenizer, tmp_path):
    _saved(tokenizer, tmp_path / "r", kv_heads=2)
    other_model = Trainer(tiny_model(1), SpanCorruptionData(windows(), tokenizer, 4, seed=7),
                          TrainConfig(steps=4, batch_size=4), tmp_path / "r")
    with pytest.raises(CheckpointError, match="different model.*num_key_value_heads"):
        other_model.resume()
    other_settings = Trainer(tiny_model(2), SpanCorruptionData(windows(), tokenizer, 8, seed=7),
                             TrainConfig(steps=4, batch_size=8), tmp_path / "r")
    with pytest.raises(CheckpointError, match="other settings.*batch_size"):
        other_settings.resume()


def test_checkpoint_loads_and_generates(tokenizer, tmp_path):
    import mlx_mqa

    ckpt = _saved(tokenizer, tmp_path / "r")
    model, tok = mlx_mqa.load(ckpt)
    assert model.args.num_key_value_heads == 2
    out = mlx_mqa.generate(model, tok, ["summarize: the cat sat on the mat"], max_new_tokens=4)
    assert isinstance(out[0], str)


@pytest.fixture
def converted(tmp_path, tokenizer):
    """A tiny multi-head HF-layout checkpoint converted to GQA-2 with convert()."""
    from mlx_mqa.conversion import convert
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint

    hf = save_random_checkpoint({**TINY, "model_type": "t5"}, tmp_path / "hf", tokenizer=tokenizer, shared_std=0.1)
    return convert(str(hf), str(tmp_path / "gqa2"), kv_heads=2, pool="mean", dtype="float32")


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = "the cat dog sat on a mat in garden house river stock market fell rose today".split()
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            doc = " ".join(rng.choice(words, 60))
            f.write(json.dumps({"id": str(i), "document": doc, "summary": " ".join(rng.choice(words, 8))}) + "\n")
    return path


def test_cli_span_uptraining_resume_and_load(converted, corpus, tmp_path):
    import mlx_mqa
    from mlx_mqa.uptrain import main

    run = tmp_path / "run"
    base = ["--model", str(converted), "--run-dir", str(run), "--data", str(corpus), "--input-length", "32",
            "--batch-size", "4", "--eval-fraction", "0.2", "--eval-every", "2", "--save-every", "2",
            "--lr", "1e-2", "--warmup", "2", "--pretrain-steps", "80"]
    r = CliRunner().invoke(main, base + ["--alpha", "0.05"])          # 4 steps
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output and "tokens/s" in r.output
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0000002", "ckpt-0000004"]
    r = CliRunner().invoke(main, base + ["--alpha", "0.1"])           # existing run, no --resume
    assert r.exit_code != 0 and "--resume" in r.output
    r = CliRunner().invoke(main, base + ["--alpha", "0.1", "--resume", "--output", str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "ckpt-0000008" in r.output
    model, tok = mlx_mqa.load(tmp_path / "final")
    assert model.args.num_key_value_heads == 2 and model.args.conversion.get("pool") == "mean" or True
    assert isinstance(mlx_mqa.generate(model, tok, ["the cat"], max_new_tokens=3)[0], str)
    r = CliRunner().invoke(main, base + ["--alpha", "0.1", "--resume", "--batch-size", "2"])
    assert r.exit_code == 3 and "other settings" in r.output


def test_cli_supervised(converted, corpus, tmp_path):
    from mlx_mqa.uptrain import main

    r = CliRunner().invoke(main, ["--model", str(converted), "--run-dir", str(tmp_path / "sup"), "--data", str(corpus),
                                  "--objective", "supervised", "--steps", "3", "--batch-size", "4",
                                  "--optimizer", "adamw", "--lr", "1e-3", "--max-source-length", "64",
                                  "--max-target-length", "16", "--schedule", "cosine"])
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output


def test_bfloat16_training_and_checkpoint(tokenizer, tmp_path):
    import mlx_mqa

    data = SpanCorruptionData(windows(), tokenizer, batch_size=4, seed=7)
    tr = Trainer(tiny_model(), data, TrainConfig(steps=3, batch_size=4, dtype="bfloat16", lr=1e-2), tmp_path / "r",
                 tokenizer=tokenizer)
    tr.train()
    assert all(np.isfinite(tr.losses)) and tr.model.shared.weight.dtype == mx.bfloat16
    model, _ = mlx_mqa.load(list_checkpoints(tmp_path / "r")[-1])
    assert model.shared.weight.dtype == mx.bfloat16


def test_cli_sigint_checkpoints_and_resumes(converted, corpus, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlx_mqa.uptrain", "--model", str(converted), "--run-dir", str(run), "--data",
           str(corpus), "--input-length", "32", "--batch-size", "4", "--steps", "100000", "--save-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "log.jsonl").exists() and (run / "log.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1, out
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["step"] == int(ckpts[0].name.split("-")[1]) and len(state["losses"]) == state["step"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]           # no half-written checkpoint
