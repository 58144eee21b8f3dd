"""Continued training (uptraining) of an MLX T5: loop, optimizer and schedule, checkpoints, resume.

A run directory holds `ckpt-NNNNNNN/` checkpoints (newest K kept), `log.jsonl` (train and eval
losses) and nothing else. Each checkpoint is written to a temporary sibling and renamed into
place, so a directory named `ckpt-*` is always complete; it holds

- `model.safetensors`, `config.json`, tokenizer files: `mlx_mqa.load(ckpt)` gives a usable model;
- `optimizer/optimizer.safetensors`: `tree_flatten(optimizer.state)`;
- `trainer_state.json`: step, data position and RNG state, losses so far, eval history, run settings.

Resuming restores all of it, so the continued run sees the same batches and computes the same
losses as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import __version__
from .checkpoint import atomic_directory, atomic_write_json, save_mlx_weights
from .config import ModelArgs
from .errors import CheckpointError, ConfigError
from .model import Model

CKPT_RE = re.compile(r"^ckpt-(\d+)$")
STATE_FILE = "trainer_state.json"
OPT_DIR, OPT_FILE = "optimizer", "optimizer.safetensors"
FORMAT_VERSION = 1
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}
# Settings that must not change when a run is resumed (others, e.g. eval_every, may).
RESUME_INVARIANT = ("optimizer", "lr", "schedule", "warmup_steps", "total_steps_for_schedule", "min_lr_ratio",
                    "weight_decay", "batch_size", "grad_accum", "dtype", "seed", "beta1", "clip_grad_norm")


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: str = "adafactor"          # adafactor | adamw
    lr: float = 1e-3
    schedule: str = "constant"             # constant | cosine | rsqrt | linear (after warm-up)
    warmup_steps: int = 0
    total_steps_for_schedule: Optional[int] = None   # cosine/linear horizon (default: steps)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    beta1: Optional[float] = None          # Adafactor first moment (None: T5's setting, none)
    clip_grad_norm: Optional[float] = None
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 0                     # 0: only at the end
    save_every: int = 0                     # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 1

    def validate(self):
        if self.optimizer not in ("adafactor", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adafactor or adamw")
        if self.schedule not in ("constant", "cosine", "rsqrt", "linear"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose constant, cosine, rsqrt or linear")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose from {list(DTYPES)}")
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("steps must be >= 0, batch size and gradient accumulation >= 1")


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
        return optim.Adafactor(learning_rate=sched, relative_step=False, scale_parameter=True,
                               beta_1=cfg.beta1, weight_decay=cfg.weight_decay)
    return optim.AdamW(learning_rate=sched, betas=[cfg.beta1 or 0.9, 0.999], weight_decay=cfg.weight_decay)


def loss_terms(model: Model, batch: Dict[str, mx.array]):
    """(sum of token cross-entropies over real target tokens, number of those tokens)."""
    logits = model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    mask = labels != -100
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), mx.where(mask, labels, 0), reduction="none")
    return (ce * mask).sum(), mask.sum()


def _to_mx(batch: Dict[str, np.ndarray]) -> Dict[str, mx.array]:
    return {k: mx.array(v) for k, v in batch.items()}


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Complete checkpoints (atomically renamed `ckpt-N` dirs), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def model_signature(args: ModelArgs) -> Dict[str, Any]:
    keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
            "num_key_value_heads", "encoder_num_key_value_heads", "feed_forward_proj", "tie_word_embeddings",
            "relative_attention_num_buckets")
    d = args.to_dict()
    return {k: d[k] for k in keys}


def checkpoint_config(args: ModelArgs, dtype: str, step: int) -> dict:
    """config.json of a checkpoint: the model's config plus a training record, readable by load()."""
    cfg = args.to_dict()
    cfg["model_type"] = "t5"
    cfg["mlx_mqa_version"] = __version__
    cfg["torch_dtype"] = dtype
    cfg["training"] = {"step": step, "dtype": dtype}
    return cfg


