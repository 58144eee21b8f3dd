"""Training settings: TrainConfig, what may not change on resume, the learning-rate schedules and the optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import mlx.optimizers as optim

from ..errors import ConfigError
from ..models.dtypes import check_dtype

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
        # (name, value, lowest allowed, whether the lowest is excluded); None: not set
        ranges = (
            ("--lr", self.lr, 0, True),
            ("--warmup", self.warmup_steps, 0, False),
            ("--weight-decay", self.weight_decay, 0, False),
            ("--clip-grad-norm", self.clip_grad_norm, 0, True),
            ("--eval-every", self.eval_every, 0, False),
            ("--save-every", self.save_every, 0, False),
            ("--keep", self.keep_checkpoints, 1, False),
        )
        for name, value, low, strict in ranges:
            if value is not None and (value != value or (value <= low if strict else value < low)):  # NaN too
                raise ConfigError(f"{name} must be {'>' if strict else '>='} {low}, not {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], not {self.min_lr_ratio}")


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
