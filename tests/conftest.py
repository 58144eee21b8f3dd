"""Shared fixtures: random-weight checkpoints of real T5 shapes, built offline."""

import json
from pathlib import Path

import numpy as np
import pytest

import mlx_mqa  # noqa: F401  (loads the optimized BLAS before anything imports mlx.core)
from mlx_mqa.checkpoint.random_init import save_random_checkpoint

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


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS / "tokenizer"))


# Real shapes of three architecture families, with fewer layers so the suite stays fast.
# t5-small: v1.0 (ReLU, tied, scaled head); lm-adapt: v1.1 gated-GELU untied, width 1024;
# flan-t5-small: inner dim 384 != d_model 512; all with num_decoder_layers != num_layers.
VARIANTS = {
    "t5-small": dict(num_layers=3, num_decoder_layers=2),
    "t5-large-lm-adapt": dict(num_layers=2, num_decoder_layers=1),
    "flan-t5-small": dict(num_layers=3, num_decoder_layers=2),
}


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, tokenizer):
    """Factory: name -> directory of a random HF checkpoint (cached per session)."""
    made = {}

    def make(name: str, shared_std: float = 1.0, seed: int = 0, eos_boost: float = 1.0, **overrides) -> Path:
        """eos_boost scales the EOS row of an untied head so rows finish at different steps."""
        key = (name, shared_std, seed, eos_boost, tuple(sorted(overrides.items())))
        if key not in made:
            cfg = t5_config(name, **{**VARIANTS.get(name, {}), **overrides})
            out = tmp_path_factory.mktemp(name.replace("-", "_"))
            made[key] = save_random_checkpoint(cfg, out, seed=seed, tokenizer=tokenizer, shared_std=shared_std)
            if eos_boost != 1.0:
                from safetensors.numpy import load_file, save_file

                w = load_file(str(out / "model.safetensors"))
                w["lm_head.weight"][cfg["eos_token_id"]] *= eos_boost
                save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
        return made[key]

    return make


def hf_model(path):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(str(path)).eval()


def batch(tokenizer, prompts=PROMPTS):
    enc = tokenizer(list(prompts), padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
