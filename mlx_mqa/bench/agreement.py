"""How closely a (quantized) model follows a reference model: teacher-forced logits on real text."""

from __future__ import annotations

from typing import List

import mlx.core as mx
import numpy as np

from ..decoding.inputs import pad_batch
from .data import with_prefix


def logits_agreement(model, reference, tokenizer, documents, summaries, input_len, output_len, batch_size=4):
    """Top-1 agreement and max |logit difference| of `model` vs `reference` over every target position, the
    decoder fed the reference summary (teacher forcing) so that both models see the same prefixes."""
    agree = total = 0
    max_diff = scale = 0.0
    start = reference.args.decoder_start_token_id
    for i in range(0, len(documents), batch_size):
        docs = [tokenizer(d, truncation=True, max_length=input_len)["input_ids"] for d in documents[i : i + batch_size]]
        tgts = [
            [start] + tokenizer(s, truncation=True, max_length=output_len - 1)["input_ids"]
            for s in summaries[i : i + batch_size]
        ]
        enc, dec = pad_batch(docs, tokenizer.pad_token_id or 0), pad_batch(tgts, tokenizer.pad_token_id or 0)
        a = reference(enc.input_ids, dec.input_ids, enc.attention_mask).astype(mx.float32)
        b = model(enc.input_ids, dec.input_ids, enc.attention_mask).astype(mx.float32)
        valid = np.zeros(dec.input_ids.shape, bool)
        for r, n in enumerate(dec.lengths):
            valid[r, :n] = True
        a, b = np.array(a)[valid], np.array(b)[valid]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += int(valid.sum())
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(a).max()))
    return {
        "top1_agreement": agree / max(total, 1),
        "max_abs_diff": max_diff,
        "reference_logit_scale": scale,
        "positions": total,
        "examples": len(documents),
    }


def quantization_agreement(prefix: str, jobs, variants, tokenizer, say) -> List[dict]:
    """Every quantized variant (`run.MlxVariant`) vs its float variant, on the first dataset (`data.QualityJob`)."""
    if not jobs or not any(v.spec.quantize_bits for v in variants):
        return []
    job, rows = jobs[0], []
    method = lambda s: (s.kv_heads, s.pool, s.grouping)  # noqa: E731
    floats = {method(v.spec): v for v in variants if not v.spec.quantize_bits}
    for v in variants:
        ref = floats.get(method(v.spec))
        if v.spec.quantize_bits and ref is not None:
            say(f"logits agreement: {v.spec.name} vs {ref.spec.name} on {job.label}")
            docs, summaries = with_prefix(job.examples, prefix), [e.summary for e in job.examples]
            a = logits_agreement(v.model, ref.model, tokenizer, docs, summaries, job.input_len, job.output_len)
            rows.append({"variant": v.spec.name, "reference": ref.spec.name, "dataset": job.label, **a})
    return rows
