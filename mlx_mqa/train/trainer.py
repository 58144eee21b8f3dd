"""Continued training (uptraining) of an MLX T5: configuration, schedule, optimizer, loop and resume.

The run directory's layout and the checkpoint files are `checkpoints.py`'s business. Resuming restores
weights, optimizer state, step, data position and RNG state, so the continued run sees the same batches
and computes the same losses as an uninterrupted one; a checkpoint made by another model, other run
settings or another learning-rate schedule is refused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..checkpoint.load import cast_model
from ..errors import CheckpointError, ConfigError
from ..models.dtypes import check_dtype
from ..models.t5 import Model
from .checkpoints import (
    LOG_FILE,
    checkpoint_dir,
    list_checkpoints,
    model_signature,
    prune,
    read_optimizer_state,
    read_state,
    read_weights,
    remove_partial,
    save_checkpoint,
    truncate_log,
)
from .distill import training_loss
from .objectives import loss_terms

TRAIN_DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine", "rsqrt", "linear")
DECAYING = ("cosine", "linear")  # the schedules with a horizon
# Settings that must not change when a run is resumed (others, e.g. eval_every, may). The schedule's
# horizon is compared separately (schedule_horizon): `steps` may change as long as the horizon does not.
RESUME_INVARIANT = (
    "optimizer",
    "lr",
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "batch_size",
    "grad_accum",
    "dtype",
    "seed",
    "beta1",
    "clip_grad_norm",
    "kd_weight",
    "kd_temperature",
)


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: str = "adafactor"  # adafactor | adamw
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine | rsqrt | linear (after warm-up)
    warmup_steps: int = 0
    total_steps_for_schedule: Optional[int] = None  # cosine/linear horizon (default: steps)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    beta1: Optional[float] = None  # Adafactor first moment (None: T5's setting, none)
    clip_grad_norm: Optional[float] = None
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    kd_weight: float = 0.0  # distillation from `Trainer(teacher=...)`: weight of the KL term
    kd_temperature: float = 1.0

    def validate(self):
        if self.optimizer not in ("adafactor", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adafactor or adamw")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose {', '.join(SCHEDULES)}")
        check_dtype(self.dtype, allowed=TRAIN_DTYPES)
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("steps must be >= 0, batch size and gradient accumulation >= 1")
        if not 0 <= self.kd_weight <= 1 or self.kd_temperature <= 0:
            raise ConfigError(
                f"--kd-weight must be in [0, 1] and --kd-temperature > 0, not {self.kd_weight} / {self.kd_temperature}"
            )
        if self.total_steps_for_schedule is not None and self.total_steps_for_schedule < 1:
            raise ConfigError(f"the schedule's horizon must be >= 1 step, not {self.total_steps_for_schedule}")


def schedule_horizon(train: dict) -> Optional[int]:
    """Steps over which a cosine/linear schedule decays (None for schedules without a horizon), from a
    TrainConfig as a dict (as checkpoints store it)."""
    if train.get("schedule") not in DECAYING:
        return None
    return train.get("total_steps_for_schedule") or train.get("steps")


def make_schedule(cfg: TrainConfig) -> Callable[[mx.array], mx.array]:
    """Linear warm-up from 0, then constant / cosine (to min_lr_ratio*lr) / rsqrt / linear decay.

    rsqrt is T5's: lr * sqrt(max(warmup, 1) / max(step, warmup)).
    """
    lr, warm = cfg.lr, max(cfg.warmup_steps, 0)
    horizon = max((cfg.total_steps_for_schedule or cfg.steps) - warm, 1)
    floor = cfg.min_lr_ratio

    def schedule(step):
        # `step` counts updates already made; the update being made is step + 1.
        s = step.astype(mx.float32) + 1.0 if isinstance(step, mx.array) else mx.array(step + 1.0)
        ramp = mx.minimum(s / warm, 1.0) if warm > 0 else mx.array(1.0)
        t = mx.clip((s - warm) / horizon, 0.0, 1.0)
        if cfg.schedule == "constant":
            decay = mx.array(1.0)
        elif cfg.schedule == "cosine":
            decay = floor + (1 - floor) * 0.5 * (1 + mx.cos(math.pi * t))
        elif cfg.schedule == "linear":
            decay = floor + (1 - floor) * (1 - t)
        else:
            decay = mx.rsqrt(mx.maximum(s, max(warm, 1)) / max(warm, 1))
        return lr * ramp * decay

    return schedule


def make_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    sched = make_schedule(cfg)
    if cfg.optimizer == "adafactor":
        # T5: no relative step (we give the schedule), parameter-scaled updates, clip threshold 1.
        return optim.Adafactor(
            learning_rate=sched,
            relative_step=False,
            scale_parameter=True,
            beta_1=cfg.beta1,
            weight_decay=cfg.weight_decay,
        )
    return optim.AdamW(learning_rate=sched, betas=[cfg.beta1 or 0.9, 0.999], weight_decay=cfg.weight_decay)


def check_trainable(model: Model) -> None:
    """Refuse quantized models: only their norms and position biases would train, and the checkpoints
    could not record how the rest was quantized."""
    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        raise ConfigError(
            "the model is quantized and cannot be uptrained; convert without -q for uptraining, quantize afterwards"
        )


def _to_mx(batch: Dict[str, np.ndarray]) -> Dict[str, mx.array]:
    return {k: mx.array(v) for k, v in batch.items()}


class Trainer:
    """Train `model` on `data` (an object with next_batch/state/set_state/describe).

    `callback(event)` receives dicts: {"event": "step", ...}, {"event": "eval", ...},
    {"event": "checkpoint", ...}; the library itself prints nothing.
    """

    def __init__(
        self,
        model: Model,
        data,
        cfg: TrainConfig,
        run_dir,
        tokenizer=None,
        eval_batches: Optional[List[Dict[str, np.ndarray]]] = None,
        callback: Optional[Callable[[dict], None]] = None,
        extra_state: Optional[dict] = None,
        teacher: Optional[Model] = None,
    ):
        check_trainable(model)
        cfg.validate()
        self.model, self.data, self.cfg = model, data, cfg
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.eval_batches = eval_batches or []
        self.callback = callback or (lambda e: None)
        self.extra_state = extra_state or {}
        self.step = 0
        self.losses: List[float] = []
        self.evals: List[dict] = []
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self._stop = False
        if model.dtype != check_dtype(cfg.dtype, allowed=TRAIN_DTYPES):
            cast_model(model, cfg.dtype)
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self._grad_fn = nn.value_and_grad(model, training_loss(model, teacher, cfg.kd_weight, cfg.kd_temperature))
        mx.eval(model.parameters(), self.optimizer.state)

    # ----------------------------------------------------------------- training -----

    def request_stop(self):
        """Stop at the next step boundary (after writing a checkpoint); safe from a signal handler."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def train_step(self):
        """One optimizer update over grad_accum micro-batches; (mean target-token loss, tokens processed)."""
        grads_total, loss_total, n_targets, tokens = None, 0.0, 0, 0
        for _ in range(self.cfg.grad_accum):
            batch = _to_mx(self.data.next_batch())
            (loss_sum, n_tok), grads = self._grad_fn(self.model, batch)
            grads_total = grads if grads_total is None else tree_map(mx.add, grads_total, grads)
            mx.eval(grads_total, loss_sum, n_tok)
            loss_total += loss_sum.item()
            n_targets += int(n_tok.item())
            tokens += int(n_tok.item()) + int(batch["attention_mask"].sum().item())
        # Gradients of summed losses divided by the target-token count: the mean over all real
        # target tokens of all micro-batches, exactly as one large batch would give.
        grads = tree_map(lambda g: g / max(n_targets, 1), grads_total)
        if self.cfg.clip_grad_norm:
            grads, _ = optim.clip_grad_norm(grads, self.cfg.clip_grad_norm)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return loss_total / max(n_targets, 1), tokens

    def evaluate(self) -> Optional[float]:
        if not self.eval_batches:
            return None
        total, count = 0.0, 0
        for b in self.eval_batches:
            s, n = loss_terms(self.model, _to_mx(b))
            mx.eval(s, n)
            total += s.item()
            count += int(n.item())
        return total / max(count, 1)

    def current_lr(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.item() if isinstance(lr, mx.array) else lr)

    def train(self) -> dict:
        """Run until cfg.steps (or a stop request). Returns a summary dict."""
        cfg = self.cfg
        if self.step == 0 and not self.evals and self.eval_batches:
            self._record_eval()
        t_start = time.perf_counter()
        while self.step < cfg.steps and not self._stop:
            t0 = time.perf_counter()
            loss, tokens = self.train_step()
            dt = time.perf_counter() - t0
            self.step += 1
            self.losses.append(loss)
            self.tokens_seen += tokens
            self.train_seconds += dt
            rec = {
                "event": "step",
                "step": self.step,
                "loss": loss,
                "lr": self.current_lr(),
                "tokens": self.tokens_seen,
                "tok_s": tokens / dt if dt > 0 else 0.0,
                "elapsed": self.train_seconds,
            }
            if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps:
                self._log(rec)
            self.callback(rec)
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
                self._record_eval()
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or self._stop:
                self.save()
        return {
            "step": self.step,
            "stopped": self._stop and self.step < cfg.steps,
            "final_loss": self.losses[-1] if self.losses else None,
            "eval": self.evals[-1] if self.evals else None,
            "wall_s": time.perf_counter() - t_start,
            "train_seconds": self.train_seconds,
            "tokens": self.tokens_seen,
            "tokens_per_s": self.tokens_seen / self.train_seconds if self.train_seconds else 0.0,
        }

    def _record_eval(self):
        t0 = time.perf_counter()
        ev = self.evaluate()
        if ev is None:
            return
        rec = {"event": "eval", "step": self.step, "eval_loss": ev, "seconds": time.perf_counter() - t0}
        self.evals.append({"step": self.step, "eval_loss": ev})
        self._log(rec)
        self.callback(rec)

    def _log(self, rec: dict):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ----------------------------------------------------------------- checkpoints -----

    def settings(self) -> dict:
        return {"train": asdict(self.cfg), "data": self.data.describe(), "model": model_signature(self.model.args)}

    def save(self) -> Path:
        state = {
            "step": self.step,
            "data_state": self.data.state(),
            "losses": self.losses,
            "evals": self.evals,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "settings": self.settings(),
            "extra": self.extra_state,
        }
        target = save_checkpoint(
            checkpoint_dir(self.run_dir, self.step),
            self.model,
            dict(tree_flatten(self.optimizer.state)),
            state,
            self.cfg.dtype,
            self.tokenizer,
        )
        prune(self.run_dir, self.cfg.keep_checkpoints)
        self.callback({"event": "checkpoint", "step": self.step, "path": str(target)})
        return target

    def resume(self, path=None) -> Optional[Path]:
        """Restore the newest checkpoint of the run dir (or `path`); None if there is none.

        Raises CheckpointError if it is unreadable or was made by a different model, other run settings
        or another learning-rate schedule; nothing is changed then.
        """
        if path is None:
            remove_partial(self.run_dir)
            ckpts = list_checkpoints(self.run_dir)
            if not ckpts:
                return None
            path = ckpts[-1]
        path = Path(path)
        state = read_state(path)
        self._check_settings(path, state.get("settings", {}))
        weights = read_weights(path, dict(tree_flatten(self.model.parameters())))
        opt = read_optimizer_state(path, dict(tree_flatten(self.optimizer.state)), self.cfg.optimizer)
        self.model.load_weights(list(weights.items()))
        self.optimizer.state = tree_unflatten(list(opt.items()))
        mx.eval(self.model.parameters(), self.optimizer.state)
        self.data.set_state(state["data_state"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.evals = list(state["evals"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        truncate_log(self.run_dir / LOG_FILE, self.step)
        return path

    def _check_settings(self, path: Path, saved: dict) -> None:
        mine = self.settings()
        saved_model, saved_train, saved_data = saved.get("model", {}), saved.get("train", {}), saved.get("data", {})
        if saved_model != mine["model"]:
            diff = {k: (saved_model.get(k), v) for k, v in mine["model"].items() if saved_model.get(k) != v}
            raise CheckpointError(
                f"checkpoint {path} is for a different model (checkpoint vs this run: {diff}); "
                f"use another --run-dir or the matching model"
            )
        # A setting newer than the checkpoint's code was at its default then.
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        bad = {
            k: (saved_train.get(k, defaults[k]), mine["train"][k])
            for k in RESUME_INVARIANT
            if saved_train.get(k, defaults[k]) != mine["train"][k]
        }
        bad.update({f"data.{k}": (saved_data.get(k), v) for k, v in mine["data"].items() if saved_data.get(k) != v})
        if bad:
            raise CheckpointError(
                f"checkpoint {path} was made with other settings (checkpoint vs this run: {bad}); "
                f"resume with the same settings or use another --run-dir"
            )
        old, new = schedule_horizon(saved_train), schedule_horizon(mine["train"])
        if old != new:
            raise CheckpointError(
                f"checkpoint {path} was made with a {self.cfg.schedule} learning-rate schedule decaying over {old} "
                f"steps, this run's decays over {new} (its number of steps): the learning rate would jump. "
                f"Pass --schedule-steps {old} to continue on the same schedule, or use another --run-dir"
            )
