"""`--refine STEPS`: a short distillation of a converted (grouped) model toward its multi-head source on the
calibration text, after the merge.

Objective: KL(teacher || student) per real target token, teacher-forced (the distillation term of
`train.distill.token_losses` with weight 1 and temperature 1). Adam, linear warm-up then cosine decay, over the
calibration batches (similar lengths together, their order reshuffled every pass). The mean calibration KL is
measured before the first step, every `eval_every` steps and after the last; the best weights are kept, so the
result is never worse on the calibration text than the merge it starts from (when no step improves it, the
merged weights are kept and the record says so).

Memory: the teacher and the student in float32, Adam's two moments of the trained parameters, the encoder
outputs of the calibration set (once, the encoder being frozen unless `params="all"`), and one batch's
activations and logits (about six [batch, target length, vocabulary] float32 arrays at the loss): the batch size
and the calibration lengths bound it, not the number of samples or steps.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import ConfigError
from ..models.t5 import Model
from ..train.distill import token_losses
from ..train.objectives import IGNORE

REFINE_PARAMS = ("attention", "attention+norms", "all")
DEFAULT_PARAMS = "attention"  # chosen on the random-weight t5-small testbed (experiments/README.md)
DEFAULT_LR = 3e-5  # chosen by a short sweep (3e-5, 1e-4, 3e-4) on the same testbed


def check_refine(steps: int, params: str = DEFAULT_PARAMS, lr: float = DEFAULT_LR) -> None:
    """The refinement options, before any weight is read."""
    if steps < 0:
        raise ConfigError(f"--refine takes a number of steps >= 0 (0: no refinement), not {steps}")
    if params not in REFINE_PARAMS:
        raise ConfigError(f"unknown --refine-params {params!r}; choose from {', '.join(REFINE_PARAMS)}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--refine-lr must be a positive number, not {lr}")


def refine_batches(examples, batch_size: int = 8) -> List[Dict[str, mx.array]]:
    """Teacher-forced batches of calibration (encoder ids, decoder ids) examples: the decoder reads its ids
    but the last, and predicts them but the first (the decoder start token); padding is IGNOREd."""
    from .calibration import batches

    out = []
    for ids, mask, dec, dec_mask in batches(examples, batch_size):
        if dec.shape[1] < 2:
            continue
        labels = mx.where(dec_mask[:, 1:] > 0, dec[:, 1:], IGNORE)
        out.append({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec[:, :-1], "labels": labels})
    return out


def _decoder_attention(model: Model):
    for block in model.decoder.block:
        yield block.layer[0].SelfAttention
        yield block.layer[1].EncDecAttention


def select_trainable(model: Model, params: str) -> None:
    """Freeze everything but `params`: attention = the decoder's self- and cross-attention projections
    (q, k, v, o: the modules the conversion changed); attention+norms = those and the decoder's layer norms;
    all = every parameter."""
    check_refine(0, params)
    model.freeze()
    if params == "all":
        model.unfreeze()
        return
    for attn in _decoder_attention(model):
        for proj in (attn.q, attn.k, attn.v, attn.o):
            proj.unfreeze()
    if params == "attention+norms":
        for block in model.decoder.block:
            for layer in block.layer:
                layer.layer_norm.unfreeze()
        model.decoder.final_layer_norm.unfreeze()


def count(params) -> int:
    return int(sum(v.size for _, v in tree_flatten(params)))


def _logits(model: Model, batch, enc=None) -> mx.array:
    if enc is None:
        enc = model.encode(batch["input_ids"], batch["attention_mask"])
    return model.decode(batch["decoder_input_ids"], model.cross_kv(enc), batch["attention_mask"])


def _kl_sum(student_logits, teacher_logits, labels):
    mask = labels != IGNORE
    kl = token_losses(student_logits, teacher_logits, labels, 1.0, 1.0)
    return (kl * mask).sum(), mask.sum()


def divergence(student: Model, teacher: Model, batches: Sequence[dict], encoders=None) -> Dict[str, float]:
    """Mean KL(teacher || student) per real target token and top-1 agreement over `batches`.
    `encoders`: the batches' encoder outputs when both models share the encoder (then computed once)."""
    kl, agree, n = 0.0, 0.0, 0
    for i, b in enumerate(batches):
        enc = None if encoders is None else encoders[i]
        t = _logits(teacher, b, enc)
        s = _logits(student, b, enc)
        k, m = _kl_sum(s, t, b["labels"])
        mask = b["labels"] != IGNORE
        a = ((mx.argmax(s, axis=-1) == mx.argmax(t, axis=-1)) * mask).sum()
        mx.eval(k, m, a)
        kl, agree, n = kl + k.item(), agree + a.item(), n + int(m.item())
    return {"kl": kl / max(n, 1), "top1": agree / max(n, 1), "tokens": n}


