"""Fixtures of the training tests: a tiny converted GQA-2 model and a small JSONL corpus."""

import json

import numpy as np
import pytest

from .tiny import TINY

WORDS = "the cat dog sat on a mat in garden house river stock market fell rose today".split()


@pytest.fixture
def converted(tmp_path, tokenizer):
    """A tiny multi-head HF-layout checkpoint converted to GQA-2 with convert()."""
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint
    from mlx_mqa.conversion import convert

    hf = save_random_checkpoint({**TINY, "model_type": "t5"}, tmp_path / "hf", tokenizer=tokenizer, shared_std=0.1)
    return convert(str(hf), str(tmp_path / "gqa2"), kv_heads=2, pool="mean", dtype="float32")


def write_corpus(path, n=40, fields=("document", "summary"), seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            rec = {"id": str(i), fields[0]: " ".join(rng.choice(WORDS, 60)), fields[1]: " ".join(rng.choice(WORDS, 8))}
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl")
