"""Continued training (uptraining) of an MLX T5: configuration, schedule, optimizer, loop and resume.

The run directory's layout and the checkpoint files are `checkpoints.py`'s business. Resuming restores
weights, optimizer state, step, data position and RNG state, so the continued run sees the same batches
and computes the same losses as an uninterrupted one; a checkpoint made by another model, other run
settings or another learning-rate schedule is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
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
    STATE_FILE,
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
from .config import RESUME_INVARIANT, TRAIN_DTYPES, TrainConfig, make_optimizer, schedule_horizon
from .distill import training_loss
from .objectives import loss_terms


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
        # Data parallel under `mlx.launch` (one process: a group of size 1). Only rank 0 writes.
        self.group = mx.distributed.init()
        self.world, self.rank = self.group.size(), self.group.rank()
        self.rank_sharded = getattr(data, "rank_sharded", False)
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
        """One optimizer update over grad_accum micro-batches per process; (mean target-token loss, tokens).

        With W processes every rank draws the same W * grad_accum micro-batches from its copy of the data
        stream and computes every W-th one (disjoint, deterministic, resumable); gradients and counts are
        summed across ranks, so the update equals one process with W * grad_accum micro-batches. A stream
        sharded by rank (`rank_sharded`) gives each rank its own grad_accum micro-batches instead."""
        grads_total, loss_total, n_targets, tokens = None, mx.array(0.0), mx.array(0), mx.array(0)
        stride = 1 if self.rank_sharded else self.world
        for i in range(self.cfg.grad_accum * stride):
            raw = self.data.next_batch()
            if i % stride != self.rank % stride:
                continue
            batch = _to_mx(raw)
            (loss_sum, n_tok), grads = self._grad_fn(self.model, batch)
            grads_total = grads if grads_total is None else tree_map(mx.add, grads_total, grads)
            loss_total, n_targets = loss_total + loss_sum, n_targets + n_tok
            tokens = tokens + n_tok + batch["attention_mask"].sum()
            mx.eval(grads_total, loss_total, n_targets, tokens)
        if self.world > 1:
            grads_total = tree_map(lambda g: mx.distributed.all_sum(g, group=self.group), grads_total)
            counts = mx.distributed.all_sum(
                mx.stack([loss_total, n_targets, tokens]).astype(mx.float32), group=self.group
            )
            loss_total, n_targets, tokens = counts[0], counts[1], counts[2]
        n = max(int(n_targets.item()), 1)
        # Gradients of summed losses divided by the target-token count: the mean over all real
        # target tokens of all micro-batches, exactly as one large batch would give.
        grads = tree_map(lambda g: g / n, grads_total)
        if self.cfg.clip_grad_norm:
            grads, _ = optim.clip_grad_norm(grads, self.cfg.clip_grad_norm)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return loss_total.item() / n, int(tokens.item())

    def stop_agreed(self) -> bool:
        """A stop request (Ctrl-C) seen by any rank stops all of them at the same step."""
        if self.world == 1:
            return self._stop
        return mx.distributed.all_sum(mx.array(int(self._stop)), group=self.group).item() > 0

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
        while self.step < cfg.steps and not self.stop_agreed():
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
        if self.rank:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ----------------------------------------------------------------- checkpoints -----

    def settings(self) -> dict:
        return {
            "train": asdict(self.cfg),
            "data": self.data.describe(),
            "model": model_signature(self.model.args),
            "world_size": self.world,
        }

    def data_state(self) -> dict:
        """The data position; every rank's, gathered to rank 0, when each rank reads its own shard."""
        if not self.rank_sharded:
            return self.data.state()
        return {"ranks": gather_json(self.data.state(), self.group)}

    def save(self) -> Path:
        target = checkpoint_dir(self.run_dir, self.step)
        data_state = self.data_state()  # a collective: every rank takes part
        if self.rank == 0:
            self._write_checkpoint(target, data_state)
        if self.world > 1:  # every rank goes on only once the checkpoint is complete
            mx.eval(mx.distributed.all_sum(mx.array(1), group=self.group))
        return target

    def _write_checkpoint(self, target: Path, data_state: dict) -> None:
        state = {
            "step": self.step,
            "data_state": data_state,
            "losses": self.losses,
            "evals": self.evals,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "settings": self.settings(),
            "extra": self.extra_state,
        }
        save_checkpoint(
            target,
            self.model,
            dict(tree_flatten(self.optimizer.state)),
            state,
            self.cfg.dtype,
            self.tokenizer,
        )
        prune(self.run_dir, self.cfg.keep_checkpoints)
        self.callback({"event": "checkpoint", "step": self.step, "path": str(target)})

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
        if state["step"] > self.cfg.steps:
            raise ConfigError(f"{path} is at step {state['step']}, past --steps {self.cfg.steps}")
        self._check_settings(path, state["settings"])
        weights = read_weights(path, dict(tree_flatten(self.model.parameters())))
        opt = read_optimizer_state(path, dict(tree_flatten(self.optimizer.state)), self.cfg.optimizer)
        self.model.load_weights(list(weights.items()))
        self.optimizer.state = tree_unflatten(list(opt.items()))
        mx.eval(self.model.parameters(), self.optimizer.state)
        data_state = state["data_state"]
        try:
            self.data.set_state(data_state["ranks"][self.rank] if self.rank_sharded else data_state)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: the data position in {STATE_FILE} is not this run's ({type(e).__name__}: {e}); "
                f"delete {path} to resume from an older checkpoint"
            ) from None
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.evals = list(state["evals"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        truncate_log(self.run_dir / LOG_FILE, self.step)
        return path

    def _check_settings(self, path: Path, saved: dict) -> None:
        mine = self.settings()
        if saved.get("world_size", 1) != self.world:
            raise CheckpointError(
                f"checkpoint {path} was made by {saved.get('world_size', 1)} process(es), this run has {self.world}: "
                f"resume with the same number (mlx.launch -n {saved.get('world_size', 1)}), or use another --run-dir"
            )
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


def gather_json(obj, group) -> list:
    """Every rank's JSON-serialisable `obj`, in rank order, on every rank."""
    if group.size() == 1:
        return [obj]
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = mx.distributed.all_gather(mx.array([len(raw)]), group=group).tolist()
    padded = np.zeros(max(sizes), np.uint8)
    padded[: len(raw)] = raw
    rows = np.array(mx.distributed.all_gather(mx.array(padded)[None], group=group))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]