def _schedule(lr: float, steps: int):
    warm = max(1, min(20, steps // 10))
    decay = optim.cosine_decay(lr, max(steps - warm, 1), lr * 0.1)
    return optim.join_schedules([optim.linear_schedule(lr * 0.1, lr, warm), decay], [warm])


def _update_fn(student: Model, teacher: Model, lr: float, steps: int) -> Callable[[dict, Optional[mx.array]], float]:
    """One Adam step of the mean KL per target token on a batch (given its encoder output, or None): its loss."""

    def loss_fn(model, batch, enc, teacher_logits):
        k, m = _kl_sum(_logits(model, batch, enc), teacher_logits, batch["labels"])
        return k / mx.maximum(m, 1)

    grad_fn = nn.value_and_grad(student, loss_fn)
    optimizer = optim.Adam(learning_rate=_schedule(lr, steps))
    optimizer.init(student.trainable_parameters())

    def update(batch: dict, enc: Optional[mx.array]) -> float:
        t = _logits(teacher, batch, enc)
        mx.eval(t)
        loss, grads = grad_fn(student, batch, enc, t)
        optimizer.update(student, grads)
        mx.eval(student.parameters(), optimizer.state, loss)
        return float(loss.item())

    return update


def _batch_order(n: int, steps: int, seed: int):
    """A batch index per step: every batch once per pass, in a fresh order each pass."""
    rng = np.random.default_rng(seed)
    order: List[int] = []
    for _ in range(steps):
        if not order:
            order = list(rng.permutation(n))
        yield order.pop()


def _frozen_encoders(teacher: Model, batches: Sequence[dict], shared_encoder: bool, params: str):
    """The encoder outputs, computed once for both models, when they are constants (a shared, frozen encoder)."""
    if not shared_encoder or params == "all":
        return None
    encoders = [teacher.encode(b["input_ids"], b["attention_mask"]) for b in batches]
    mx.eval(encoders)
    return encoders


def _tick(progress, loss: float) -> None:
    if progress:
        progress.update(1)
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(kl=f"{loss:.4f}")


def _restore(student: Model, teacher: Model, best: dict) -> None:
    """The kept weights into `student`; both models trainable again, as they came."""
    student.update(tree_unflatten(list(best.items())))
    student.unfreeze()
    teacher.unfreeze()
    mx.eval(student.parameters())


def refine(
    student: Model,
    teacher: Model,
    batches: Sequence[dict],
    steps: int,
    params: str = DEFAULT_PARAMS,
    lr: float = DEFAULT_LR,
    shared_encoder: bool = True,
    eval_every: Optional[int] = None,
    seed: int = 0,
    bar=None,
    on_eval: Optional[Callable[[int, Model], None]] = None,
) -> dict:
    """Distil `student` toward `teacher` for `steps` Adam steps over `batches` (see the module docstring) and
    leave the best weights (by mean calibration KL) in `student`. `shared_encoder`: the two encoders are equal
    (a decoder-only conversion), so the teacher's encoder outputs serve both while the encoder is frozen.
    `bar(total, desc)` may return a progress bar; `on_eval(step, student)` is called at every evaluation.
    Returns the record written to config.json."""
    check_refine(steps, params, lr)
    if not batches:
        raise ConfigError("--refine needs calibration text: no usable (input, target) pair")
    start = time.perf_counter()
    teacher.freeze()
    select_trainable(student, params)
    trainable = student.trainable_parameters()
    encoders = _frozen_encoders(teacher, batches, shared_encoder, params)
    eval_every = eval_every or max(steps // 4, 1)

    history = []

    def evaluate(step):
        d = divergence(student, teacher, batches, encoders)
        history.append({"step": step, "kl": d["kl"], "top1": d["top1"]})
        if on_eval:
            on_eval(step, student)
        return d

    before = evaluate(0)
    best_kl, best_step = before["kl"], 0
    best = dict(tree_flatten(trainable))  # MLX arrays are immutable: the optimizer replaces, never overwrites

    update = _update_fn(student, teacher, lr, steps)
    progress = bar(steps, "refine") if bar and steps else None
    losses, step_seconds = [], []
    try:
        for step, i in enumerate(_batch_order(len(batches), steps, seed), start=1):
            t0 = time.perf_counter()
            losses.append(update(batches[i], None if encoders is None else encoders[i]))
            step_seconds.append(time.perf_counter() - t0)
            _tick(progress, losses[-1])
            if step % eval_every == 0 or step == steps:
                kl = evaluate(step)["kl"]
                if kl < best_kl:
                    best_kl, best_step = kl, step
                    best = dict(tree_flatten(student.trainable_parameters()))
    finally:
        if progress:
            progress.close()
    _restore(student, teacher, best)
    return {
        "steps": steps,
        "params": params,
        "trainable_parameters": count(trainable),
        "lr": lr,
        "optimizer": "adam, linear warm-up then cosine decay to lr/10",
        "batches": len(batches),
        "target_tokens": before["tokens"],
        "kl_before": before["kl"],
        "kl_after": best_kl,
        "top1_before": before["top1"],
        "top1_after": next(h["top1"] for h in history if h["step"] == best_step),
        "best_step": best_step,
        "kept": "refined" if best_step > 0 else "merged (no step improved the calibration KL)",
        "history": history,
        "train_kl": losses,
        "step_seconds": step_seconds,
        "seconds": round(time.perf_counter() - start, 2),
    }
