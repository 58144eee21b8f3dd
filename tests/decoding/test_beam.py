"""Beam search token-identical to transformers; no-repeat n-grams."""

import mlx.core as mx
import pytest
import torch

from mlx_mqa import generate, load_model
from mlx_mqa.decoding.beam import beam_search
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.inputs import cut_after_eos
from tests.helpers import PROMPTS, batch, hf_model

SETTINGS = [
    dict(num_beams=4, length_penalty=2.0, early_stopping=True, no_repeat_ngram_size=3),  # T5 summarization
    dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    dict(num_beams=3, length_penalty=0.6, early_stopping="never", no_repeat_ngram_size=2),
    dict(num_beams=2, length_penalty=1.0, early_stopping=True),
]


CASES = [(kw, True) for kw in SETTINGS] + [(SETTINGS[0], False)]


def reference(hf, ids, mask, max_new_tokens, **kw):
    """transformers' generate, without the start token, each row cut after its EOS."""
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **kw,
        )
    return cut_after_eos(out[:, 1:].tolist(), 1)


@pytest.mark.parametrize("kw,compiled", CASES, ids=lambda k: str(k))
def test_beam_search_matches_transformers(kw, compiled, eos_checkpoint, tokenizer):
    ids, mask = batch(tokenizer)
    ref = reference(hf_model(eos_checkpoint), ids, mask, 30, **kw)
    ref = [r if 1 in r else r[:30] for r in ref]
    model = load_model(eos_checkpoint, dtype="float32")
    ours = beam_search(model, mx.array(ids), mx.array(mask), max_new_tokens=30, compiled=compiled, **kw)
    ref = [r[: len(o)] if 1 not in r and all(t == 0 for t in r[len(o) :]) else r for r, o in zip(ref, ours)]
    assert ours == ref
    assert any(1 in r for r in ours), "some beam should finish with EOS"


def test_greedy_rows_stop_at_their_own_eos_like_transformers(eos_checkpoint, tokenizer):
    ids, mask = batch(tokenizer)
    ref = reference(hf_model(eos_checkpoint), ids, mask, 40)
    ours = generate_tokens(load_model(eos_checkpoint, dtype="float32"), mx.array(ids), mx.array(mask), 40)
    assert ours == ref
    assert len({len(r) for r in ours}) == 3


def test_generate_with_beams_returns_text(eos_checkpoint, tokenizer):
    model = load_model(eos_checkpoint, dtype="float32")
    texts = generate(
        model,
        tokenizer,
        PROMPTS,
        max_new_tokens=10,
        num_beams=4,
        length_penalty=2.0,
        no_repeat_ngram_size=3,
        early_stopping=True,
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_one_beam_equals_greedy(eos_checkpoint, tokenizer):
    model = load_model(eos_checkpoint, dtype="float32")
    ids, mask = batch(tokenizer)
    assert beam_search(model, mx.array(ids), mx.array(mask), num_beams=1, max_new_tokens=20) == generate_tokens(
        model, mx.array(ids), mx.array(mask), 20
    )


def test_greedy_no_repeat_ngram_matches_transformers(eos_checkpoint, tokenizer):
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        ref = hf_model(eos_checkpoint).generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=30,
            do_sample=False,
            no_repeat_ngram_size=2,
        )
    ref = cut_after_eos(ref[:, 1:].tolist(), 1)
    model = load_model(eos_checkpoint, dtype="float32")
    res = generate(
        model, tokenizer, PROMPTS, max_new_tokens=30, no_repeat_ngram_size=2, length_penalty=2.0, return_result=True
    )
    ref = [r if 1 in r else r[:30] for r in ref]
    ref = [r[: len(o)] if 1 not in r else r for r, o in zip(ref, res.tokens)]
    assert res.tokens == ref


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_beam_search_on_gqa_and_mqa_matches_the_grouped_reference(kv_heads, eos_checkpoint, tokenizer, tmp_path):
    """A mean-pooled conversion equals transformers' MHA with each group's mean K/V head repeated."""
    from mlx_mqa.bench.torch_reference import group_mean_kv_
    from mlx_mqa.conversion import convert

    ids, mask = batch(tokenizer)
    ref_model = hf_model(eos_checkpoint)
    group_mean_kv_(ref_model, kv_heads)
    kw = SETTINGS[0]
    ref = reference(ref_model, ids, mask, 20, **kw)
    model = load_model(convert(str(eos_checkpoint), tmp_path / "g", kv_heads=kv_heads, dtype="float32"))
    assert model.args.num_key_value_heads == kv_heads
    ours = beam_search(model, mx.array(ids), mx.array(mask), max_new_tokens=20, **kw)
    assert ours == [r[: len(o)] if 1 not in r else r for r, o in zip(ref, ours)]


def test_beam_search_on_a_quantized_gqa_model(eos_checkpoint, tokenizer, tmp_path):
    from mlx_mqa.conversion import convert

    path = convert(str(eos_checkpoint), tmp_path / "q8", kv_heads=2, dtype="float32", quantize=True, q_bits=8)
    model = load_model(path)
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    compiled = beam_search(model, ids, mask, num_beams=3, max_new_tokens=12)
    eager = beam_search(model, ids, mask, num_beams=3, max_new_tokens=12, compiled=False)
    assert compiled == eager and all(0 < len(r) <= 12 for r in compiled)
    assert beam_search(model, ids, mask, num_beams=1, max_new_tokens=12) == generate_tokens(model, ids, mask, 12)


def test_logits_processors_act_on_the_beams(eos_checkpoint, tokenizer):
    model = load_model(eos_checkpoint, dtype="float32")
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    plain = beam_search(model, ids, mask, num_beams=3, max_new_tokens=8)
    banned = plain[0][0]

    def ban(history, logprobs):
        assert history.shape[0] == 3 * 3 and int(history[0, 0]) == model.args.decoder_start_token_id
        logprobs[:, banned] = -float("inf")
        return logprobs

    rows = beam_search(model, ids, mask, num_beams=3, max_new_tokens=8, logits_processors=[ban])
    assert all(banned not in row for row in rows) and rows != plain


def test_beam_search_refuses_what_it_would_ignore(eos_checkpoint, tokenizer):
    from mlx_mqa.decoding.sample_utils import greedy
    from mlx_mqa.errors import InputError

    model = load_model(eos_checkpoint, dtype="float32")
    ids, mask = (mx.array(a) for a in batch(tokenizer))

    def sample(logprobs):
        return mx.random.categorical(logprobs)

    with pytest.raises(InputError, match="takes no sampler; sample with num_beams=1"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=4, sampler=sample)
    with pytest.raises(InputError, match="takes no sampler"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, num_beams=2, sampler=sample)
    with pytest.raises(InputError, match="beam search takes no ignore_eos, temp"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=4, temp=0.7, ignore_eos=True)
    with pytest.raises(InputError, match="early_stopping must be True, False or 'never', got 'yes'"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=4, early_stopping="yes")
    assert beam_search(model, ids, mask, num_beams=2, max_new_tokens=4, sampler=greedy) == beam_search(
        model, ids, mask, num_beams=2, max_new_tokens=4
    )
