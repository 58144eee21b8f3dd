"""The Linux CPU engine in a decode: the eager step through the C kernel over a large cross K/V, memory handed
back after a long batch's encoder, and CPU quantized layers; each gives the tokens of the portable path."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_mqa.cpu.attention as attention
from mlx_mqa import load_model
from mlx_mqa.cpu import engine, kernel
from mlx_mqa.decoding.beam import beam_search
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.state import DecodeState
from tests.helpers import batch

pytestmark = pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU engine runs where MLX runs on the CPU")


@pytest.fixture()
def model_path(hf_checkpoint):
    return hf_checkpoint("t5-small", shared_std=0.05, num_layers=1, num_decoder_layers=1)


def test_long_batches_hand_freed_memory_back(model_path, monkeypatch):
    """From RELEASE_TOKENS tokens on, a CPU decode state returns freed memory (MLX's cache, the heap) after the
    encoder and again after the cross K/V, which are then evaluated; the tokens do not change. Shorter inputs
    keep MLX's cache."""
    model = load_model(model_path)
    ids = mx.array(np.arange(3, 3 + 4 * 64, dtype=np.int32).reshape(4, 64) % 500)
    want = generate_tokens(model, ids, None, 4)
    calls = []
    real = engine._trim or (lambda n: 0)
    monkeypatch.setattr(engine, "_trim", lambda n: (real(n), calls.append(mx.get_cache_memory())))
    assert generate_tokens(model, ids, None, 4) == want and calls == []
    monkeypatch.setattr(engine, "RELEASE_TOKENS", 128)  # this batch is "long"
    assert generate_tokens(model, ids, None, 4) == want
    assert calls == [0, 0]  # MLX's cache emptied after the encoder and after the cross K/V


def test_a_large_cross_kv_decodes_eagerly_through_the_kernel(model_path, tokenizer, monkeypatch):
    """On CPU a cross K/V of KERNEL_KV_BYTES or more makes the default step the eager one, whose cross-attention
    is the C kernel's (it cannot run in a compiled graph); greedy and beam tokens equal the compiled step's.
    Asked for explicitly, the compiled step still runs."""
    if not kernel.available() or mx.default_device() != mx.cpu:
        pytest.skip("the C attention kernel runs on CPU with the BLAS shim")
    model = load_model(model_path)
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    want = generate_tokens(model, ids, mask, 6, compiled=True)
    beams = beam_search(model, ids, mask, num_beams=3, max_new_tokens=6, compiled=True)
    assert DecodeState(model, ids, mask, 2).compiled
    calls = []
    real = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    monkeypatch.setattr(attention, "KERNEL_KV_BYTES", 1)
    assert not DecodeState(model, ids, mask, 2).compiled and DecodeState(model, ids, mask, 2, compiled=True).compiled
    assert generate_tokens(model, ids, mask, 6) == want
    assert calls.count(1) >= 6  # one query row per step: the cross-attention (and the small self-attention)
    assert beam_search(model, ids, mask, num_beams=3, max_new_tokens=6) == beams
    assert 3 in calls  # three beams share an input's cross K/V: three query rows
