"""float32 logits parity with transformers' T5ForConditionalGeneration."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa import load_model
from mlx_mqa.models.t5 import bucket_table
from tests.helpers import PROMPTS, VARIANTS, assert_padded_rows_equal_alone, batch, hf_model, reference_logits


@pytest.mark.parametrize("cpu_kernel", [False, True], ids=["mlx-attention", "c-kernel"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers_on_padded_batch(name, cpu_kernel, hf_checkpoint, tokenizer, monkeypatch):
    """Every architecture variant, with CPU attention in MLX ops and (for every input length) in the C kernel."""
    from mlx_mqa.cpu import attention, kernel

    if cpu_kernel:
        if not kernel.available():
            pytest.skip("no BLAS shim (no C compiler or OpenBLAS)")
        monkeypatch.setattr(attention, "PARALLEL_SCORES", 1)
    path = hf_checkpoint(name)
    ids, mask = batch(tokenizer)
    assert mask.min() == 0, "the batch must contain padding"
    dec = np.array([[0, 17, 254, 9, 3001, 42, 7]] * len(PROMPTS), dtype=np.int32)
    ref = reference_logits(hf_model(path), ids, mask, dec)
    model = load_model(path, dtype="float32")  # plain HF directory: converted in memory
    out = np.array(model(mx.array(ids), mx.array(dec), mx.array(mask)))
    scale = np.abs(ref).max()
    err = np.abs(out - ref).max()
    print(f"{name}: max|diff| {err:.3g}, logits scale {scale:.3g}, relative {err / scale:.2e}")
    assert out.shape == ref.shape == (len(PROMPTS), dec.shape[1], model.args.vocab_size)
    assert err <= 1e-4 * scale


def test_padded_rows_equal_each_input_alone(hf_checkpoint, tokenizer):
    assert_padded_rows_equal_alone(load_model(hf_checkpoint("flan-t5-small"), dtype="float32"), tokenizer)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_buckets_match_transformers(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-3000, 3001)
    ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    table = bucket_table(bidirectional, 32, 128)
    ours = table[np.clip(rel.numpy(), -128, 128) + 128]
    np.testing.assert_array_equal(ours, ref.numpy())
