"""The default run of `python bench.py`: `run(BenchConfig)` checks every setting, package and dataset before any
slow work, converts the model to every variant, times them (results.json rewritten after every setting), finds
the budget's batches (--memory-budget), scores quality and logits agreement, then writes every file. Progress goes
to tqdm bars on stderr and to the `log` callback; nothing is printed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import paths
from ..checkpoint.load import load_model, load_tokenizer
from ..conversion import Calibration
from ..engine import engine_info
from ..models.dtypes import DTYPES, default_dtype
from . import quality as ql
from . import speed as sp
from . import variants as vs
from .agreement import quantization_agreement
from .config import BenchConfig, check_config, check_dependencies, plots_available, progress_bar, quality_lengths_of
from .data import QualityJob, load_examples
from .results import environment, new_results, validate_results, weights_provenance, write_predictions, write_results
from .sweep import SpeedVariant, mlx_vs_torch, sweep
from .torch_reference import References
from .variants import ModelSource, VariantSpec, represents_speed

MODEL_CONFIG_KEYS = "d_model d_kv d_ff num_heads num_layers num_decoder_layers vocab_size feed_forward_proj"
MODEL_CONFIG_KEYS = (*MODEL_CONFIG_KEYS.split(), "tie_word_embeddings")
MLX_MEMORY = "mlx: this variant's weights + (mx.get_peak_memory() - active memory before the run)"
TORCH_MEMORY = {"cuda": "torch.cuda.max_memory_allocated()", "mps": "torch.mps.driver_allocated_memory() after the run"}
TORCH_CPU_MEMORY = "process RSS: torch weights + (peak RSS - RSS before the run)"
BLAS_WARNING = (
    "OpenBLAS is loaded globally (no C compiler, or LD_PRELOAD), so PyTorch's CPU "
    "matmuls run through it too and its timings are pessimistic; install a C compiler"
)


@dataclass
class MlxVariant:
    spec: VariantSpec
    path: Path
    model: object = None
    weights: Dict[str, int] = field(default_factory=dict)  # total, decoder_step (`sp.mlx_weight_bytes`)


def run(cfg: BenchConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    say = log or (lambda m: None)
    check_config(cfg)
    notes = check_dependencies(cfg)
    for note in notes:
        say("note: " + note)
    dtype = cfg.dtype or default_dtype()
    jobs = quality_jobs(cfg) if cfg.quality else []

    source, tokenizer, variants = prepare_models(cfg, dtype, say)
    device, warnings = torch_device(cfg, say)
    refs = References(source.path, dtype, device) if device else None
    results = start_results(cfg, dtype, device, source, variants, warnings, notes)

    if cfg.speed:
        run_speed(cfg, variants, refs, len(tokenizer), dtype, results, say)
    if cfg.memory_budget:
        from .research.budget import run_budget

        run_budget(cfg, budget_runs(cfg, source, variants, device), dtype, results, say)
    quality = ql.run_quality(cfg, jobs, variants, refs, tokenizer, source.is_random, say)
    results["quality"] = [{k: v for k, v in q.items() if k != "predictions"} for q in quality]
    results["quantization_agreement"] = quantization_agreement(cfg.prefix, jobs, variants, tokenizer, say)
    return write(cfg, results, quality, source.is_random)


def quality_jobs(cfg: BenchConfig) -> List[QualityJob]:
    """Every --data file and --dataset, read now so that a missing one fails before anything slow runs."""
    jobs = []
    for name, file in [(None, f) for f in cfg.data_files] + [(d, None) for d in cfg.datasets]:
        label, examples = load_examples(name, file, cfg.split, cfg.limit)
        jobs.append(QualityJob(label, examples, *quality_lengths_of(cfg, name)))
    return jobs


def prepare_models(cfg: BenchConfig, dtype: str, say) -> Tuple[ModelSource, object, List[MlxVariant]]:
    """The multi-head source, its tokenizer, and every --kv-heads (and --quantize) variant of every --pool,
    converted on first use (cached) and loaded."""
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else paths.cache_dir()
    say(f"model {cfg.model} (cache {cache_dir})")
    source = vs.prepare_source(cfg.model, cache_dir, layers=cfg.layers, seed=cfg.seed)
    kv = vs.parse_kv_heads(cfg.kv_heads, source.num_heads)
    cal = Calibration(cfg.calibration, cfg.calibration_samples, *cfg.calibration_lengths, prefix=cfg.prefix)
    variants = []
    for spec in vs.variant_specs(kv, source.num_heads, cfg.quantize, cfg.q_group_size, cfg.pool, cfg.grouping):
        if not (vs.converted_path(source, spec, dtype, cache_dir, cal) / "model.safetensors").exists():
            say(f"converting to {spec.name} (first use; cached afterwards)")
        # A calibrated conversion reports its steps (calibration can take minutes); the others convert quietly.
        bar = (lambda total, desc: progress_bar(total, desc, cfg.progress)) if spec.calibrated else None
        path = vs.ensure_converted(source, spec, dtype, cache_dir, cal, say if spec.calibrated else None, bar)
        say(f"{spec.name}: {path}")
        model = load_model(path)
        variants.append(MlxVariant(spec, path, model, sp.mlx_weight_bytes(model)))
    return source, load_tokenizer(source.path), variants


def torch_device(cfg: BenchConfig, say) -> Tuple[Optional[str], List[str]]:
    """The PyTorch reference's device (None without it), and a warning when its CPU timings are pessimistic."""
    if not cfg.torch:
        return None, []
    from .torch_reference import pick_device

    device = pick_device(cfg.torch_device)
    if device == "cpu" and engine_info()["blas_scope"] == "global":
        say("warning: " + BLAS_WARNING)
        return device, [BLAS_WARNING]
    return device, []


