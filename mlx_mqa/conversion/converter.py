"""`convert()`: a multi-head Hugging Face T5 checkpoint to an MLX model directory with G K/V heads;
`convert_model()`: the same for a model in memory. `mean`, `first` and `random` pool contiguous groups as the
paper does; `fit`, `svd` and `svd-q` merge them from calibration statistics, and `--grouping similar` picks
the groups (see `merging`, `grouping`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .._version import __version__
from ..checkpoint.card import create_model_card
from ..checkpoint.files import (
    TensorPlan,
    atomic_directory,
    atomic_write_json,
    check_disk_space,
    check_output,
    copy_tokenizer,
    save_mlx_weights,
    save_streamed,
)
from ..checkpoint.hf import check_t5_config, hf_model_args, open_checkpoint, read_config, resolve
from ..checkpoint.load import check_tokenizer, has_tokenizer, load_tokenizer
from ..errors import CheckpointError, ConfigError
from ..models.config import ModelArgs, check_kv_heads
from ..models.dtypes import check_dtype, default_dtype, weight_dtype
from ..models.t5 import Model
from .calibrated import calibrated_weights
from .calibration import BUNDLED, calibrate, check_source
from .grouping import GROUPINGS
from .merging import MERGE_METHODS
from .pooling import GROUPS_IN, POOL_METHODS, convert_weights, pool_tensor
from .refine import DEFAULT_LR, DEFAULT_PARAMS, check_refine, refine, refine_batches
from .statistics import Statistics

METHODS = POOL_METHODS + MERGE_METHODS


def needs_calibration(pool: str, grouping: str) -> bool:
    return pool in MERGE_METHODS or grouping == "similar"


def check_options(kv_heads: int, num_heads: int, pool: str, groups_in: str, grouping: str = "contiguous") -> None:
    """Every conversion option, before any weight is read."""
    check_kv_heads(kv_heads, num_heads)
    if pool not in METHODS:
        raise ConfigError(f"unknown --pool {pool!r}; choose from {', '.join(METHODS)}")
    if groups_in not in GROUPS_IN:
        raise ConfigError(f"unknown --groups-in {groups_in!r}; choose from {', '.join(GROUPS_IN)}")
    if grouping not in GROUPINGS:
        raise ConfigError(f"unknown --grouping {grouping!r}; choose from {', '.join(GROUPINGS)}")
    if needs_calibration(pool, grouping) and groups_in != "decoder":
        raise ConfigError("calibrated merging and --grouping similar convert the decoder only; use --groups-in decoder")
    if pool == "random" and grouping == "similar":
        raise ConfigError("--pool random ignores the heads, so --grouping similar means nothing with it")


def group_weights(
    weights: Dict[str, np.ndarray],
    args: ModelArgs,
    kv_heads: int,
    pool: str = "mean",
    groups_in: str = "decoder",
    grouping: str = "contiguous",
    seed: int = 0,
    stats: Optional[Statistics] = None,
) -> Tuple[Dict[str, np.ndarray], dict]:
    """Multi-head weights (checkpoint layout, float32) -> grouped weights and a record of what was done."""
    check_options(kv_heads, args.num_heads, pool, groups_in, grouping)
    if not needs_calibration(pool, grouping):
        return convert_weights(weights, args, kv_heads, pool, groups_in, seed), {}
    if stats is None:
        raise ConfigError(f"--pool {pool} / --grouping {grouping} need calibration statistics")
    changed, record = calibrated_weights(weights, args, stats, kv_heads, pool, grouping)
    return {**weights, **changed}, record


def grouped_config(
    config: dict,
    kv_heads: int,
    pool: str,
    groups_in: str,
    grouping: str,
    dtype: str,
    seed: int,
    source: str,
    record: dict,
    calibration: Optional[dict] = None,
) -> dict:
    """config.json of a converted model: K/V heads, head orders and the `conversion` record."""
    H = config["num_heads"]
    config = dict(
        config,
        model_type="t5",
        num_key_value_heads=kv_heads,
        encoder_num_key_value_heads=kv_heads if groups_in == "all" else H,
        decoder_head_order=record.get("decoder_head_order"),
    )
    config["conversion"] = {
        "source": str(source),
        "num_heads": H,
        "kv_heads": kv_heads,
        "pool": pool,
        "groups_in": groups_in,
        "grouping": grouping,
        "dtype": dtype,
        "seed": seed if pool == "random" else None,
        "mlx_mqa_version": __version__,
    }
    if calibration is not None:
        config["conversion"]["calibration"] = dict(
            calibration,
            cross_head_order=record["cross_head_order"],
            errors=record["errors"],
            regularized=record["regularized"],
        )
    for key in ("torch_dtype", "dtype"):
        config.pop(key, None)
    return config


def calibration_record(stats: Statistics, source: str, samples: int, max_input: int, max_target: int) -> dict:
    return {
        "source": source,
        "samples": stats.samples,
        "samples_requested": samples,
        "encoder_tokens": stats.encoder_out.tokens,
        "decoder_tokens": stats.self_inputs[0].tokens,
        "max_input_tokens": max_input,
        "max_target_tokens": max_target,
    }


def convert_model(
    model: Model,
    kv_heads: int,
    pool: str = "mean",
    grouping: str = "contiguous",
    stats: Optional[Statistics] = None,
    seed: int = 0,
    source: str = "in memory",
) -> Model:
    """A multi-head model in memory -> its grouped-query conversion (float32), e.g. for experiments.
    `stats` comes from `calibration.calibrate` or `statistics.collect` when the method needs it."""
    weights = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    new, record = group_weights(weights, model.args, kv_heads, pool, "decoder", grouping, seed, stats)
    config = grouped_config(
        model.args.to_dict(),
        kv_heads,
        pool,
        "decoder",
        grouping,
        "float32",
        seed,
        source,
        record,
        {} if stats is not None and needs_calibration(pool, grouping) else None,
    )
    out = Model(ModelArgs.from_dict(config))
    out.load_weights([(k, mx.array(v)) for k, v in new.items()])
    mx.eval(out.parameters())
    return out


@dataclass
class Calibration:
    """Where calibration statistics come from (`--calibration*` options)."""

    source: str = BUNDLED
    samples: int = 128
    max_input: int = 512
    max_target: int = 128
    batch_size: int = 8
    prefix: str = ""


def _read_source(
    hf_path, tokenizer_path, kv_heads, pool, groups_in, grouping, calibration: Calibration, refine_steps=0
):
    """Source directory, tokenizer directory, config and K/V heads, all checked before any weight is read."""
    src = resolve(hf_path)
    config = read_config(src)
    check_t5_config(config)
    H = config["num_heads"]
    if config.get("num_key_value_heads", H) != H:
        raise ConfigError("the source is already grouped-query; convert from the multi-head checkpoint")
    kv_heads = H if kv_heads is None else int(kv_heads)
    check_options(kv_heads, H, pool, groups_in, grouping)
    # The weights convert without a tokenizer (the output then has none); an asked-for one must be usable.
    tok_src = resolve(tokenizer_path) if tokenizer_path else src if has_tokenizer(src) else None
    if tok_src is not None:
        check_tokenizer(load_tokenizer(tok_src), ModelArgs.from_dict(config), f"the tokenizer in {tok_src}")
    refining = refine_steps > 0 and kv_heads != H
    if needs_calibration(pool, grouping) or refining:
        if tok_src is None:
            why = (
                "--refine distils on calibration text"
                if refining
                else f"--pool {pool} / --grouping {grouping} calibrate"
            )
            raise CheckpointError(f"{src} has no tokenizer and {why}; pass --tokenizer with the source's tokenizer")
        check_source(calibration.source)
    return src, tok_src, config, kv_heads


def _source_model(tensors, args) -> Model:
    """The multi-head model in float32 (held whole only to calibrate and to refine)."""
    model = Model(args)
    model.load_weights([(k, mx.array(tensors[k])) for k in model.sanitize(tensors.specs())])
    mx.eval(model.parameters())
    return model


def _calibrated_stats(model, tok_src, cal: Calibration, say, bar) -> Statistics:
    """Statistics of the multi-head model in float32."""
    say(f"calibrating on {cal.source} (up to {cal.samples} samples, {cal.max_input} -> {cal.max_target} tokens)")
    stats = calibrate(
        model,
        load_tokenizer(tok_src),
        cal.source,
        cal.samples,
        cal.max_input,
        cal.max_target,
        cal.batch_size,
        cal.prefix,
        bar,
    )
    mx.clear_cache()
    return stats


def _refine(
    teacher, student_config, tok_src, cal: Calibration, produce32, plan, steps, params, lr, groups_in, say, bar
):
    """The merged model distilled toward `teacher` on the calibration text: (its weights' producer, the record).
    No teacher: G = H, so nothing was merged and the model is left as it is."""
    from .calibration import read_pairs, tokenize_pairs

    if teacher is None:
        say("--refine skipped: G = H, the model is unchanged")
        return produce32, {"steps": steps, "skipped": "G = H: no heads were grouped"}
    student = Model(ModelArgs.from_dict(student_config))
    student.load_weights([(k, produce32(k)) for k in plan])
    examples = tokenize_pairs(
        load_tokenizer(tok_src), read_pairs(cal.source, cal.samples), cal.max_input, cal.max_target, cal.prefix
    )
    batches = refine_batches(examples, cal.batch_size)
    say(f"refining ({params}) for {steps} steps on {cal.source}: {len(examples)} samples, batches of {cal.batch_size}")
    record = refine(student, teacher, batches, steps, params, lr, shared_encoder=groups_in == "decoder", bar=bar)
    record.pop("train_kl")
    seconds = record.pop("step_seconds")
    record["seconds_per_step"] = round(float(np.median(seconds)), 4) if seconds else None
    record["calibration"] = {
        "source": cal.source,
        "samples": len(examples),
        "samples_requested": cal.samples,
        "max_input_tokens": cal.max_input,
        "max_target_tokens": cal.max_target,
    }
    say(f"refine: calibration KL {record['kl_before']:.4f} -> {record['kl_after']:.4f} ({record['kept']})")
    weights = dict(tree_flatten(student.parameters()))
    del student
    return weights.__getitem__, record


def _merged_weights(tensors, args, stats, kv_heads: int, pool: str, grouping: str, say):
    """The calibrated merge of the decoder attention projections (none without statistics) and its record."""
    if stats is None:
        return {}, {}
    merged, record = calibrated_weights(tensors, args, stats, kv_heads, pool, grouping)
    for note in record.get("regularized", []):
        say(f"singular system regularised (relative ridge): {note}")
    return merged, record


def _plan(config: dict, tensors, dtype: str) -> Dict[str, TensorPlan]:
    """Shape and dtype of every tensor of the converted model, in writing order (sorted names)."""
    model = Model(ModelArgs.from_dict(config))  # parameters are lazy: only their shapes are used
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    return {k: TensorPlan(shapes[k], weight_dtype(k, dtype)) for k in sorted(model.sanitize(tensors.specs()))}


def _local_sources(*paths) -> list:
    """The local directories among the sources: an output never replaces them."""
    return [Path(p).expanduser() for p in paths if p is not None and Path(p).expanduser().exists()]


def _write(mlx_path: Path, overwrite: bool, protect, config: dict, plan, produce, tok_src, say) -> None:
    """The model directory, atomically: weights streamed tensor by tensor (quantized ones in memory)."""
    q = config.get("quantization")
    check_disk_space(mlx_path, sum(t.nbytes for t in plan.values()))
    try:
        with atomic_directory(mlx_path, overwrite=overwrite, protect=protect) as tmp:
            say(f"writing {mlx_path}")
            if q:  # quantization needs the model's modules: it runs in memory
                from ..models.quantize import quantize_weights

                say(f"quantizing to {q['bits']} bits, group size {q['group_size']}")
                weights = {k: produce(k) for k in plan}
                save_mlx_weights(
                    tmp, quantize_weights(ModelArgs.from_dict(config), weights, q["bits"], q["group_size"])
                )
            else:
                save_streamed(tmp, plan, produce)
            if tok_src is not None:
                copy_tokenizer(tok_src, tmp)
            atomic_write_json(tmp / "config.json", config)
            create_model_card(tmp, config)
    except OSError as e:  # the partial directory is gone already (atomic_directory)
        raise CheckpointError(
            f"cannot write {mlx_path}: {e.strerror or e}; nothing was written (free disk space or choose another "
            f"--mlx-path)"
        ) from None


def convert(
    hf_path: str,
    mlx_path: str,
    kv_heads: Optional[int] = None,
    pool: str = "mean",
    groups_in: str = "decoder",
    dtype: Optional[str] = None,
    seed: int = 0,
    tokenizer_path: Optional[str] = None,
    overwrite: bool = False,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    upload_repo: Optional[str] = None,
    grouping: str = "contiguous",
    calibration: Optional[Calibration] = None,
    progress: Optional[Callable[[str], None]] = None,
    bar=None,
    refine_steps: int = 0,
    refine_params: str = DEFAULT_PARAMS,
    refine_lr: float = DEFAULT_LR,
) -> Path:
    """Convert `hf_path` (hub id or directory) into an MLX model directory at `mlx_path`.

    `progress` receives one-line messages; `bar(total, desc)` may return a progress bar for calibration.
    `refine_steps` > 0: distil the converted model toward the source on the calibration text (see `refine`),
    in float32, before the weights are cast or quantized; skipped (and recorded) when G = H."""
    say = progress or (lambda msg: None)
    dtype = dtype or default_dtype()
    check_dtype(dtype)
    check_refine(refine_steps, refine_params, refine_lr)
    mlx_path = Path(mlx_path)
    check_output(mlx_path, overwrite, _local_sources(hf_path, tokenizer_path))
    say(f"reading {hf_path}")
    cal = calibration or Calibration()
    src, tok_src, config, kv_heads = _read_source(
        hf_path, tokenizer_path, kv_heads, pool, groups_in, grouping, cal, refine_steps
    )
    tensors = open_checkpoint(src)
    config, args = hf_model_args(config, tensors.specs())
    refining = refine_steps > 0 and kv_heads != args.num_heads
    teacher = _source_model(tensors, args) if needs_calibration(pool, grouping) or refining else None
    stats = _calibrated_stats(teacher, tok_src, cal, say, bar) if needs_calibration(pool, grouping) else None
    if not refining:
        teacher = None  # freed before the merged weights are built
        mx.clear_cache()
    say(f"grouping K/V heads: {args.num_heads} -> {kv_heads} ({pool}, {grouping}, {groups_in})")
    merged, record = _merged_weights(tensors, args, stats, kv_heads, pool, grouping, say)  # the rest is streamed
    info = calibration_record(stats, cal.source, cal.samples, cal.max_input, cal.max_target) if stats else None
    config = grouped_config(config, kv_heads, pool, groups_in, grouping, dtype, seed, hf_path, record, info)
    config["conversion"]["tokenizer"] = None if tok_src is None else str(tok_src)
    if tok_src is None:
        say(f"{src} has no tokenizer: the output will have none (copy one in, or convert with --tokenizer)")
    plan = _plan(config, tensors, dtype)
    rng = np.random.default_rng(seed)

    def produce32(name: str) -> mx.array:  # called in the plan's (sorted) order
        w = merged[name] if name in merged else pool_tensor(name, tensors[name], args, kv_heads, pool, groups_in, rng)
        return mx.array(w)

    if refine_steps > 0:
        produce32, config["conversion"]["refine"] = _refine(
            teacher, config, tok_src, cal, produce32, plan, refine_steps, refine_params, refine_lr, groups_in, say, bar
        )
        teacher = None
        mx.clear_cache()

    def produce(name: str) -> mx.array:
        a = produce32(name).astype(plan[name].dtype)
        mx.eval(a)
        return a

    if quantize:
        config["quantization"] = {"bits": q_bits, "group_size": q_group_size}
    _write(mlx_path, overwrite, _local_sources(src, tok_src), config, plan, produce, tok_src, say)
    if upload_repo:
        from ..checkpoint.card import upload_to_hub

        say(f"uploading to {upload_repo}")
        upload_to_hub(mlx_path, upload_repo)
    return mlx_path
