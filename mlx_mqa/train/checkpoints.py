"""Training checkpoints on disk: writing, reading, listing, pruning, and export as a model directory.

A run directory holds `ckpt-NNNNNNN/` checkpoints and `log.jsonl`. Each checkpoint is written to a
temporary sibling and renamed into place, so a directory named `ckpt-*` is always complete; it holds

- the weights (`model.safetensors`, or shards with an index), `config.json` and the tokenizer files:
  `mlx_mqa.load(ckpt)` gives a usable model;
- `optimizer/optimizer.safetensors`: `tree_flatten(optimizer.state)`, in a subdirectory so that tools
  reading a model directory's top-level *.safetensors see only the model;
- `trainer_state.json`, written last: step, data position and RNG state, losses, evals, run settings.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import mlx.core as mx
from mlx.utils import tree_flatten

from .._version import __version__
from ..checkpoint.files import atomic_directory, atomic_write_json, remove_stale, save_mlx_weights
from ..checkpoint.hf import model_file, weight_files
from ..checkpoint.tensors import read_safetensors_header
from ..errors import CheckpointError
from ..models.config import ModelArgs
from ..models.t5 import Model

CKPT_RE = re.compile(r"^ckpt-(\d+)$")
STATE_FILE = "trainer_state.json"
OPT_DIR, OPT_FILE = "optimizer", "optimizer.safetensors"
LOG_FILE = "log.jsonl"
FORMAT_VERSION = 1


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:07d}"


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Complete checkpoints (atomically renamed `ckpt-N` dirs), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_partial(run_dir: Path) -> None:
    """Temporary directories left by a kill during a save are never complete: remove them."""
    remove_stale(run_dir, r"ckpt-\d+")


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` (at least 1) checkpoints."""
    for old in list_checkpoints(run_dir)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def model_signature(args: ModelArgs) -> Dict[str, Any]:
    """The shape-defining settings a resumed run's model must share with the checkpoint's."""
    keys = (
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_decoder_layers",
        "num_heads",
        "num_key_value_heads",
        "encoder_num_key_value_heads",
        "feed_forward_proj",
        "tie_word_embeddings",
        "relative_attention_num_buckets",
    )
    d = args.to_dict()
    return {k: d[k] for k in keys}


def checkpoint_config(args: ModelArgs, dtype: str, step: int) -> dict:
    """config.json of a checkpoint: the model's whole config (with its conversion record) plus a training
    record; `mlx_mqa_version` marks it as an MLX directory for load()."""
    cfg = args.to_dict()
    cfg["model_type"] = "t5"
    cfg["mlx_mqa_version"] = __version__
    cfg["torch_dtype"] = dtype
    cfg["training"] = {"step": step, "dtype": dtype}
    return cfg


def save_checkpoint(
    target: Path, model: Model, optimizer_state: Dict[str, mx.array], state: dict, dtype: str, tokenizer=None
) -> Path:
    """Write checkpoint `target` atomically (replacing one of the same step)."""
    with atomic_directory(target, overwrite=True) as tmp:
        save_mlx_weights(tmp, dict(tree_flatten(model.parameters())))
        (tmp / OPT_DIR).mkdir()
        mx.save_safetensors(str(tmp / OPT_DIR / OPT_FILE), optimizer_state, metadata={"format": "mlx"})
        atomic_write_json(tmp / "config.json", checkpoint_config(model.args, dtype, state["step"]))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        # Written last: its presence marks the checkpoint's contents complete.
        (tmp / STATE_FILE).write_text(
            json.dumps({"format_version": FORMAT_VERSION, **state, "mlx_mqa_version": __version__})
        )
    return Path(target)


def read_state(path: Path) -> dict:
    state_file = model_file(Path(path), STATE_FILE)
    if not state_file.exists():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {STATE_FILE}); delete it")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file} is corrupt ({e}); delete {path} to resume from an older one") from None
    problem = state_problem(state, Path(path).name)
    if problem:
        raise CheckpointError(
            f"{state_file} is not a valid trainer state: {problem}; delete {path} to resume from an older one"
        )
    return state