def start_results(cfg, dtype, device, source: ModelSource, variants: Sequence[MlxVariant], first_notes, notes) -> dict:
    """The results dict before any measurement: command, environment, model, settings, variants, notes."""
    model = {"spec": cfg.model, "path": str(source.path), "provenance": source.provenance()}
    model.update(num_heads=source.num_heads, config={k: source.config.get(k) for k in MODEL_CONFIG_KEYS}, dtype=dtype)
    results = new_results(cfg.command, environment(dtype, device), model, cfg.to_dict())
    results["variants"] = [
        dict(name=v.spec.name, backend="mlx", kv_heads=v.spec.kv_heads, quantize_bits=v.spec.quantize_bits)
        | dict(pool=v.spec.pool, grouping=v.spec.grouping, timed=cfg.speed and represents_speed(v.spec, cfg.pool))
        | dict(path=str(v.path), weight_bytes=v.weights["total"], weights=weights_provenance(v.path))
        for v in variants
    ]
    results["complete"] = False  # until every step has run; partial results are written as they come
    results["speed_note"] = speed_note(cfg, variants)
    results["notes"] += first_notes
    results["notes"] += [results["speed_note"]] if results["speed_note"] else []
    if cfg.torch and any(not v.spec.is_mean_contiguous for v in variants):
        results["notes"].append(
            "The PyTorch reference of a GQA/MQA variant is MHA with each group's mean K/V head repeated: only "
            "mean variants in contiguous groups are compared with it; the others have no token reference."
        )
    if source.is_random:
        results["notes"].append("Random weights: speed and memory are meaningful, ROUGE is meaningless.")
    results["notes"] += notes
    return results


def speed_note(cfg: BenchConfig, variants: Sequence[MlxVariant]) -> Optional[str]:
    """Which variants the sweep leaves out, and why (None when it times them all)."""
    untimed = [v.spec.name for v in variants if cfg.speed and not represents_speed(v.spec, cfg.pool)]
    if not untimed:
        return None
    timed = vs.timed_pool(cfg.pool)
    others = ", ".join(p for p in cfg.pool if p != timed)
    return (
        f"Speed is timed for MHA and the {timed} variants only: the {others} variants have the same shapes "
        f"(K/V heads, weight sizes), hence the speed of the {timed} variant with as many K/V heads "
        f"(not timed: {', '.join(untimed)})."
    )


