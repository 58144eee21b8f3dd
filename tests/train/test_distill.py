"""Distillation from the multi-head teacher: the KL term, its gradients, the mixed loss, and bad teachers."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_mqa.errors import ConfigError
from mlx_mqa.models.config import ModelArgs
from mlx_mqa.train.distill import check_teacher, distillation_loss, training_loss
from mlx_mqa.train.init import init_model
from mlx_mqa.train.objectives import IGNORE, loss_terms

from .tiny import TINY, span_trainer, tiny_model, windows


def batch(tokenizer, n=4):
    from mlx_mqa.train.data import SpanCorruptionData

    b = SpanCorruptionData(windows(), tokenizer, n, seed=3).next_batch()
    return {k: mx.array(v) for k, v in b.items()}


def test_the_kl_term_vanishes_when_the_student_is_the_teacher(tokenizer):
    model, b = tiny_model(4), batch(tokenizer)
    s, n = distillation_loss(model, weight=1.0, temperature=2.0)(model, b)
    assert abs(s.item()) < 1e-4 * n.item() and n.item() > 0
    mixed, _ = distillation_loss(model, weight=0.25, temperature=2.0)(model, b)
    ce, _ = loss_terms(model, b)
    np.testing.assert_allclose(mixed.item(), 0.75 * ce.item(), rtol=1e-5)


def test_gradients_reach_the_student_only(tokenizer, tmp_path):
    teacher, student, b = tiny_model(4, seed=1), tiny_model(2, seed=2), batch(tokenizer)
    loss = distillation_loss(teacher, 0.5, 2.0)
    _, grads = nn.value_and_grad(student, loss)(student, b)
    assert sum(float(mx.abs(g).sum()) for _, g in tree_flatten(grads)) > 0
    # Differentiated with respect to the teacher, the same loss has no gradient at all.
    _, teacher_grads = nn.value_and_grad(teacher, lambda t, x: distillation_loss(t, 0.5, 2.0)(student, x))(teacher, b)
    assert all(float(mx.abs(g).max()) == 0 for _, g in tree_flatten(teacher_grads))
    before = {k: np.array(v) for k, v in tree_flatten(teacher.parameters())}
    student_before = {k: np.array(v) for k, v in tree_flatten(student.parameters())}
    tr = span_trainer(tokenizer, tmp_path, model=student, steps=1, teacher=teacher, kd_weight=0.5, kd_temperature=2.0)
    tr.train_step()
    assert all(np.array_equal(v, np.array(dict(tree_flatten(teacher.parameters()))[k])) for k, v in before.items())
    assert any(
        not np.array_equal(v, np.array(dict(tree_flatten(student.parameters()))[k])) for k, v in student_before.items()
    )


def test_the_mixed_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((2, 3, 5)).astype(np.float32), rng.standard_normal((2, 3, 5)).astype(np.float32)
    labels = np.array([[1, 4, IGNORE], [0, 2, 3]])
    w, T = 0.3, 1.7

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    kl = (np.exp(log_softmax(t / T)) * (log_softmax(t / T) - log_softmax(s / T))).sum(-1)
    ce = -np.take_along_axis(log_softmax(s), np.where(labels == IGNORE, 0, labels)[..., None], -1)[..., 0]
    expected = ((w * T * T * kl + (1 - w) * ce) * (labels != IGNORE)).sum()

    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = mx.array(logits)

        def __call__(self, *args):
            return self.logits

    b = {"input_ids": None, "decoder_input_ids": None, "attention_mask": None, "labels": mx.array(labels)}
    got, n = distillation_loss(Fixed(t), w, T)(Fixed(s), b)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-5)
    assert n.item() == 5


def test_a_teacher_that_does_not_match_is_refused(tokenizer):
    student = tiny_model(2)
    with pytest.raises(ConfigError, match="vocabulary has 4000 entries, the student's 4100"):
        check_teacher(init_model(ModelArgs.from_dict({**TINY, "vocab_size": 4000})), student)
    with pytest.raises(ConfigError, match="d_model=32"):
        check_teacher(init_model(ModelArgs.from_dict({**TINY, "d_model": 32, "d_kv": 8})), student)
    other = type("Tok", (), {"get_vocab": lambda self: {"a": 0}})()
    with pytest.raises(ConfigError, match="tokenizer differs"):
        check_teacher(tiny_model(4), student, other, tokenizer)
    with pytest.raises(ConfigError, match="needs a --teacher"):
        training_loss(student, None, 0.5, 1.0)
    with pytest.raises(ConfigError, match="needs --kd-weight > 0"):
        training_loss(student, tiny_model(4), 0.0, 1.0)
    with pytest.raises(ConfigError, match="kd-weight must be in"):
        span_trainer(tokenizer, "unused-run", model=student, kd_weight=1.5)


def test_cli_refuses_a_teacher_of_another_vocabulary_before_training(tmp_path, tokenizer, converted):
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint
    from mlx_mqa.train.uptrain import main

    bad = save_random_checkpoint({**TINY, "vocab_size": 4200, "model_type": "t5"}, tmp_path / "t", tokenizer=tokenizer)
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat " * 400)
    args = ["--model", str(converted), "--run-dir", str(tmp_path / "run"), "--data", str(corpus), "--steps", "2"]
    r = CliRunner().invoke(main, [*args, "--teacher", str(bad)])
    assert r.exit_code == 2 and "error: the teacher's vocabulary has 4200 entries" in r.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
