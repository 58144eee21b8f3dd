"""Summarization quality of each variant: generation, ROUGE, and the tokens compared with PyTorch's.

MLX generates through `mlx_mqa.decoding.generate`, PyTorch through transformers' `generate`, both on the ids of
`mlx_mqa.decoding.inputs.encode_prompts` (the same truncation). Greedy; `num_beams` > 1 is beam search on both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from ..decoding.generate import generate
from ..decoding.inputs import encode_prompts
from .config import progress_bar
from .data import QualityJob, with_prefix
from .rouge import METRICS, mean_rouge, score, sentence_splitter
from .variants import VariantSpec


@dataclass
class Generation:
    tokens: List[List[int]]  # per example, EOS kept when emitted
    seconds: float


def _timed(run, n: int, batch_size: int, max_new_tokens: int, warmup: bool, progress, sync=lambda: None):
    """`run(rows, max_new_tokens)` on every batch of the `n` prompts (after a short untimed warm-up), each batch
    timed apart (`sync` waits for the device first and last); ids become plain int lists after the clock stops."""
    if warmup:
        run(range(min(batch_size, n)), 2)
    gen = Generation([], 0.0)
    for rows in [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]:
        sync()
        t0 = time.perf_counter()
        out = run(rows, max_new_tokens)
        sync()
        gen.seconds += time.perf_counter() - t0
        gen.tokens.extend([list(map(int, t)) for t in out])
        if progress:
            progress(len(rows))
    return gen


def generate_mlx(model, tokenizer, prompts, max_input_tokens, max_new_tokens, batch_size=8, num_beams=1, **kw):
    """`_timed` generation of an MLX model (`kw`: warmup, progress)."""
    gen = dict(max_input_tokens=max_input_tokens, truncate=True, return_result=True)
    gen.update({"num_beams": num_beams} if num_beams > 1 else {})

    def run(rows, n):
        return generate(model, tokenizer, [prompts[i] for i in rows], max_new_tokens=n, **gen).tokens

    return _timed(run, len(prompts), batch_size, max_new_tokens, kw.get("warmup", True), kw.get("progress"))


def generate_torch(
    model, tokenizer, prompts, max_input_tokens, max_new_tokens, batch_size=8, num_beams=1, device="cpu", **kw
):
    """The same through transformers, on the very ids `encode_prompts` gives MLX."""
    from .torch_reference import generate as torch_generate
    from .torch_reference import synchronize

    def run(rows, n):
        enc = encode_prompts(tokenizer, [prompts[i] for i in rows], max_input_tokens=max_input_tokens, truncate=True)
        mask = None if enc.attention_mask is None else np.array(enc.attention_mask)
        ids = np.array(enc.input_ids)
        return torch_generate(model, ids, mask, n, device, num_beams=num_beams, eos_token_id=tokenizer.eos_token_id)

    sync = lambda: synchronize(device)  # noqa: E731
    return _timed(run, len(prompts), batch_size, max_new_tokens, kw.get("warmup", True), kw.get("progress"), sync)


def compare_tokens(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> Dict[str, object]:
    """How many examples got identical generated ids, and the first example index that did not."""
    same = [list(x) == list(y) for x, y in zip(a, b)]
    first = next((i for i, s in enumerate(same) if not s), None)
    all_same = all(same) and len(a) == len(b)
    return {"identical": int(sum(same)), "total": len(same), "all_identical": all_same, "first_mismatch": first}


def evaluate(spec: VariantSpec, backend: str, job: QualityJob, num_beams: int, gen: Generation, cfg, tokenizer, real):
    """One row of results.json's "quality" (quality.csv flattens it: `results.quality_row`); its per-example
    predictions under "predictions", left out of results.json. `real`: False for random weights."""
    texts = [t.strip() for t in tokenizer.batch_decode(gen.tokens, skip_special_tokens=True)]
    summary, per = score(texts, [e.summary for e in job.examples], n_resamples=cfg.bootstrap, seed=cfg.seed)
    n = len(job.examples)
    return dict(
        variant=spec.name,
        backend=backend,
        **{k: getattr(spec, k) for k in ("kv_heads", "num_heads", "quantize_bits")},
        dataset=job.label,
        n=n,
        input_len=job.input_len,
        output_len=job.output_len,
        num_beams=num_beams,
        batch_size=cfg.quality_batch_size,
        rouge=summary,  # metric -> mean / low / high, percent
        mean_rouge=mean_rouge(summary),
        time_per_sample_s=gen.seconds / max(n, 1),
        generated_tokens_mean=float(np.mean([len(t) for t in gen.tokens])) if gen.tokens else 0.0,
        reference_variant=None,  # the PyTorch model these tokens were compared with (`match_reference`)
        tokens_match_reference=None,
        sentence_splitter=sentence_splitter(),
        rouge_meaningful=real,
        pool=spec.pool,
        grouping=spec.grouping,
        predictions=[
            {
                "id": e.id,
                "prediction": t,
                "reference": e.summary,
                "tokens": tok,
                **{m: float(per[m][i]) for m in METRICS},
            }
            | ({} if real else {"rouge_meaningful": False})
            for i, (e, t, tok) in enumerate(zip(job.examples, texts, gen.tokens))
        ],
    )


def torch_quality_heads(cfg, kv_heads: Sequence[int], num_heads: int) -> List[int]:
    """K/V head counts that get a PyTorch quality reference (--torch-quality). A GQA/MQA reference is the
    group-mean model, so it runs only when some variant is mean-pooled in contiguous groups."""
    if not cfg.torch or cfg.torch_quality == "none":
        return []
    heads = list(kv_heads) if cfg.torch_quality == "all" else [num_heads]
    mean = "mean" in cfg.pool and cfg.grouping == "contiguous"
    return [g for g in heads if g == num_heads or mean]


def run_quality(cfg, jobs: Sequence[QualityJob], variants, refs, tokenizer, random_weights: bool, say) -> List[dict]:
    """Generation + ROUGE of every MLX variant (`run.MlxVariant`) and PyTorch reference (`torch_reference.
    References`) on every dataset, per beam width; the MLX tokens compared with the reference made the same way."""
    out: List[dict] = []
    H = variants[0].spec.num_heads if variants else 0
    kv = list(dict.fromkeys(v.spec.kv_heads for v in variants))
    heads = torch_quality_heads(cfg, kv, H) if refs is not None else []
    for job, nb in [(j, b) for j in jobs for b in cfg.num_beams]:
        prompts = with_prefix(job.examples, cfg.prefix)
        say(f"quality: {job.label}, {len(prompts)} examples, {job.input_len} -> {job.output_len} tokens, {nb} beam(s)")
        gen_args = (tokenizer, prompts, job.input_len, job.output_len, cfg.quality_batch_size, nb)
        with progress_bar((len(variants) + len(heads)) * len(prompts), f"quality {job.label}", cfg.progress) as bar:
            tokens = {}
            for v in variants:
                bar.set_postfix_str(v.spec.name, refresh=False)
                gen = generate_mlx(v.model, *gen_args, progress=bar.update)
                tokens[v.spec.name] = gen.tokens
                out.append(evaluate(v.spec, "mlx", job, nb, gen, cfg, tokenizer, not random_weights))
            for g in heads:
                spec = VariantSpec(g, H)
                bar.set_postfix_str("torch " + spec.name, refresh=False)
                gen = generate_torch(refs.get(g), *gen_args, refs.device, progress=bar.update)
                out.append(evaluate(spec, "torch", job, nb, gen, cfg, tokenizer, not random_weights))
                match_reference(out, spec, job.label, nb, tokens, gen.tokens)
                if g != H:  # keep only the multi-head reference in memory
                    refs.drop(g)
    return out


def match_reference(out: List[dict], spec: VariantSpec, dataset: str, nb: int, tokens, ref_tokens) -> None:
    """Compare the tokens of every MLX result made as the reference `spec` is (same G, mean, contiguous)."""
    for q in out:
        same = tuple(q[k] for k in ("backend", "dataset", "kv_heads", "num_beams", "pool", "grouping"))
        if same == ("mlx", dataset, spec.kv_heads, nb, spec.pool, spec.grouping):
            q["reference_variant"] = "torch " + spec.name
            q["tokens_match_reference"] = compare_tokens(tokens[q["variant"]], ref_tokens)