def speed_variants(cfg, variants: Sequence[MlxVariant], refs: Optional[References], dtype: str, mlx_device: str):
    """What the sweep times (`SpeedVariant`s): every MLX variant of the timed pool, then PyTorch's multi-head."""
    args, H = variants[0].model.args, variants[0].spec.num_heads
    shape = dict(num_heads=H, num_decoder_layers=args.num_decoder_layers, d_kv=args.d_kv, itemsize=DTYPES[dtype].size)
    out = []
    for v in [v for v in variants if represents_speed(v.spec, cfg.pool)]:
        s, w = v.spec, v.weights
        run = lambda ids, n, m=v.model, w=w["total"]: sp.mlx_run(m, ids, n, w, cfg.decode_path)  # noqa: E731
        method = dict(quantize_bits=s.quantize_bits, pool=s.pool, grouping=s.grouping, decode_path=cfg.decode_path)
        bytes_ = dict(weight_bytes=w["total"], decoder_step_bytes=w["decoder_step"])
        mlx = dict(run=run, device=mlx_device, memory_method=MLX_MEMORY, **method, **bytes_, **shape)
        out.append(SpeedVariant(name=s.name, backend="mlx", kv_heads=s.kv_heads, **mlx))
    if refs is not None:
        from .torch_reference import weight_bytes

        tm, device = refs.get(H), refs.device
        w = weight_bytes(tm)
        run = lambda ids, n: sp.torch_run(tm, ids, n, device, w["total"])  # noqa: E731
        memory = TORCH_MEMORY.get(device, TORCH_CPU_MEMORY)
        torch = dict(decode_path="transformers DynamicCache", device=device, memory_method=memory, run=run)
        bytes_ = dict(weight_bytes=w["total"], decoder_step_bytes=w["decoder_step"])
        out.append(SpeedVariant(name="torch MHA", backend="torch", kv_heads=H, **torch, **bytes_, **shape))
    return out


def run_speed(cfg: BenchConfig, variants, refs, vocab: int, dtype: str, results: dict, say) -> None:
    """The sweep; results.json is rewritten after every finished setting (a long sweep keeps what it has)."""
    timed = speed_variants(cfg, variants, refs, dtype, results["environment"]["mlx_device"])
    settings = sp.settings_grid(cfg.batch_sizes, cfg.lengths)
    say(f"speed: {len(timed)} variants x {len(settings)} settings x ({cfg.warmup} warm-up + {cfg.repeats} repeats)")

    def save(done: List[dict], to_disk: bool = True) -> None:
        results["speed"] = done
        results["mlx_vs_torch"] = mlx_vs_torch(done)
        if to_disk:
            write_results(results, cfg.out)

    args = variants[0].model.args
    with progress_bar(len(settings) * (cfg.warmup + cfg.repeats) * len(timed), "speed", cfg.progress) as bar:
        progress = lambda m: (bar.set_postfix_str(m, refresh=False), bar.update(1))  # noqa: E731
        vocab, eos = min(args.vocab_size, vocab), args.eos_token_id
        speed = sweep(timed, settings, vocab, cfg.warmup, cfg.repeats, cfg.seed, eos, progress, on_setting=save)
    save(speed, to_disk=False)


def budget_runs(cfg: BenchConfig, source: ModelSource, variants: Sequence[MlxVariant], device: Optional[str]):
    """(name, K/V heads, impl, checkpoint) of what the budget search measures: the variants the sweep times
    (whether it ran or not) and, on a CPU, PyTorch's multi-head reference."""
    runs = [(v.spec.name, v.spec.kv_heads, "mlx", str(v.path)) for v in variants if represents_speed(v.spec, cfg.pool)]
    if cfg.torch and device == "cpu":
        runs.append(("torch MHA", source.num_heads, "torch", str(source.path)))
    return runs


def write(cfg: BenchConfig, results: dict, quality: List[dict], random_weights: bool) -> dict:
    """Predictions, figures (when matplotlib is installed), results.json and the CSVs; the schema checked."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.quality:
        results["files"]["predictions"] = write_predictions(out, quality)
    if plots_available(cfg):
        from .research.plots import write_figures

        title = f"{cfg.model} ({results['model']['dtype']}, {results['environment']['mlx_device']})"
        results["files"].update(write_figures(results, out, title, random_weights))
    results["complete"] = True
    write_results(results, out)
    problems = validate_results(results)
    if problems:  # a bug here, not a user error
        raise RuntimeError("results do not follow the schema: " + "; ".join(problems))
    return results
