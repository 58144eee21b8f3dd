"""The portable path, what Metal and CUDA run (MLX's fused attention, the compiled decode step), forced on this
machine: parity with transformers, token identity of greedy and beam search, GQA/MQA, padded batches, and
bfloat16 against float32. On a GPU (MLX_MQA_ENGINE=portable, scripts/device_check.sh) the same tests run there."""

import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_mqa import engine, load_model
from mlx_mqa.decoding.beam import beam_search
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.state import DecodeState
from tests.decoding.test_beam import SETTINGS
from tests.decoding.test_beam import reference as hf_beams

# Collected here too, so they run through the portable path (the fixture below applies to them).
from tests.decoding.test_generate import (
    hf_greedy,
    test_greedy_token_identical_to_transformers,  # noqa: F401
)
from tests.helpers import PROMPTS, VARIANTS, assert_padded_rows_equal_alone, batch, hf_model, reference_logits


@pytest.fixture(autouse=True)
def portable(monkeypatch):
    """The portable engine, with every entry of the CPU engine made to fail, so nothing can reach it."""
    cpu = sys.modules.get("mlx_mqa.cpu.engine")
    if cpu is not None:
        for name in ("attention", "eager_decode_step", "release_memory", "adapt_quantized"):
            monkeypatch.setattr(cpu, name, lambda *a, _n=name: pytest.fail(f"the CPU engine's {_n} ran"))
    with engine.use("portable"):
        assert engine.current() is engine.PORTABLE
        yield


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers_on_padded_batch(name, hf_checkpoint, tokenizer):
    path = hf_checkpoint(name)
    ids, mask = batch(tokenizer)
    assert mask.min() == 0, "the batch must contain padding"
    dec = np.array([[0, 17, 254, 9, 3001, 42, 7]] * len(PROMPTS), dtype=np.int32)
    ref = reference_logits(hf_model(path), ids, mask, dec)
    model = load_model(path, dtype="float32")
    out = np.array(model(mx.array(ids), mx.array(dec), mx.array(mask)))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_padded_rows_equal_each_input_alone(hf_checkpoint, tokenizer):
    assert_padded_rows_equal_alone(load_model(hf_checkpoint("flan-t5-small"), dtype="float32"), tokenizer)


def test_the_default_decode_step_is_the_compiled_one(hf_checkpoint, tokenizer, monkeypatch):
    """Even over a cross K/V the CPU engine would decode eagerly: the portable engine never asks for that."""
    import mlx_mqa.cpu.attention as cpu_attention

    monkeypatch.setattr(cpu_attention, "KERNEL_KV_BYTES", 1)
    ids, mask = batch(tokenizer)
    model = load_model(hf_checkpoint("flan-t5-small", shared_std=0.05), dtype="float32")
    assert DecodeState(model, mx.array(ids), mx.array(mask), 4).compiled


@pytest.mark.parametrize("kw", SETTINGS[:2], ids=str)
def test_beam_search_token_identical_to_transformers(kw, eos_checkpoint, tokenizer):
    ids, mask = batch(tokenizer)
    ref = [r if 1 in r else r[:20] for r in hf_beams(hf_model(eos_checkpoint), ids, mask, 20, **kw)]
    model = load_model(eos_checkpoint, dtype="float32")
    ours = beam_search(model, mx.array(ids), mx.array(mask), max_new_tokens=20, **kw)
    assert ours == [r[: len(o)] if 1 not in r else r for r, o in zip(ref, ours)]


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_gqa_and_mqa_equal_the_grouped_reference(kv_heads, eos_checkpoint, tokenizer, tmp_path):
    """A mean-pooled GQA/MQA conversion: fewer K/V heads than query heads go to the fused kernel as they are, and
    greedy and beam tokens equal transformers' MHA with each group's mean K/V head repeated."""
    from mlx_mqa.bench.torch_reference import group_mean_kv_
    from mlx_mqa.conversion import convert

    ids, mask = batch(tokenizer)
    ref_model = hf_model(eos_checkpoint)
    group_mean_kv_(ref_model, kv_heads)
    model = load_model(convert(str(eos_checkpoint), tmp_path / "g", kv_heads=kv_heads, dtype="float32"))
    assert model.args.num_key_value_heads == kv_heads
    assert generate_tokens(model, mx.array(ids), mx.array(mask), max_new_tokens=16) == hf_greedy(
        ref_model, ids, mask, 16
    )
    ref = hf_beams(ref_model, ids, mask, 16, **SETTINGS[0])
    ours = beam_search(model, mx.array(ids), mx.array(mask), max_new_tokens=16, **SETTINGS[0])
    assert ours == [r[: len(o)] if 1 not in r else r for r, o in zip(ref, ours)]


@pytest.mark.parametrize("name", ["t5-small", "flan-t5-small"])
def test_bfloat16_agrees_with_float32(name, hf_checkpoint, tokenizer):
    """bfloat16, the default on Metal/CUDA: teacher-forced logits close to float32's (bfloat16 keeps 8 bits of
    mantissa), the same top-1 token almost everywhere, and the compiled greedy decode starting alike."""
    path = hf_checkpoint(name, shared_std=0.05)
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    m32, m16 = load_model(path, dtype="float32"), load_model(path, dtype="bfloat16")
    assert m16.dtype == mx.bfloat16
    dec = mx.array(np.array(generate_tokens(m32, ids, mask, max_new_tokens=12, ignore_eos=True)))
    dec = mx.concatenate([mx.zeros((dec.shape[0], 1), dtype=dec.dtype), dec[:, :-1]], axis=1)
    l32 = np.array(m32(ids, dec, mask))
    l16 = np.array(m16(ids, dec, mask).astype(mx.float32))
    rel = np.abs(l16 - l32).max() / np.abs(l32).max()
    assert rel < 0.05, rel
    assert (l16.argmax(-1) == l32.argmax(-1)).mean() >= 0.9
    g32 = generate_tokens(m32, ids, mask, max_new_tokens=8)
    g16 = generate_tokens(m16, ids, mask, max_new_tokens=8)
    assert sum(a[:2] == b[:2] for a, b in zip(g32, g16)) >= 2
