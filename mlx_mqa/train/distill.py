"""Distillation from the multi-head teacher: the cheapest recovery signal after a conversion.

Per real target token: w * T^2 * KL(p_teacher^T || p_student^T) + (1 - w) * CE(student, label), where p^T is
the softmax at temperature T (Hinton et al. 2015; the T^2 keeps the gradient scale of the KL term as T changes).
The teacher runs in the same step on the same batch; its logits are constants (no gradient reaches it).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from ..errors import ConfigError
from ..models.t5 import Model
from .objectives import IGNORE, loss_terms

LossFn = Callable[[Model, Dict[str, mx.array]], Tuple[mx.array, mx.array]]


def check_teacher(teacher: Model, student: Model, teacher_tokenizer=None, student_tokenizer=None) -> None:
    """Logit distillation needs the same vocabulary, token for token; the same width is required too."""
    t, s = teacher.args, student.args
    if t.vocab_size != s.vocab_size:
        raise ConfigError(f"the teacher's vocabulary has {t.vocab_size} entries, the student's {s.vocab_size}")
    if t.d_model != s.d_model:
        raise ConfigError(f"the teacher has d_model={t.d_model}, the student {s.d_model}: not its conversion")
    if teacher_tokenizer is not None and student_tokenizer is not None:
        if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
            raise ConfigError("the teacher's tokenizer differs from the student's: its logits index other tokens")


def token_losses(
    student_logits: mx.array, teacher_logits: mx.array, labels: mx.array, weight: float, temperature: float
) -> mx.array:
    """[B, T] per-token distillation + cross-entropy losses (not masked)."""
    s = student_logits.astype(mx.float32)
    t = mx.stop_gradient(teacher_logits.astype(mx.float32))
    ce = nn.losses.cross_entropy(s, mx.where(labels != IGNORE, labels, 0), reduction="none")
    log_s = nn.log_softmax(s / temperature, axis=-1)
    log_t = nn.log_softmax(t / temperature, axis=-1)
    kl = (mx.exp(log_t) * (log_t - log_s)).sum(axis=-1)
    return weight * temperature**2 * kl + (1 - weight) * ce


def distillation_loss(teacher: Model, weight: float, temperature: float) -> LossFn:
    """A loss with the signature of `objectives.loss_terms`: (sum over real target tokens, their number)."""
    if not 0 <= weight <= 1:
        raise ConfigError(f"--kd-weight must be in [0, 1], not {weight}")
    if temperature <= 0:
        raise ConfigError(f"--kd-temperature must be > 0, not {temperature}")

    def loss(model: Model, batch: Dict[str, mx.array]):
        args = (batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
        per_token = token_losses(model(*args), teacher(*args), batch["labels"], weight, temperature)
        mask = batch["labels"] != IGNORE
        return (per_token * mask).sum(), mask.sum()

    return loss


def training_loss(student: Model, teacher: Optional[Model], kd_weight: float, kd_temperature: float) -> LossFn:
    """The objective's cross-entropy, or distillation from `teacher` mixed with it (checked first)."""
    if teacher is None:
        if kd_weight:
            raise ConfigError("--kd-weight needs a --teacher")
        return loss_terms
    check_teacher(teacher, student)
    if not kd_weight:
        raise ConfigError("a --teacher needs --kd-weight > 0 (1: distillation only)")
    return distillation_loss(teacher, kd_weight, kd_temperature)
