"""Quantized conversion: loads back, keeps norms and position biases exact, tracks the float model."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_mqa import generate, load, load_model
from mlx_mqa.conversion import convert
from tests.helpers import PROMPTS, batch


@pytest.fixture(scope="module")
def source(hf_checkpoint):
    return hf_checkpoint("flan-t5-small", shared_std=0.05)


@pytest.mark.parametrize("bits,group_size,min_top1", [(8, 64, 0.85), (4, 32, 0.1), (4, 128, 0.05)])
def test_quantized_model_tracks_float(bits, group_size, min_top1, source, tokenizer, tmp_path):
    ref = load_model(convert(str(source), tmp_path / "f", kv_heads=2, dtype="float32"))
    q = load_model(
        convert(
            str(source),
            tmp_path / "q",
            kv_heads=2,
            dtype="float32",
            quantize=True,
            q_bits=bits,
            q_group_size=group_size,
        )
    )
    attn = q.decoder.block[0].layer[0].SelfAttention
    assert isinstance(attn.k, nn.QuantizedLinear) and attn.k.bits == bits and attn.k.group_size == group_size
    assert isinstance(q.shared, nn.QuantizedEmbedding)
    # Exact parts stay float: layer norms and the relative position bias tables.
    assert isinstance(attn.relative_attention_bias, nn.Embedding) and not isinstance(
        attn.relative_attention_bias, nn.QuantizedEmbedding
    )
    np.testing.assert_array_equal(
        np.array(attn.relative_attention_bias.weight),
        np.array(ref.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight),
    )
    assert q.decoder.final_layer_norm.weight.dtype == mx.float32
    ids, mask = batch(tokenizer)
    dec = mx.array(np.tile(np.arange(0, 24, dtype=np.int32) * 7, (3, 1)))
    a = np.array(ref(mx.array(ids), dec, mx.array(mask)))
    b = np.array(q(mx.array(ids), dec, mx.array(mask)))
    top1 = (a.argmax(-1) == b.argmax(-1)).mean()
    rel = np.abs(a - b).max() / np.abs(a).max()
    print(f"{bits}-bit g{group_size}: top-1 agreement {top1:.3f}, max|diff|/scale {rel:.3g}")
    assert top1 >= min_top1
    # Random Gaussian weights are a worst case for 4 bits (no structure, chaotic network), hence loose bounds.
    assert rel < (0.1 if bits == 8 else 1.0)
    assert rel > 0  # it really is quantized


def test_quantized_loads_with_tokenizer_and_generates(source, tmp_path):
    out = convert(str(source), tmp_path / "q", kv_heads=1, quantize=True, q_bits=4, q_group_size=64)
    model, tok = load(out)
    assert model.args.num_key_value_heads == 1
    texts = generate(model, tok, PROMPTS, max_new_tokens=8, num_beams=2)
    assert len(texts) == 3
    size_q = (out / "model.safetensors").stat().st_size
    size_f = (convert(str(source), tmp_path / "f", kv_heads=1) / "model.safetensors").stat().st_size
    assert size_q < 0.3 * size_f


def test_logits_agreement_measure(source, tokenizer, tmp_path):
    from mlx_mqa.bench.agreement import logits_agreement

    docs = ["summarize: " + p for p in PROMPTS]
    sums = ["The cat watched the dog.", "Stocks fell.", "Palestine joined the court."]
    ref = load_model(convert(str(source), tmp_path / "f", dtype="float32"))
    same = logits_agreement(ref, ref, tokenizer, docs, sums, input_len=64, output_len=16, batch_size=2)
    assert same["top1_agreement"] == 1.0 and same["max_abs_diff"] == 0.0 and same["examples"] == 3
    assert same["positions"] == sum(1 + len(tokenizer(s)["input_ids"]) for s in sums)
    q = load_model(convert(str(source), tmp_path / "q", dtype="float32", quantize=True, q_bits=4, q_group_size=32))
    worse = logits_agreement(q, ref, tokenizer, docs, sums, input_len=64, output_len=16)
    assert worse["max_abs_diff"] > 0 and worse["positions"] == same["positions"]


def test_cpu_dequantized_products_equal_quantized_kernel(source, tokenizer, tmp_path, monkeypatch):
    """Many-row products on CPU go through dequantize + BLAS; they compute what quantized_matmul does."""
    from mlx_mqa.cpu import quantized as quantize

    q = load_model(convert(str(source), tmp_path / "q", kv_heads=2, quantize=True, q_bits=4, q_group_size=32))
    assert type(q.decoder.block[0].layer[0].SelfAttention.q) is quantize.QuantizedLinear
    ids, mask = batch(tokenizer)
    dec = mx.array(np.tile(np.arange(0, 24, dtype=np.int32) * 7, (3, 1)))
    assert mx.default_device() == mx.cpu and ids.shape[1] >= quantize.DEQUANTIZE_MIN_ROWS
    fast = np.array(q(mx.array(ids), dec, mx.array(mask)))
    monkeypatch.setattr(quantize, "DEQUANTIZE_MIN_ROWS", 10**9)  # quantized_matmul everywhere
    kernel = np.array(q(mx.array(ids), dec, mx.array(mask)))
    np.testing.assert_allclose(fast, kernel, rtol=0, atol=2e-5 * np.abs(kernel).max())
    emb = q.shared
    x = mx.array(np.random.default_rng(0).standard_normal((20, q.args.d_model)).astype(np.float32))
    np.testing.assert_allclose(
        np.array(quantize.QuantizedEmbedding.as_linear(emb, x)),
        np.array(nn.QuantizedEmbedding.as_linear(emb, x)),
        rtol=0,
        atol=1e-4,
    )
