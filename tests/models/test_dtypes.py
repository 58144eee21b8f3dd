"""Half precision stays finite where transformers' float16 path does."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_mqa import load_model
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa.conversion import convert
from mlx_mqa.decoding.generate import generate_tokens
from tests.helpers import batch, t5_config


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_generation_is_finite(dtype, hf_checkpoint, tokenizer, tmp_path):
    path = convert(str(hf_checkpoint("flan-t5-small")), tmp_path / dtype, kv_heads=2, dtype=dtype)
    model = load_model(path)
    assert model.shared.weight.dtype == getattr(mx, dtype)
    ids, mask = batch(tokenizer)
    logits = model(mx.array(ids), mx.zeros((3, 4), mx.int32), mx.array(mask))
    assert bool(mx.all(mx.isfinite(logits)))
    out = generate_tokens(model, mx.array(ids), mx.array(mask), max_new_tokens=6, ignore_eos=True)
    assert [len(r) for r in out] == [6, 6, 6]


def test_float16_ffn_overflow_is_contained(tmp_path, tokenizer):
    """FFN outputs beyond float16's range: wo is kept in float32 and activations are clamped."""
    from transformers import T5ForConditionalGeneration

    cfg = t5_config("t5-large-lm-adapt", num_layers=2, num_decoder_layers=1)
    src = save_random_checkpoint(cfg, tmp_path / "src", tokenizer=tokenizer)
    from safetensors.numpy import load_file, save_file

    w = load_file(str(src / "model.safetensors"))
    for k in w:
        if k.endswith("DenseReluDense.wo.weight"):
            w[k] = w[k] * 30000.0  # FFN outputs ~1e5 > 65504
    save_file(w, str(src / "model.safetensors"), metadata={"format": "pt"})
    ids, mask = batch(tokenizer)

    hf = T5ForConditionalGeneration.from_pretrained(str(src), dtype=torch.float16).eval()
    with torch.no_grad():
        enc = hf.encoder(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
        ).last_hidden_state
    assert torch.isfinite(enc).all()  # transformers stays finite here...
    # In float32 the first FFN's output really exceeds float16's range.
    m32 = load_model(src, dtype="float32")
    enc_block = m32.encoder.block[0]
    from mlx_mqa.models.base import padding_mask

    x = m32.shared(mx.array(ids))
    bias = enc_block.layer[0].SelfAttention.position_bias(ids.shape[1], ids.shape[1]) + padding_mask(
        mx.array(mask), mx.float32
    )
    h = enc_block.layer[0](x, bias)
    ffn_out = enc_block.layer[1].DenseReluDense(enc_block.layer[1].layer_norm(h))
    assert float(mx.abs(ffn_out).max()) > 65504

    model = load_model(convert(str(src), tmp_path / "fp16", dtype="float16"))
    assert model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == mx.float32
    enc16 = model.encode(mx.array(ids), mx.array(mask))
    assert bool(mx.all(mx.isfinite(enc16)))  # ...and so do we
    # Without the float32 wo and the clamp, the same weights overflow.
    raw = np.array(model.encoder.block[0].layer[1].DenseReluDense.wo.weight).astype(np.float16)
    h = np.abs(raw.astype(np.float32)).sum(axis=1).max()
    assert h > 65504
    logits = model(mx.array(ids), mx.zeros((3, 3), mx.int32), mx.array(mask))
    assert bool(mx.all(mx.isfinite(logits)))


@pytest.mark.parametrize("dtype,eps", [("bfloat16", 2.0**-8), ("float16", 2.0**-11)])
@pytest.mark.parametrize("name", ["t5-small", "flan-t5-small"])
def test_half_precision_agrees_with_float32_with_non_unit_layer_norms(name, dtype, eps, tmp_path, tokenizer):
    """Logits within a few units of the dtype's rounding of float32's (measured: 5-6 eps at 2+2 layers)."""
    from safetensors.numpy import load_file, save_file

    cfg = t5_config(name, num_layers=2, num_decoder_layers=2, vocab_size=len(tokenizer))
    src = save_random_checkpoint(cfg, tmp_path / "src", tokenizer=tokenizer, shared_std=0.05)
    w = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(0)
    for k in w:
        if "layer_norm" in k:  # scales far from 1: a norm weight dropped or mis-cast would show at once
            w[k] = rng.uniform(0.3, 2.0, w[k].shape).astype(np.float32)
    save_file(w, str(src / "model.safetensors"), metadata={"format": "pt"})
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    dec = mx.array(np.tile(np.array([[0, 7, 99, 4, 31, 8]], np.int32), (ids.shape[0], 1)))
    ref = np.array(load_model(convert(str(src), tmp_path / "f32", kv_heads=2, dtype="float32"))(ids, dec, mask))
    half = load_model(convert(str(src), tmp_path / dtype, kv_heads=2, dtype=dtype))
    out = np.array(half(ids, dec, mask).astype(mx.float32))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel <= 16 * eps, rel
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.75
