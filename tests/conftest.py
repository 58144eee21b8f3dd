"""Shared fixtures: random-weight checkpoints of real T5 shapes, built offline."""

from pathlib import Path

import pytest

import mlx_mqa  # noqa: F401  (loads the optimized BLAS before anything imports mlx.core)
from mlx_mqa.checkpoint.random_init import save_random_checkpoint

from .helpers import ASSETS, VARIANTS, t5_config


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS / "tokenizer"))


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


@pytest.fixture(scope="session")
def eos_checkpoint(hf_checkpoint):
    # Greedy rows of this model stop at different steps (and one runs to the limit).
    return hf_checkpoint("flan-t5-small", shared_std=0.05, eos_boost=2.0, num_layers=2, num_decoder_layers=2)
