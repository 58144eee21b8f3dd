"""Shapes, prompts and small helpers the tests share (fixtures are in conftest.py)."""

import json
from pathlib import Path

import numpy as np

import mlx_mqa

ASSETS = Path(mlx_mqa.__file__).parent / "assets"
PROMPTS = [
    "summarize: The cat sat on the mat and watched the dog in the garden for a long while.",
    "summarize: Stocks fell.",
    "summarize: The Palestinian Authority officially became the 123rd member of the International "
    "Criminal Court on Wednesday, a step that gives the court jurisdiction over alleged crimes.",
]


def t5_config(name: str, **overrides) -> dict:
    cfg = json.loads((ASSETS / "t5-configs" / f"{name}.json").read_text())
    cfg.update(overrides)
    return cfg


# Real shapes of three architecture families, with fewer layers so the suite stays fast.
# t5-small: v1.0 (ReLU, tied, scaled head); lm-adapt: v1.1 gated-GELU untied, width 1024;
# flan-t5-small: inner dim 384 != d_model 512; all with num_decoder_layers != num_layers.
VARIANTS = {
    "t5-small": dict(num_layers=3, num_decoder_layers=2),
    "t5-large-lm-adapt": dict(num_layers=2, num_decoder_layers=1),
    "flan-t5-small": dict(num_layers=3, num_decoder_layers=2),
}


def hf_model(path):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(str(path)).eval()


def batch(tokenizer, prompts=PROMPTS):
    enc = tokenizer(list(prompts), padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def reference_logits(hf, ids, mask, dec):
    """transformers' float32 logits, teacher-forced, without a cache."""
    import torch

    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long),
            use_cache=False,
        ).logits.numpy()


def assert_padded_rows_equal_alone(model, tokenizer):
    """Each row of a padded batch gets the logits of its input alone, unpadded."""
    import mlx.core as mx

    ids, mask = batch(tokenizer)
    dec = mx.array([[0, 5, 6, 7]] * len(PROMPTS))
    together = np.array(model(mx.array(ids), dec, mx.array(mask)))
    for i in range(len(PROMPTS)):
        n = int(mask[i].sum())
        alone = np.array(model(mx.array(ids[i : i + 1, :n]), dec[i : i + 1]))
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4 * np.abs(alone).max(), rtol=0)
