"""The whole benchmark behind `bench.py`: variants, speed sweep, quality runs, results and plots.

`run(BenchConfig)` returns the results dict (see `mlx_mqa.results`) and writes it to `config.out`.
Progress goes to tqdm bars on stderr and to an optional `log` callback; nothing is printed here.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import benchmark as bm
from . import quality as ql
from .data import Example, dataset_lengths, load_examples, with_prefix
from .errors import ConfigError
from .results import (environment, new_results, validate_results, weights_provenance, write_predictions,
                      write_results)
from .variants import (VariantSpec, converted_path, default_cache_dir, ensure_converted, parse_kv_heads,
                       prepare_source, variant_specs)

DEFAULT_QUALITY_LENGTHS = (512, 128)


@dataclass
class BenchConfig:
    model: str = "random:t5-small"
    layers: Optional[int] = None
    seed: int = 0
    kv_heads: Optional[str] = None
    quantize: Sequence[int] = ()
    q_group_size: int = 64
    dtype: Optional[str] = None
    torch: bool = True
    torch_device: str = "auto"
    torch_quality: str = "all"  # all: a reference per kv-heads value; mha: only the multi-head one; none
    batch_sizes: Sequence[int] = (1, 4)
    lengths: Sequence[Tuple[int, int]] = ((512, 64),)
    warmup: int = 1
    repeats: int = 3
    speed: bool = True
    quality: bool = True
    datasets: Sequence[str] = ("bundled:cnn_dailymail",)
    data_files: Sequence[str] = ()
    split: str = "test"
    limit: Optional[int] = 6
    prefix: str = "summarize: "
    quality_lengths: Optional[Tuple[int, int]] = None  # None: each dataset's paper setting
    quality_batch_size: int = 8
    num_beams: Sequence[int] = (1,)  # quality runs once per beam width (1 = greedy)
    bootstrap: int = 1000
    decode_path: str = "auto"  # auto: compiled when the library has it, else eager
    out: str = "results/bench"
    cache_dir: Optional[str] = None
    plots: bool = True
    progress: bool = True
    command: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"] = [f"{i}x{o}" for i, o in self.lengths]
        d["quality_lengths"] = f"{self.quality_lengths[0]}x{self.quality_lengths[1]}" if self.quality_lengths else None
        d["batch_sizes"] = list(self.batch_sizes)
        d["quantize"] = list(self.quantize)
        d["num_beams"] = list(self.num_beams)
        d["datasets"] = list(self.datasets)
        d["data_files"] = list(self.data_files)
        return d


@dataclass
class QualityJob:
    label: str
    examples: List[Example]
    input_len: int
    output_len: int


@dataclass
class MlxVariant:
    spec: VariantSpec
    path: Path
    model: object = None
    weights: Dict[str, int] = field(default_factory=dict)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def resolve_decode_path(choice: str) -> str:
    paths = bm.mlx_decode_paths()
    if choice == "auto":
        return "compiled" if "compiled" in paths else "eager"
    if choice not in paths:
        raise ConfigError(f"--decode {choice!r} is not available in this mlx_mqa; choose from {['auto'] + paths}")
    return choice


def load_quality_jobs(cfg: BenchConfig) -> List[QualityJob]:
    """Read every requested dataset before anything slow runs, so a missing one fails at once."""
    jobs = []
    sources = [(None, f) for f in cfg.data_files] + [(d, None) for d in cfg.datasets]
    for name, file in sources:
        label, examples = load_examples(name, file, cfg.split, cfg.limit)
        lengths = cfg.quality_lengths or (dataset_lengths(name) if name else None) or DEFAULT_QUALITY_LENGTHS
        jobs.append(QualityJob(label, examples, int(lengths[0]), int(lengths[1])))
    return jobs


def run(cfg: BenchConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    say = log or (lambda m: None)
    from .convert import default_dtype
    from .utils import load_model, load_tokenizer

    for nb in cfg.num_beams:
        ql.check_num_beams(nb)
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    dtype = cfg.dtype or default_dtype()
    decode_path = resolve_decode_path(cfg.decode_path)
    jobs = load_quality_jobs(cfg) if cfg.quality else []

    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    say(f"model {cfg.model} (cache {cache_dir})")
    source = prepare_source(cfg.model, cache_dir, layers=cfg.layers, seed=cfg.seed)
    H = source.num_heads
    kv = parse_kv_heads(cfg.kv_heads, H)
    specs = variant_specs(kv, H, cfg.quantize, cfg.q_group_size)
    tokenizer = load_tokenizer(source.path)

    variants: List[MlxVariant] = []
    for spec in specs:
        if not (converted_path(source, spec, dtype, cache_dir) / "model.safetensors").exists():
            say(f"converting to {spec.name} (first use; cached afterwards)")
        path = ensure_converted(source, spec, dtype, cache_dir)
        say(f"{spec.name}: {path}")
        model = load_model(path)
        variants.append(MlxVariant(spec, path, model, bm.mlx_weight_bytes(model)))

    device = None
    torch_blas_note = None
    if cfg.torch:
        from .torch_reference import pick_device, torch_available

        if not torch_available():
            raise ConfigError("the PyTorch reference needs torch and transformers (pip install 'mlx-mqa[torch]'); "
                              "or pass --no-torch")
        device = pick_device(cfg.torch_device)
        from . import backend

        if device == "cpu" and backend.blas_scope == "global":
            msg = ("OpenBLAS is loaded globally (no C compiler for the shim, or LD_PRELOAD), so PyTorch's CPU "
                   "matmuls run through it too and its timings are pessimistic; install a C compiler")
            say("warning: " + msg)
            torch_blas_note = msg

    args = variants[0].model.args
    results = new_results(cfg.command, environment(dtype, device), {
        "spec": cfg.model, "path": str(source.path), "provenance": source.provenance(), "num_heads": H,
        "config": {k: source.config.get(k) for k in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers",
                                                       "num_decoder_layers", "vocab_size", "feed_forward_proj",
                                                       "tie_word_embeddings")},
        "dtype": dtype}, cfg.to_dict())
    results["settings"]["decode_path_resolved"] = decode_path
    results["variants"] = [{"name": v.spec.name, "backend": "mlx", "kv_heads": v.spec.kv_heads,
                            "quantize_bits": v.spec.quantize_bits, "path": str(v.path), "weight_bytes": v.weights["total"],
                            "weights": weights_provenance(v.path)}
                           for v in variants]
    results["complete"] = False  # until every stage has run; partial results are written as they come
    if torch_blas_note:
        results["notes"].append(torch_blas_note)
    if source.is_random:
        results["notes"].append("Random weights: speed and memory are meaningful, ROUGE is meaningless.")

    torch_models: Dict[int, object] = {}

    def torch_model(g: int):
        from .torch_reference import load_reference

        if g not in torch_models:
            torch_models[g] = load_reference(source.path, kv_heads=g, dtype=dtype, device=device)
        return torch_models[g]

    # ------------------------------------------------------------------ speed
    if cfg.speed:
        from .torch_reference import weight_bytes as torch_weight_bytes

        itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
        sv: List[bm.SpeedVariant] = []
        for v in variants:
            sv.append(bm.SpeedVariant(
                name=v.spec.name, backend="mlx", kv_heads=v.spec.kv_heads, num_heads=H,
                num_decoder_layers=args.num_decoder_layers, d_kv=args.d_kv, itemsize=itemsize,
                weight_bytes=v.weights["total"], decoder_step_bytes=v.weights["decoder_step"],
                run=(lambda ids, n, m=v.model, w=v.weights["total"]: bm.mlx_run(m, ids, n, w, decode_path)),
                quantize_bits=v.spec.quantize_bits, self_kv="full" if decode_path == "compiled" else "mean",
                decode_path=decode_path, device=results["environment"]["mlx_device"],
                memory_method="mlx: this variant's weights + (mx.get_peak_memory() - active memory before the run)"))
        if cfg.torch:
            tm = torch_model(H)
            tw = torch_weight_bytes(tm)
            mem = {"cuda": "torch.cuda.max_memory_allocated()", "mps": "torch.mps.driver_allocated_memory() after the run"}
            sv.append(bm.SpeedVariant(
                name="torch MHA", backend="torch", kv_heads=H, num_heads=H, num_decoder_layers=args.num_decoder_layers,
                d_kv=args.d_kv, itemsize=itemsize, weight_bytes=tw["total"], decoder_step_bytes=tw["decoder_step"],
                run=(lambda ids, n, m=tm, w=tw["total"]: bm.torch_run(m, ids, n, device, w)),
                decode_path="transformers DynamicCache", device=device,
                memory_method=mem.get(device, "process RSS: torch weights + (peak RSS - RSS before the run)")))
        settings = bm.settings_grid(cfg.batch_sizes, cfg.lengths)
        total = len(settings) * (cfg.warmup + cfg.repeats) * len(sv)
        say(f"speed: {len(sv)} variants x {len(settings)} settings x ({cfg.warmup} warm-up + {cfg.repeats} repeats)")

        def save_partial(done: List[bm.SpeedResult]) -> None:
            # A sweep can run for hours: every finished setting is on disk before the next starts.
            results["speed"] = [r.to_dict() for r in done]
            results["mlx_vs_torch"] = bm.mlx_vs_torch(done)
            write_results(results, cfg.out)

        with _bar(total, "speed", cfg.progress) as bar:
            speed = bm.sweep(sv, settings, vocab=min(args.vocab_size, len(tokenizer)), warmup=cfg.warmup,
                             repeats=cfg.repeats, seed=cfg.seed, eos_token_id=args.eos_token_id,
                             progress=lambda m: (bar.set_postfix_str(m, refresh=False), bar.update(1)),
                             on_setting=save_partial)
        results["speed"] = [r.to_dict() for r in speed]
        results["mlx_vs_torch"] = bm.mlx_vs_torch(speed)

    # ------------------------------------------------------------------ quality
    quality_results = []
    for job, nb in [(j, b) for j in jobs for b in cfg.num_beams]:
        prompts = with_prefix(job.examples, cfg.prefix)
        say(f"quality: {job.label}, {len(prompts)} examples, {job.input_len} -> {job.output_len} tokens, {nb} beam(s)")
        mlx_tokens: Dict[tuple, List[List[int]]] = {}
        n_runs = len(variants) + (0 if not cfg.torch or cfg.torch_quality == "none" else
                                  1 if cfg.torch_quality == "mha" else len(kv))
        with _bar(n_runs * len(prompts), f"quality {job.label}", cfg.progress) as bar:
            for v in variants:
                bar.set_postfix_str(v.spec.name, refresh=False)
                gen = ql.generate_mlx(v.model, tokenizer, prompts, job.input_len, job.output_len,
                                      cfg.quality_batch_size, nb, progress=bar.update)
                mlx_tokens[(v.spec.kv_heads, v.spec.quantize_bits)] = gen.tokens
                quality_results.append(ql.evaluate(
                    v.spec.name, "mlx", v.spec.kv_heads, H, v.spec.quantize_bits, job.label, job.examples, gen,
                    tokenizer, job.input_len, job.output_len, nb, cfg.quality_batch_size, cfg.bootstrap,
                    cfg.seed, rouge_meaningful=not source.is_random))
            if cfg.torch and cfg.torch_quality != "none":
                for g in (kv if cfg.torch_quality == "all" else [H]):
                    name = "torch " + VariantSpec(g, H).name
                    bar.set_postfix_str(name, refresh=False)
                    gen = ql.generate_torch(torch_model(g), tokenizer, prompts, job.input_len, job.output_len,
                                            cfg.quality_batch_size, nb, device, progress=bar.update)
                    ref = ql.evaluate(VariantSpec(g, H).name, "torch", g, H, None, job.label, job.examples, gen,
                                      tokenizer, job.input_len, job.output_len, nb,
                                      cfg.quality_batch_size, cfg.bootstrap, cfg.seed,
                                      rouge_meaningful=not source.is_random)
                    quality_results.append(ref)
                    for q in quality_results:
                        if q.backend == "mlx" and q.dataset == job.label and q.kv_heads == g and q.num_beams == nb:
                            q.reference_variant = name
                            q.tokens_match_reference = ql.compare_tokens(mlx_tokens[(g, q.quantize_bits)],
                                                                         gen.tokens)
                    if g != H:  # keep only the multi-head reference in memory
                        torch_models.pop(g, None)
                        gc.collect()
    results["quality"] = [q.to_dict() for q in quality_results]

    # ------------------------------------------------------------------ quantized vs float logits
    results["quantization_agreement"] = []
    if jobs and any(v.spec.quantize_bits for v in variants):
        from .agreement import logits_agreement

        job = jobs[0]
        floats = {v.spec.kv_heads: v for v in variants if not v.spec.quantize_bits}
        for v in variants:
            ref = floats.get(v.spec.kv_heads)
            if v.spec.quantize_bits and ref is not None:
                say(f"logits agreement: {v.spec.name} vs {ref.spec.name} on {job.label}")
                a = logits_agreement(v.model, ref.model, tokenizer, with_prefix(job.examples, cfg.prefix),
                                     [e.summary for e in job.examples], job.input_len, job.output_len)
                results["quantization_agreement"].append(
                    {"variant": v.spec.name, "reference": ref.spec.name, "dataset": job.label, **a})

    # ------------------------------------------------------------------ files
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results["files"]["predictions"] = write_predictions(out, quality_results)
    if cfg.plots:
        from .plots import plot_rouge_vs_time, plot_time_vs_groups

        title = f"{cfg.model} ({dtype}, {results['environment']['mlx_device']})"
        p = plot_time_vs_groups(results["speed"], out / "time_vs_groups.png", title=f"Time per sample vs K/V groups\n{title}")
        if p:
            results["files"]["plot_time_vs_groups"] = p.name
        p = plot_rouge_vs_time(results["quality"], out / "rouge_vs_time.png", random_weights=source.is_random)
        if p:
            results["files"]["plot_rouge_vs_time"] = p.name
    results["complete"] = True
    write_results(results, out)
    problems = validate_results(results)
    if problems:  # a bug here, not a user error
        raise RuntimeError("results do not follow the schema: " + "; ".join(problems))
    return results
