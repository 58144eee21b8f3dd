"""The trainer: the loss falls, accumulation is exact, the schedule, exact resume, refusals."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_mqa.errors import CheckpointError, ConfigError
from mlx_mqa.models.quantize import quantize_model
from mlx_mqa.train.checkpoints import list_checkpoints
from mlx_mqa.train.config import TrainConfig, make_schedule
from mlx_mqa.train.data import SpanCorruptionData
from mlx_mqa.train.trainer import Trainer

from .tiny import span_trainer, tiny_model, windows


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
    big = Trainer(
        tiny_model(),
        SpanCorruptionData(w, tokenizer, 8, seed=3),
        TrainConfig(steps=1, batch_size=8, optimizer="adamw", lr=1e-3),
        tmp_path / "a",
    )
    acc = Trainer(
        tiny_model(),
        SpanCorruptionData(w, tokenizer, 4, seed=3),
        TrainConfig(steps=1, batch_size=4, grad_accum=2, optimizer="adamw", lr=1e-3),
        tmp_path / "b",
    )
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
    cfg = TrainConfig(
        steps=8,
        batch_size=4,
        grad_accum=2,
        optimizer="adafactor",
        lr=1e-2,
        warmup_steps=2,
        schedule="cosine",
        save_every=3,
        keep_checkpoints=2,
        eval_every=4,
    )

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
        _run(tokenizer, tmp_path / "b", crash_at=5)  # checkpoint at 3; steps 4-5 are lost
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["ckpt-0000003"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "b" / f".ckpt-0000006.partial-{dead.pid}-0badc0de").mkdir()  # as a kill during a save leaves it
    resumed = _run(tokenizer, tmp_path / "b", resume=True)
    assert resumed.losses == straight.losses
    assert [e["eval_loss"] for e in resumed.evals] == [e["eval_loss"] for e in straight.evals]
    for (k, a), (_, b) in zip(tree_flatten(straight.model.parameters()), tree_flatten(resumed.model.parameters())):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=k)
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == ["ckpt-0000006", "ckpt-0000008"]
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, 9))


def test_stop_request_saves_at_a_step_boundary(tokenizer, tmp_path):
    tr = span_trainer(tokenizer, tmp_path / "r", kv_heads=4, steps=10, save_every=0)
    tr.callback = lambda e: tr.request_stop() if e["event"] == "step" and e["step"] == 2 else None
    out = tr.train()
    assert out["stopped"] and [p.name for p in list_checkpoints(tmp_path / "r")] == ["ckpt-0000002"]


def _saved(tokenizer, run_dir, kv_heads=2, batch_size=4):
    span_trainer(tokenizer, run_dir, kv_heads=kv_heads, batch_size=batch_size, steps=2, keep_tokenizer=True).train()
    return list_checkpoints(run_dir)[-1]


def test_corrupt_checkpoint_is_refused(tokenizer, tmp_path):
    ckpt = _saved(tokenizer, tmp_path / "r")
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    tr = span_trainer(tokenizer, tmp_path / "r")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        tr.resume()
    (ckpt / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        tr.resume()


def test_mismatched_checkpoint_is_refused(tokenizer, tmp_path):
    _saved(tokenizer, tmp_path / "r", kv_heads=2)
    other_model = span_trainer(tokenizer, tmp_path / "r", kv_heads=1)
    with pytest.raises(CheckpointError, match="different model.*num_key_value_heads"):
        other_model.resume()
    other_settings = span_trainer(tokenizer, tmp_path / "r", batch_size=8)
    with pytest.raises(CheckpointError, match="other settings.*batch_size"):
        other_settings.resume()


def test_bfloat16_training_and_checkpoint(tokenizer, tmp_path):
    import mlx_mqa

    tr = span_trainer(tokenizer, tmp_path / "r", kv_heads=4, steps=3, keep_tokenizer=True, dtype="bfloat16", lr=1e-2)
    tr.train()
    assert all(np.isfinite(tr.losses)) and tr.model.shared.weight.dtype == mx.bfloat16
    model, _ = mlx_mqa.load(list_checkpoints(tmp_path / "r")[-1])
    assert model.shared.weight.dtype == mx.bfloat16


def test_resume_refuses_another_schedule_horizon(tokenizer, tmp_path):
    def trainer(run, steps, horizon=None):
        cosine = dict(schedule="cosine", total_steps_for_schedule=horizon, lr=1e-2)
        return span_trainer(tokenizer, tmp_path / run, steps=steps, **cosine)

    def lrs(run):
        log = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [r["lr"] for r in log if r["event"] == "step"]

    trainer("a", 2).train()
    with pytest.raises(CheckpointError, match=r"decaying over 2 steps, this run's decays over 4.*--schedule-steps 2"):
        trainer("a", 4).resume()
    assert trainer("a", 4, horizon=2).resume() is not None  # the same horizon, named
    # Planned for 4 steps from the start: resuming with --steps 4 keeps the schedule exactly.
    trainer("b", 2, horizon=4).train()
    resumed = trainer("b", 4)
    assert resumed.resume() is not None
    resumed.train()
    trainer("c", 4).train()
    assert lrs("b") == lrs("c") and len(lrs("c")) == 4 and lrs("c")[-1] < lrs("c")[0]


def test_resume_with_more_steps_keeps_a_schedule_without_horizon(tokenizer, tmp_path):
    span_trainer(tokenizer, tmp_path / "r", steps=2).train()
    tr = span_trainer(tokenizer, tmp_path / "r")
    assert tr.resume() is not None and tr.train()["step"] == 4


def test_a_quantized_model_is_refused_before_training(tokenizer, tmp_path):
    model = quantize_model(tiny_model(2), bits=4, group_size=32)
    with pytest.raises(ConfigError, match="quantized.*convert without -q for uptraining, quantize afterwards"):
        span_trainer(tokenizer, tmp_path / "r", model=model, steps=2)
    assert not (tmp_path / "r").exists()