def state_problem(state, name: str) -> Optional[str]:
    """What is wrong with a trainer state as read (a tampered or hand-edited file), or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    step = state.get("step")
    if type(step) is not int or step < 0:
        return f"step {step!r} is not a count of updates"
    m = CKPT_RE.match(name)
    if m and int(m.group(1)) != step:
        return f"step {step} in the checkpoint of step {int(m.group(1))}"
    for key, kind in (("losses", list), ("evals", list), ("data_state", dict), ("settings", dict)):
        if not isinstance(state.get(key), kind):
            return f"{key} is not a JSON {'array' if kind is list else 'object'}"
    losses = state["losses"]
    if len(losses) != step or not all(type(x) in (int, float) for x in losses):
        return f"losses must hold one number per step ({step}), not {len(losses)} values"
    if not all(isinstance(e, dict) for e in state["evals"]):
        return "evals must hold objects"
    for key in ("tokens_seen", "train_seconds"):
        if type(state.get(key, 0)) not in (int, float) or state.get(key, 0) < 0:
            return f"{key} {state.get(key)!r} is not a non-negative number"
    return None


def read_weights(path: Path, expected: Dict[str, mx.array]) -> Dict[str, mx.array]:
    """The checkpoint's model weights, checked against the names and shapes of `expected`."""
    weights: Dict[str, mx.array] = {}
    for file in weight_files(Path(path)):
        weights.update(_read_safetensors(file))
    shape_bad = [k for k in expected if k not in weights or tuple(weights[k].shape) != tuple(expected[k].shape)]
    unexpected = set(weights) - set(expected)
    if shape_bad or unexpected:
        raise CheckpointError(
            f"the weights in {path} do not match the model: "
            f"{len(shape_bad)} missing/misshapen tensors (e.g. {shape_bad[:3]}), "
            f"{len(unexpected)} unexpected"
        )
    return weights


def read_optimizer_state(path: Path, expected: Dict[str, mx.array], optimizer: str) -> Dict[str, mx.array]:
    """The checkpoint's flattened optimizer state, checked against `expected` (a fresh optimizer's)."""
    file = model_file(Path(path), f"{OPT_DIR}/{OPT_FILE}")
    opt = _read_safetensors(file)
    if set(opt) != set(expected) or any(tuple(opt[k].shape) != tuple(expected[k].shape) for k in opt):
        raise CheckpointError(f"{file} does not match this optimizer ({optimizer}); was the run made with another one?")
    return opt


def _read_safetensors(file: Path) -> Dict[str, mx.array]:
    if not file.exists():
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete, delete it")
    read_safetensors_header(file)
    try:
        arrays = mx.load(str(file))
        mx.eval(arrays)
        return arrays
    except Exception as e:
        raise CheckpointError(
            f"cannot read {file}: it is truncated or corrupt ({e}); "
            f"delete {file.parent} to resume from an older checkpoint"
        ) from None


def truncate_log(log: Path, step: int) -> None:
    """Drop log lines past `step` (a resumed run does those steps again), and lines cut by a kill."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    log.write_text("".join(line + "\n" for line in keep))


def export_model(ckpt: Path, out: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Path:
    """Checkpoint `ckpt` as a plain model directory `out` (weights, config.json, tokenizer; no optimizer
    or trainer state), written atomically: what `mlx_mqa.load` and `convert` read. `out` never replaces
    `ckpt` or a `protect`ed path (see `check_output`)."""
    ckpt, out = Path(ckpt), Path(out)
    read_state(ckpt)  # only complete checkpoints
    with atomic_directory(out, overwrite=overwrite, protect=[ckpt, *protect], option="--output") as tmp:
        for f in ckpt.iterdir():
            if f.is_file() and f.name != STATE_FILE:
                shutil.copyfile(model_file(ckpt, f.name), tmp / f.name)
    return out