class Trainer:
    """Train `model` on `data` (an object with next_batch/state/set_state/describe).

    `callback(event)` receives dicts: {"event": "step", ...}, {"event": "eval", ...},
    {"event": "checkpoint", ...}; the library itself prints nothing.
    """

    def __init__(self, model: Model, data, cfg: TrainConfig, run_dir, tokenizer=None,
                 eval_batches: Optional[List[Dict[str, np.ndarray]]] = None,
                 callback: Optional[Callable[[dict], None]] = None, extra_state: Optional[dict] = None):
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
        dtype = DTYPES[cfg.dtype]
        if model.dtype != dtype:
            model.update(tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
                                  model.parameters()))
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self._grad_fn = nn.value_and_grad(model, self._loss_sum)
        mx.eval(model.parameters(), self.optimizer.state)

    # ----------------------------------------------------------------- training -----

    @staticmethod
    def _loss_sum(model, batch):
        s, n = loss_terms(model, batch)
        return s, n

    def request_stop(self):
        """Stop at the next step boundary (after writing a checkpoint); safe from a signal handler."""
        self._stop = True

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
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < cfg.steps and not self._stop:
            t0 = time.perf_counter()
            loss, tokens = self.train_step()
            dt = time.perf_counter() - t0
            self.step += 1
            self.losses.append(loss)
            self.tokens_seen += tokens
            self.train_seconds += dt
            window_tokens += tokens
            rec = {"event": "step", "step": self.step, "loss": loss, "lr": self.current_lr(),
                   "tokens": self.tokens_seen, "tok_s": tokens / dt if dt > 0 else 0.0,
                   "elapsed": self.train_seconds}
            if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps:
                self._log(rec)
            self.callback(rec)
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
                self._record_eval()
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or self._stop:
                self.save()
        wall = time.perf_counter() - t_start
        return {"step": self.step, "stopped": self._stop and self.step < cfg.steps,
                "final_loss": self.losses[-1] if self.losses else None,
                "eval": self.evals[-1] if self.evals else None, "wall_s": wall,
                "train_seconds": self.train_seconds, "tokens": self.tokens_seen,
                "tokens_per_s": self.tokens_seen / self.train_seconds if self.train_seconds else 0.0}

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
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ----------------------------------------------------------------- checkpoints -----

    def settings(self) -> dict:
        return {"train": asdict(self.cfg), "data": self.data.describe(), "model": model_signature(self.model.args)}

    def save(self) -> Path:
        target = self.run_dir / f"ckpt-{self.step:07d}"
        with atomic_directory(target, overwrite=True) as tmp:
            save_mlx_weights(tmp, dict(tree_flatten(self.model.parameters())))
            opt_state = dict(tree_flatten(self.optimizer.state))
            # In a subdirectory, so that convert() (which reads every top-level *.safetensors) and
            # other tools see the checkpoint as a plain model directory.
            (tmp / OPT_DIR).mkdir()
            mx.save_safetensors(str(tmp / OPT_DIR / OPT_FILE), opt_state, metadata={"format": "mlx"})
            atomic_write_json(tmp / "config.json", checkpoint_config(self.model.args, self.cfg.dtype, self.step))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
            state = {"format_version": FORMAT_VERSION, "step": self.step, "data_state": self.data.state(),
                     "losses": self.losses, "evals": self.evals, "tokens_seen": self.tokens_seen,
                     "train_seconds": self.train_seconds, "settings": self.settings(),
                     "extra": self.extra_state, "mlx_mqa_version": __version__}
            # Written last: its presence marks the checkpoint's contents complete.
            (tmp / STATE_FILE).write_text(json.dumps(state))
        for old in list_checkpoints(self.run_dir)[:-max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        self.callback({"event": "checkpoint", "step": self.step, "path": str(target)})
        return target

    def resume(self, path=None) -> Optional[Path]:
        """Restore the newest checkpoint of the run dir (or `path`); None if there is none.

        Raises CheckpointError if it is unreadable or was made by a different model or run settings.
        """
        if path is None:
            # Temporary directories left by a kill during a save are never complete: remove them.
            if self.run_dir.exists():
                for stale in self.run_dir.glob(".ckpt-*.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
            ckpts = list_checkpoints(self.run_dir)
            if not ckpts:
                return None
            path = ckpts[-1]
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.exists():
            raise CheckpointError(f"{path} is not a complete training checkpoint (no {STATE_FILE}); delete it")
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{state_file} is corrupt ({e}); delete {path} to resume from an older one") from None
        saved = state.get("settings", {})
        mine = self.settings()
        if saved.get("model") != mine["model"]:
            diff = {k: (saved.get("model", {}).get(k), v) for k, v in mine["model"].items()
                    if saved.get("model", {}).get(k) != v}
            raise CheckpointError(f"checkpoint {path} is for a different model (checkpoint vs this run: {diff}); "
                                  f"use another --run-dir or the matching model")
        bad = {k: (saved.get("train", {}).get(k), mine["train"][k]) for k in RESUME_INVARIANT
               if saved.get("train", {}).get(k) != mine["train"][k]}
        data_keys = [k for k in mine["data"] if k != "steps"]
        bad.update({f"data.{k}": (saved.get("data", {}).get(k), mine["data"][k]) for k in data_keys
                    if saved.get("data", {}).get(k) != mine["data"][k]})
        if bad:
            raise CheckpointError(f"checkpoint {path} was made with other settings (checkpoint vs this run: {bad}); "
                                  f"resume with the same settings or use another --run-dir")
        weights = self._read_safetensors(path / "model.safetensors")
        expected = dict(tree_flatten(self.model.parameters()))
        shape_bad = [k for k in expected if k not in weights or tuple(weights[k].shape) != tuple(expected[k].shape)]
        if shape_bad or set(weights) - set(expected):
            raise CheckpointError(f"{path}/model.safetensors does not match the model: "
                                  f"{len(shape_bad)} missing/misshapen tensors (e.g. {shape_bad[:3]}), "
                                  f"{len(set(weights) - set(expected))} unexpected")
        opt_file = path / OPT_DIR / OPT_FILE
        opt = self._read_safetensors(opt_file if opt_file.exists() else path / OPT_FILE)
        self.model.load_weights(list(weights.items()))
        opt_expected = dict(tree_flatten(self.optimizer.state))
        if set(opt) != set(opt_expected) or any(tuple(opt[k].shape) != tuple(opt_expected[k].shape) for k in opt):
            raise CheckpointError(f"{path}/{OPT_DIR}/{OPT_FILE} does not match this optimizer "
                                  f"({self.cfg.optimizer}); was the run made with another one?")
        self.optimizer.state = tree_unflatten(list(opt.items()))
        mx.eval(self.model.parameters(), self.optimizer.state)
        self.data.set_state(state["data_state"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.evals = list(state["evals"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._truncate_log()
        return path

    def _truncate_log(self):
        """Drop log lines past the restored step: those steps are done again."""
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        keep = []
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by the kill
            if rec.get("step", 0) <= self.step:
                keep.append(line)
        log.write_text("".join(l + "\n" for l in keep))

    @staticmethod
    def _read_safetensors(file: Path) -> Dict[str, mx.array]:
        if not file.exists():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete, delete it")
        try:
            arrays = mx.load(str(file))
            mx.eval(arrays)
            return arrays
        except Exception as e:
            raise CheckpointError(f"cannot read {file}: it is truncated or corrupt ({e}); "
                                  f"delete {file.parent} to resume from an older checkpoint") from None


def init_model(args: ModelArgs, seed: int = 0) -> Model:
    """A freshly initialised model (T5/transformers init; lm_head std d_model**-0.5 when untied)."""
    from .random_init import random_t5_weights

    cfg = {k: v for k, v in args.to_dict().items()}
    w = random_t5_weights(cfg, seed=seed)
    if not args.tie_word_embeddings:
        rng = np.random.default_rng([seed, 7])
        w["lm_head.weight"] = (rng.standard_normal((args.vocab_size, args.d_model), dtype=np.float32)
                               * np.float32(args.d_model ** -0.5))
    model = Model(args)
    rng = np.random.default_rng([seed, 8])
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    for k, shape in shapes.items():
        if k in w and tuple(w[k].shape) != shape:     # grouped K/V projections: fewer heads
            w[k] = rng.standard_normal(shape, dtype=np.float32) * np.float32(args.d_model ** -0.5)
    model.load_weights([(k, mx.array(v)) for k, v in model.sanitize(w).items()])
    mx.eval(model.parameters())
    return model
