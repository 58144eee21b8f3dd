"""The run's quality steps: generation + ROUGE of every variant on every dataset, and logits agreement.

`run_quality(bench)` generates with every MLX variant (and the PyTorch reference, per --torch-quality) on
every dataset and beam width, scores ROUGE and compares the tokens of each MLX variant converted as the
reference is (mean pooling, contiguous groups) with it;
`run_agreement(bench)` compares the teacher-forced logits of every quantized variant with its float variant.
Both fill in `bench.results`; the steps before and after them: `mlx_mqa.bench.runner`.
"""

from __future__ import annotations

import gc
from typing import Dict, List

from . import quality as ql
from .data import with_prefix
from .state import Bench, QualityJob, progress_bar
from .variants import VariantSpec


def torch_quality_heads(bench: Bench) -> List[int]:
    """K/V head counts that get a PyTorch quality reference (--torch-quality). A GQA/MQA reference is the
    group-mean model, so it runs only when some variant is mean-pooled in contiguous groups."""
    cfg, H = bench.cfg, bench.num_heads
    if not cfg.torch or cfg.torch_quality == "none":
        return []
    heads = list(bench.kv) if cfg.torch_quality == "all" else [H]
    mean = "mean" in cfg.pool and cfg.grouping == "contiguous"
    return [g for g in heads if g == H or mean]


def _evaluate(
    bench: Bench, spec: VariantSpec, backend: str, job: QualityJob, num_beams: int, gen: ql.Generation
) -> ql.QualityResult:
    cfg = bench.cfg
    return ql.evaluate(
        spec.name,
        backend,
        spec.kv_heads,
        bench.num_heads,
        spec.quantize_bits,
        job.label,
        job.examples,
        gen,
        bench.tokenizer,
        job.input_len,
        job.output_len,
        num_beams,
        cfg.quality_batch_size,
        cfg.bootstrap,
        cfg.seed,
        rouge_meaningful=not bench.source.is_random,
        pool=spec.pool,
        grouping=spec.grouping,
    )


def run_quality(bench: Bench) -> List[ql.QualityResult]:
    """Generation + ROUGE of every variant (and PyTorch reference) on every dataset, per beam width."""
    out: List[ql.QualityResult] = []
    refs = torch_quality_heads(bench)
    for job, nb in [(j, b) for j in bench.jobs for b in bench.cfg.num_beams]:
        prompts = with_prefix(job.examples, bench.cfg.prefix)
        bench.say(
            f"quality: {job.label}, {len(prompts)} examples, {job.input_len} -> {job.output_len} tokens, {nb} beam(s)"
        )
        total = (len(bench.variants) + len(refs)) * len(prompts)
        with progress_bar(total, f"quality {job.label}", bench.cfg.progress) as bar:
            mlx_tokens = quality_mlx(bench, job, nb, prompts, bar, out)
            for g in refs:
                quality_torch(bench, job, nb, prompts, g, bar, out, mlx_tokens)
    bench.results["quality"] = [q.to_dict() for q in out]
    return out


def _generation_args(bench: Bench, job: QualityJob, nb: int, prompts: List[str]) -> tuple:
    """What `generate_mlx` and `generate_torch` take after the model: tokenizer, prompts, lengths, batch, beams."""
    return bench.tokenizer, prompts, job.input_len, job.output_len, bench.cfg.quality_batch_size, nb


def quality_mlx(
    bench: Bench, job: QualityJob, nb: int, prompts: List[str], bar, out: List[ql.QualityResult]
) -> Dict[str, List[List[int]]]:
    """Every MLX variant on one job; returns the generated ids by variant name."""
    tokens: Dict[str, List[List[int]]] = {}
    for v in bench.variants:
        bar.set_postfix_str(v.spec.name, refresh=False)
        gen = ql.generate_mlx(v.model, *_generation_args(bench, job, nb, prompts), progress=bar.update)
        tokens[v.spec.name] = gen.tokens
        out.append(_evaluate(bench, v.spec, "mlx", job, nb, gen))
    return tokens


def quality_torch(
    bench: Bench,
    job: QualityJob,
    nb: int,
    prompts: List[str],
    g: int,
    bar,
    out: List[ql.QualityResult],
    mlx_tokens: Dict[str, List[List[int]]],
) -> None:
    """The PyTorch reference with G K/V groups (group means, contiguous) on one job; the MLX variants of G
    made the same way are compared with it (other methods have no token reference)."""
    H = bench.num_heads
    spec = VariantSpec(g, H)
    name = "torch " + spec.name
    bar.set_postfix_str(name, refresh=False)
    args = _generation_args(bench, job, nb, prompts)
    gen = ql.generate_torch(bench.torch_model(g), *args, bench.device, progress=bar.update)
    out.append(_evaluate(bench, spec, "torch", job, nb, gen))
    for q in out:
        same_method = (q.pool, q.grouping) == (spec.pool, spec.grouping)
        if q.backend == "mlx" and q.dataset == job.label and q.kv_heads == g and q.num_beams == nb and same_method:
            q.reference_variant = name
            q.tokens_match_reference = ql.compare_tokens(mlx_tokens[q.variant], gen.tokens)
    if g != H:  # keep only the multi-head reference in memory
        bench.torch_models.pop(g, None)
        gc.collect()


def _method(spec: VariantSpec) -> tuple:
    return spec.kv_heads, spec.pool, spec.grouping


def run_agreement(bench: Bench) -> None:
    """Teacher-forced logits of every quantized variant vs its float variant, on the first dataset."""
    results = bench.results
    results["quantization_agreement"] = []
    if not bench.jobs or not any(v.spec.quantize_bits for v in bench.variants):
        return
    from .agreement import logits_agreement

    job = bench.jobs[0]
    floats = {_method(v.spec): v for v in bench.variants if not v.spec.quantize_bits}
    for v in bench.variants:
        ref = floats.get(_method(v.spec))
        if v.spec.quantize_bits and ref is not None:
            bench.say(f"logits agreement: {v.spec.name} vs {ref.spec.name} on {job.label}")
            a = logits_agreement(
                v.model,
                ref.model,
                bench.tokenizer,
                with_prefix(job.examples, bench.cfg.prefix),
                [e.summary for e in job.examples],
                job.input_len,
                job.output_len,
            )
            results["quantization_agreement"].append(
                {"variant": v.spec.name, "reference": ref.spec.name, "dataset": job.label, **a}
            )
