"""The PyTorch reference: group-mean K/V pooled exactly as the conversion pools them."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa.bench.quality import generate_mlx, generate_torch
from mlx_mqa.bench.torch_reference import generate, load_reference, torch_dtype
from mlx_mqa.conversion.pooling import is_grouped
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.errors import ConfigError
from mlx_mqa.models.dtypes import DTYPES


def test_group_mean_reference_generates_like_converted_model(tiny, tokenizer):
    source, models = tiny
    prompts = [
        "summarize: The cat sat on the mat and watched the dog in the garden for a long while.",
        "summarize: Stocks fell sharply on Monday.",
        "summarize: Rain is expected.",
    ]
    for g in (2, 1):
        ref = generate_torch(load_reference(source.path, kv_heads=g), tokenizer, prompts, 32, 10, batch_size=3)
        ours = generate_mlx(models[g], tokenizer, prompts, 32, 10, batch_size=3)
        assert ours.tokens == ref.tokens, g
    mha = generate_torch(load_reference(source.path), tokenizer, prompts, 32, 10, batch_size=3)
    assert mha.tokens != ref.tokens  # pooling changes the model


def test_group_mean_pools_exactly_the_grouped_projections(tiny):
    source, _ = tiny
    mha = load_reference(source.path).state_dict()
    mqa = load_reference(source.path, kv_heads=1).state_dict()
    changed = sorted(n for n in mha if not torch.equal(mha[n], mqa[n]))
    # k and v of the self- and cross-attention of both decoder layers: the names conversion groups.
    assert len(changed) == 2 * 2 * 2 and changed == sorted(n for n in mha if is_grouped(n))
    H, D = 4, 16
    for name in changed:
        w, pooled = mha[name].numpy().reshape(H, D, -1), mqa[name].numpy().reshape(H, D, -1)
        np.testing.assert_allclose(pooled, np.broadcast_to(w.mean(axis=0), w.shape), rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="kv_heads 3 does not divide the 4 attention heads; valid values: 1, 2, 4"):
        load_reference(source.path, kv_heads=3)


def test_torch_dtypes_follow_the_dtype_table():
    assert [torch_dtype(n) for n in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        torch_dtype("int8")


def test_generate_cuts_after_eos_like_mlx(tiny):
    source, models = tiny
    hf = load_reference(source.path)
    ids = np.array([[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]], dtype=np.int32)
    rows = generate(hf, ids, None, max_new_tokens=12, eos_token_id=1)
    assert rows == generate_tokens(models[4], mx.array(ids), None, max_new_tokens=12)
    for row in rows:
        assert 1 not in row[:-1] and (len(row) == 12 or row[-1] == 1)
