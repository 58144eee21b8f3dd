"""Summarization quality of each variant: generate on real examples, score ROUGE, compare tokens.

MLX variants generate through `mlx_mqa.decoding.generate`; the PyTorch reference through transformers'
`generate`, on the very same token ids (both tokenized by `mlx_mqa.decoding.inputs.encode_prompts`, so
truncation to the input length is identical). Greedy by default; `num_beams` > 1 is beam search on both.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..decoding.generate import generate
from ..decoding.inputs import encode_prompts
from .data import Example
from .rouge import METRICS, score, sentence_splitter


@dataclass
class Generation:
    """Generated ids per example (EOS kept when emitted) and the wall time per batch."""

    tokens: List[List[int]]
    seconds: float
    batch_seconds: List[float] = field(default_factory=list)


def batches(n: int, batch_size: int) -> List[range]:
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _timed_batches(
    n: int,
    batch_size: int,
    run: Callable[[range], Sequence[Sequence[int]]],
    progress: Optional[Callable[[int], None]],
    sync: Callable[[], None] = lambda: None,
) -> Generation:
    """`run(rows)` on every batch of the `n` prompts, each timed apart (`sync` waits for the device first and
    last); the generated ids become plain int lists after the clock stops."""
    tokens: List[List[int]] = []
    times = []
    for rows in batches(n, batch_size):
        sync()
        t0 = time.perf_counter()
        out = run(rows)
        sync()
        times.append(time.perf_counter() - t0)
        tokens.extend([list(map(int, t)) for t in out])
        if progress:
            progress(len(rows))
    return Generation(tokens, float(sum(times)), times)


def _encode(tokenizer, prompts: Sequence[str], max_input_tokens: int):
    return encode_prompts(tokenizer, list(prompts), max_input_tokens=max_input_tokens, truncate=True)


def generate_mlx(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_input_tokens: int,
    max_new_tokens: int,
    batch_size: int = 8,
    num_beams: int = 1,
    warmup: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> Generation:
    kw = {"num_beams": num_beams} if num_beams > 1 else {}

    def run(texts, n, **extra):
        return generate(
            model, tokenizer, texts, max_new_tokens=n, max_input_tokens=max_input_tokens, truncate=True, **kw, **extra
        )

    if warmup:
        run(list(prompts[:batch_size]), 2)
    return _timed_batches(
        len(prompts),
        batch_size,
        lambda rows: run([prompts[i] for i in rows], max_new_tokens, return_result=True).tokens,
        progress,
    )


def generate_torch(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_input_tokens: int,
    max_new_tokens: int,
    batch_size: int = 8,
    num_beams: int = 1,
    device: str = "cpu",
    warmup: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> Generation:
    from .torch_reference import generate as torch_generate
    from .torch_reference import synchronize

    eos = tokenizer.eos_token_id

    def run(rows, n):
        enc = _encode(tokenizer, [prompts[i] for i in rows], max_input_tokens)
        mask = None if enc.attention_mask is None else np.array(enc.attention_mask)
        return torch_generate(
            model, np.array(enc.input_ids), mask, n, device=device, num_beams=num_beams, eos_token_id=eos
        )

    if warmup:
        run(range(min(batch_size, len(prompts))), 2)
    return _timed_batches(
        len(prompts), batch_size, lambda rows: run(rows, max_new_tokens), progress, sync=lambda: synchronize(device)
    )


def compare_tokens(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> Dict[str, object]:
    """How many examples got identical generated ids, and the first example index that did not."""
    same = [list(x) == list(y) for x, y in zip(a, b)]
    first = next((i for i, s in enumerate(same) if not s), None)
    return {
        "identical": int(sum(same)),
        "total": len(same),
        "all_identical": all(same) and len(a) == len(b),
        "first_mismatch": first,
    }


@dataclass
class QualityResult:
    variant: str
    backend: str
    kv_heads: int
    num_heads: int
    quantize_bits: Optional[int]
    dataset: str
    n: int
    input_len: int
    output_len: int
    num_beams: int
    batch_size: int
    rouge: Dict[str, Dict[str, float]]  # metric -> mean / low / high, percent
    mean_rouge: float  # (R1 + R2 + RL) / 3
    time_per_sample_s: float
    generated_tokens_mean: float
    reference_variant: Optional[str] = None  # the transformers model this variant's tokens were compared with
    tokens_match_reference: Optional[Dict[str, object]] = None
    sentence_splitter: str = ""
    rouge_meaningful: bool = True  # False for random weights
    pool: str = "mean"  # how the K/V heads were made (the PyTorch reference: group means)
    grouping: str = "contiguous"
    predictions: List[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        return d


def evaluate(
    variant: str,
    backend: str,
    kv_heads: int,
    num_heads: int,
    quantize_bits: Optional[int],
    dataset: str,
    examples: Sequence[Example],
    generation: Generation,
    tokenizer,
    input_len: int,
    output_len: int,
    num_beams: int,
    batch_size: int,
    bootstrap: int = 1000,
    seed: int = 0,
    rouge_meaningful: bool = True,
    pool: str = "mean",
    grouping: str = "contiguous",
) -> QualityResult:
    """Decode, score and package one variant's generations (`rouge_meaningful=False` for random weights)."""
    texts = tokenizer.batch_decode(generation.tokens, skip_special_tokens=True)
    texts = [t.strip() for t in texts]
    refs = [e.summary for e in examples]
    summary, per = score(texts, refs, use_stemmer=True, n_resamples=bootstrap, seed=seed)
    preds = [
        {
            "id": e.id,
            "prediction": t,
            "reference": e.summary,
            "tokens": tok,
            **{m: float(per[m][i]) for m in METRICS},
            **({} if rouge_meaningful else {"rouge_meaningful": False}),
        }
        for i, (e, t, tok) in enumerate(zip(examples, texts, generation.tokens))
    ]
    return QualityResult(
        variant=variant,
        backend=backend,
        kv_heads=kv_heads,
        num_heads=num_heads,
        quantize_bits=quantize_bits,
        dataset=dataset,
        n=len(examples),
        input_len=input_len,
        output_len=output_len,
        num_beams=num_beams,
        batch_size=batch_size,
        rouge={m: s.to_dict() for m, s in summary.items()},
        mean_rouge=float(np.mean([summary[m].mean for m in ("rouge1", "rouge2", "rougeL")])),
        time_per_sample_s=generation.seconds / max(len(examples), 1),
        generated_tokens_mean=float(np.mean([len(t) for t in generation.tokens])) if generation.tokens else 0.0,
        sentence_splitter=sentence_splitter(),
        rouge_meaningful=rouge_meaningful,
        pool=pool,
        grouping=grouping,
        predictions=preds,
    )
