"""The whole benchmark behind `python -m mlx_mqa.bench`: variants, speed sweep, quality runs, results, plots.

`run(BenchConfig)` returns the results dict (see `mlx_mqa.bench.results`) and writes it to `config.out`, in
steps: `prepare` (optional dependencies, settings, data, converted variants, the PyTorch device), `run_speed`,
`run_quality`, `run_agreement` (quantized vs float logits; both in `mlx_mqa.bench.quality_steps`) and `write`.
The state the steps share: `mlx_mqa.bench.state`. Progress goes to tqdm bars on stderr and to an optional
`log` callback; nothing is printed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .. import paths
from ..checkpoint.load import load_model, load_tokenizer
from ..conversion import Calibration
from ..conversion.calibration import check_source
from ..conversion.converter import needs_calibration
from ..decoding.beam import check_num_beams
from ..errors import ConfigError
from ..models.dtypes import DTYPES, default_dtype
from . import quality as ql
from . import speed as sp
from .budget import run_budget
from .config import BenchConfig
from .data import dataset_lengths, load_examples
from .deps import check_dependencies, plots_available
from .memory import mlx_weight_bytes
from .quality_steps import run_agreement, run_quality
from .results import environment, new_results, validate_results, weights_provenance, write_predictions, write_results
from .state import Bench, MlxVariant, QualityJob, progress_bar
from .sweep import SpeedResult, SpeedVariant, mlx_vs_torch, sweep
from .variants import (
    check_methods,
    converted_path,
    ensure_converted,
    parse_kv_heads,
    prepare_source,
    timed_pool,
    variant_specs,
)

DEFAULT_QUALITY_LENGTHS = (512, 128)
MODEL_CONFIG_KEYS = (
    "d_model",
    "d_kv",
    "d_ff",
    "num_heads",
    "num_layers",
    "num_decoder_layers",
    "vocab_size",
    "feed_forward_proj",
    "tie_word_embeddings",
)
MLX_MEMORY = "mlx: this variant's weights + (mx.get_peak_memory() - active memory before the run)"
TORCH_MEMORY = {"cuda": "torch.cuda.max_memory_allocated()", "mps": "torch.mps.driver_allocated_memory() after the run"}
TORCH_CPU_MEMORY = "process RSS: torch weights + (peak RSS - RSS before the run)"


def check_decode_path(choice: str) -> str:
    """'auto' (the library's default step), 'compiled' or 'eager'."""
    if choice not in sp.DECODE_PATHS:
        raise ConfigError(f"unknown --decode {choice!r}; choose from {list(sp.DECODE_PATHS)}")
    return choice


def check_settings(cfg: BenchConfig) -> None:
    for nb in cfg.num_beams:
        check_num_beams(nb)
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    check_methods(cfg.pool, cfg.grouping)
    if any(needs_calibration(p, cfg.grouping) for p in cfg.pool):
        if cfg.calibration_samples < 1:
            raise ConfigError(f"--calibration-samples must be at least 1, got {cfg.calibration_samples}")
        check_source(cfg.calibration)


def calibration(cfg: BenchConfig) -> Calibration:
    """The calibration settings of fit / svd / svd-q and --grouping similar (documents get --prefix)."""
    return Calibration(cfg.calibration, cfg.calibration_samples, *cfg.calibration_lengths, prefix=cfg.prefix)


def load_quality_jobs(cfg: BenchConfig) -> List[QualityJob]:
    """Read every requested dataset before anything slow runs, so a missing one fails at once."""
    jobs = []
    sources = [(None, f) for f in cfg.data_files] + [(d, None) for d in cfg.datasets]
    for name, file in sources:
        label, examples = load_examples(name, file, cfg.split, cfg.limit)
        lengths = cfg.quality_lengths or (dataset_lengths(name) if name else None) or DEFAULT_QUALITY_LENGTHS
        jobs.append(QualityJob(label, examples, int(lengths[0]), int(lengths[1])))
    return jobs


# ----------------------------------------------------------------------------------------------- prepare


def run(cfg: BenchConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    bench = prepare(cfg, log or (lambda m: None))
    if cfg.speed:
        run_speed(bench)
    if cfg.memory_budget:
        run_budget(bench)
    quality = run_quality(bench)
    run_agreement(bench)
    return write(bench, quality)


def prepare(cfg: BenchConfig, say: Callable[[str], None]) -> Bench:
    """Everything before the first timed run; what a user got wrong fails here, before any slow work."""
    notes = check_dependencies(cfg)
    for note in notes:
        say("note: " + note)
    check_settings(cfg)
    dtype = cfg.dtype or default_dtype()
    decode_path = check_decode_path(cfg.decode_path)
    jobs = load_quality_jobs(cfg) if cfg.quality else []

    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else paths.cache_dir()
    say(f"model {cfg.model} (cache {cache_dir})")
    source = prepare_source(cfg.model, cache_dir, layers=cfg.layers, seed=cfg.seed)
    kv = parse_kv_heads(cfg.kv_heads, source.num_heads)
    bench = Bench(cfg, say, dtype, decode_path, jobs, source, kv, load_tokenizer(source.path))
    bench.variants = load_variants(bench, cache_dir)
    bench.device, blas_note = torch_device(cfg, say)
    bench.results = start_results(bench, ([blas_note] if blas_note else []), notes)
    return bench


def load_variants(bench: Bench, cache_dir: Path) -> List[MlxVariant]:
    """Every --kv-heads (and --quantize) variant of every --pool, converted on first use and loaded."""
    cfg, out = bench.cfg, []
    cal = calibration(cfg)
    specs = variant_specs(bench.kv, bench.num_heads, cfg.quantize, cfg.q_group_size, cfg.pool, cfg.grouping)
    for spec in specs:
        if not (converted_path(bench.source, spec, bench.dtype, cache_dir, cal) / "model.safetensors").exists():
            bench.say(f"converting to {spec.name} (first use; cached afterwards)")
        # A calibrated conversion reports its steps (calibration can take minutes); the others convert quietly.
        say = bench.say if spec.calibrated else None
        bar = (lambda total, desc: progress_bar(total, desc, cfg.progress)) if spec.calibrated else None
        path = ensure_converted(bench.source, spec, bench.dtype, cache_dir, cal, say, bar)
        bench.say(f"{spec.name}: {path}")
        model = load_model(path)
        out.append(MlxVariant(spec, path, model, mlx_weight_bytes(model)))
    return out


def torch_device(cfg: BenchConfig, say: Callable[[str], None]) -> Tuple[Optional[str], Optional[str]]:
    """The PyTorch reference's device (None without it), and a note when its CPU timings are pessimistic."""
    if not cfg.torch:
        return None, None
    from .. import backend
    from .torch_reference import pick_device

    device = pick_device(cfg.torch_device)
    if device == "cpu" and backend.blas_scope == "global":
        msg = (
            "OpenBLAS is loaded globally (no C compiler for the shim, or LD_PRELOAD), so PyTorch's CPU "
            "matmuls run through it too and its timings are pessimistic; install a C compiler"
        )
        say("warning: " + msg)
        return device, msg
    return device, None


def start_results(bench: Bench, first_notes: Sequence[str], last_notes: Sequence[str]) -> dict:
    """The results dict before any measurement: command, environment, model, settings, variants, notes."""
    cfg, source = bench.cfg, bench.source
    results = new_results(
        cfg.command,
        environment(bench.dtype, bench.device),
        {
            "spec": cfg.model,
            "path": str(source.path),
            "provenance": source.provenance(),
            "num_heads": bench.num_heads,
            "config": {k: source.config.get(k) for k in MODEL_CONFIG_KEYS},
            "dtype": bench.dtype,
        },
        cfg.to_dict(),
    )
    results["variants"] = [
        {
            "name": v.spec.name,
            "backend": "mlx",
            "kv_heads": v.spec.kv_heads,
            "quantize_bits": v.spec.quantize_bits,
            "pool": v.spec.pool,
            "grouping": v.spec.grouping,
            "timed": bench.timed(v.spec),
            "path": str(v.path),
            "weight_bytes": v.weights["total"],
            "weights": weights_provenance(v.path),
        }
        for v in bench.variants
    ]
    results["complete"] = False  # until every step has run; partial results are written as they come
    results["notes"].extend(first_notes)
    results["speed_note"] = speed_note(bench)
    if results["speed_note"]:
        results["notes"].append(results["speed_note"])
    if bench.cfg.torch and any(not v.spec.is_mean_contiguous for v in bench.variants):
        results["notes"].append(
            "The PyTorch reference of a GQA/MQA variant is MHA with each group's mean K/V head repeated: only "
            "mean variants in contiguous groups are compared with it; the others have no token reference."
        )
    if source.is_random:
        results["notes"].append("Random weights: speed and memory are meaningful, ROUGE is meaningless.")
    results["notes"].extend(last_notes)
    return results


# ----------------------------------------------------------------------------------------------- speed


def speed_note(bench: Bench) -> Optional[str]:
    """Which variants the sweep leaves out, and why (None when it times them all)."""
    untimed = [v.spec.name for v in bench.variants if not bench.timed(v.spec)] if bench.cfg.speed else []
    if not untimed:
        return None
    timed = timed_pool(bench.cfg.pool)
    others = ", ".join(p for p in bench.cfg.pool if p != timed)
    return (
        f"Speed is timed for MHA and the {timed} variants only: the {others} variants have the same shapes "
        f"(K/V heads, weight sizes), hence the speed of the {timed} variant with as many K/V heads "
        f"(not timed: {', '.join(untimed)})."
    )


def speed_variants(bench: Bench) -> List[SpeedVariant]:
    """What the sweep times: every MLX variant of the timed pool (see `speed_note`), then the PyTorch
    multi-head reference."""
    args, H = bench.variants[0].model.args, bench.num_heads
    common = dict(
        num_heads=H, num_decoder_layers=args.num_decoder_layers, d_kv=args.d_kv, itemsize=DTYPES[bench.dtype].size
    )
    path = bench.decode_path
    out = [
        SpeedVariant(
            name=v.spec.name,
            backend="mlx",
            kv_heads=v.spec.kv_heads,
            weight_bytes=v.weights["total"],
            decoder_step_bytes=v.weights["decoder_step"],
            run=(lambda ids, n, m=v.model, w=v.weights["total"]: sp.mlx_run(m, ids, n, w, path)),
            quantize_bits=v.spec.quantize_bits,
            pool=v.spec.pool,
            grouping=v.spec.grouping,
            decode_path=path,
            device=bench.results["environment"]["mlx_device"],
            memory_method=MLX_MEMORY,
            **common,
        )
        for v in bench.variants
        if bench.timed(v.spec)
    ]
    if bench.cfg.torch:
        from .torch_reference import weight_bytes

        tm, device = bench.torch_model(H), bench.device
        tw = weight_bytes(tm)
        out.append(
            SpeedVariant(
                name="torch MHA",
                backend="torch",
                kv_heads=H,
                weight_bytes=tw["total"],
                decoder_step_bytes=tw["decoder_step"],
                run=(lambda ids, n, m=tm, w=tw["total"]: sp.torch_run(m, ids, n, device, w)),
                decode_path="transformers DynamicCache",
                device=device,
                memory_method=TORCH_MEMORY.get(device, TORCH_CPU_MEMORY),
                **common,
            )
        )
    return out


def run_speed(bench: Bench) -> None:
    """The sweep; results.json is rewritten after every finished setting (a long sweep keeps what it has)."""
    cfg, results = bench.cfg, bench.results
    variants = speed_variants(bench)
    settings = sp.settings_grid(cfg.batch_sizes, cfg.lengths)
    total = len(settings) * (cfg.warmup + cfg.repeats) * len(variants)
    bench.say(
        f"speed: {len(variants)} variants x {len(settings)} settings x ({cfg.warmup} warm-up + {cfg.repeats} repeats)"
    )

    def save(done: List[SpeedResult]) -> None:
        results["speed"] = [r.to_dict() for r in done]
        results["mlx_vs_torch"] = mlx_vs_torch(done)

    def save_partial(done: List[SpeedResult]) -> None:
        save(done)
        write_results(results, cfg.out)

    args = bench.variants[0].model.args
    with progress_bar(total, "speed", cfg.progress) as bar:
        speed = sweep(
            variants,
            settings,
            vocab=min(args.vocab_size, len(bench.tokenizer)),
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            seed=cfg.seed,
            eos_token_id=args.eos_token_id,
            progress=lambda m: (bar.set_postfix_str(m, refresh=False), bar.update(1)),
            on_setting=save_partial,
        )
    save(speed)


# ----------------------------------------------------------------------------------------------- files


def write(bench: Bench, quality: List[ql.QualityResult]) -> dict:
    """Predictions, figures (when matplotlib is installed), results.json and the CSVs; the schema checked."""
    cfg, results = bench.cfg, bench.results
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results["files"]["predictions"] = write_predictions(out, quality)
    if plots_available(cfg):
        write_plots(bench, out)
    results["complete"] = True
    write_results(results, out)
    problems = validate_results(results)
    if problems:  # a bug here, not a user error
        raise RuntimeError("results do not follow the schema: " + "; ".join(problems))
    return results


def write_plots(bench: Bench, out: Path) -> None:
    from .plots import plot_budget, plot_rouge_vs_time, plot_time_vs_groups

    results = bench.results
    title = f"{bench.cfg.model} ({bench.dtype}, {results['environment']['mlx_device']})"
    p = plot_time_vs_groups(
        results["speed"], out / "time_vs_groups.png", title=f"Time per sample vs K/V groups\n{title}"
    )
    if p:
        results["files"]["plot_time_vs_groups"] = p.name
    if results.get("budget"):
        p = plot_budget(results["budget"], out / "budget.png", title=f"Largest batch within the budget\n{title}")
        if p:
            results["files"]["plot_budget"] = p.name
    p = plot_rouge_vs_time(results["quality"], out / "rouge_vs_time.png", random_weights=bench.source.is_random)
    if p:
        results["files"]["plot_rouge_vs_time"] = p.name
