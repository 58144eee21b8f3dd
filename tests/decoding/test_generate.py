"""Greedy decoding against transformers' generate, and the streaming API."""

import mlx.core as mx
import pytest
import torch

from mlx_mqa import generate, generate_step, load_model, stream_generate
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.errors import InputError
from tests.helpers import PROMPTS, batch, hf_model


def hf_greedy(hf, ids, mask, n):
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=n,
            num_beams=1,
            do_sample=False,
            min_new_tokens=0,
        )
    rows = []
    for r in out[:, 1:].tolist():  # drop decoder_start
        rows.append(r[: r.index(1) + 1] if 1 in r else r)
    return rows


@pytest.mark.parametrize("name", ["t5-small", "flan-t5-small"])
def test_greedy_token_identical_to_transformers(name, hf_checkpoint, tokenizer):
    # shared_std < 1 so a tied v1.0 model does not just echo its input token.
    path = hf_checkpoint(name, shared_std=0.05)
    ids, mask = batch(tokenizer)
    ref = hf_greedy(hf_model(path), ids, mask, 40)
    model = load_model(path, dtype="float32")
    ours = generate_tokens(model, mx.array(ids), mx.array(mask), max_new_tokens=40)
    assert all(len(r) >= 32 for r in ref), "reference must produce at least 32 tokens per row"
    assert len({tuple(r[:8]) for r in ref}) == 3, "rows should differ"
    assert ours == ref


def test_generate_api_and_stream(hf_checkpoint, tokenizer):
    path = hf_checkpoint("flan-t5-small")
    model = load_model(path, dtype="float32")
    texts = generate(model, tokenizer, PROMPTS, max_new_tokens=12)
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    steps = list(stream_generate(model, tokenizer, PROMPTS, max_new_tokens=12))
    assert 1 <= len(steps) <= 12
    tokens = [[s.tokens[i] for s in steps] for i in range(3)]
    res = generate(model, tokenizer, PROMPTS, max_new_tokens=12, return_result=True)
    for i in range(3):
        assert tokens[i][: len(res.tokens[i])] == res.tokens[i]
    assert isinstance(generate(model, tokenizer, PROMPTS[0], max_new_tokens=4), str)


def test_per_row_eos_stop_and_padding(hf_checkpoint, tokenizer):
    """A row that emits EOS yields pad afterwards while the others go on."""
    path = hf_checkpoint("flan-t5-small")
    model = load_model(path, dtype="float32")
    ids, mask = batch(tokenizer)
    eos = 1
    free = generate_tokens(model, mx.array(ids), mx.array(mask), max_new_tokens=10, ignore_eos=True)
    # Declare row 0's third token the EOS id: row 0 must stop there, the others are unaffected.
    fake_eos = free[0][2]
    steps = list(generate_step(model, mx.array(ids), mx.array(mask), max_new_tokens=10, eos_token_id=fake_eos))
    row0 = [s.tokens[0] for s in steps]
    assert row0[: row0.index(fake_eos) + 1] == free[0][: free[0].index(fake_eos) + 1]
    assert all(t == 0 for t in row0[row0.index(fake_eos) + 1 :])
    assert steps[-1].finished[0]
    assert eos != fake_eos


def test_max_new_tokens_is_respected(hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    ids, mask = batch(tokenizer)
    out = generate_tokens(model, mx.array(ids), mx.array(mask), max_new_tokens=5, ignore_eos=True)
    assert [len(r) for r in out] == [5, 5, 5]


def test_empty_and_overlong_prompts_are_refused(hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    with pytest.raises(InputError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["summarize: a", "   "])
    with pytest.raises(InputError, match="max_input_tokens=8"):
        generate(model, tokenizer, PROMPTS, max_input_tokens=8)
    out = generate(model, tokenizer, PROMPTS, max_input_tokens=8, truncate=True, max_new_tokens=3, return_result=True)
    assert max(out.prompt_tokens) == 8


@pytest.mark.parametrize(
    "prompts,pattern",
    [
        (None, "prompts must be a string or a list of strings, not NoneType"),
        (5, "not int"),
        (b"summarize: x", "not bytes"),
        (["summarize: x", None], "prompt 1 is a NoneType, not a string"),
        ([3], "prompt 0 is a int, not a string"),
        ([], "no prompts given"),
        (["  "], "prompt 0 is empty"),
    ],
)
def test_prompts_that_are_not_strings_are_input_errors(prompts, pattern, hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    with pytest.raises(InputError, match=pattern):
        generate(model, tokenizer, prompts, max_new_tokens=2)


def test_any_iterable_of_prompts_is_accepted(hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    listed = generate(model, tokenizer, PROMPTS, max_new_tokens=3)
    assert generate(model, tokenizer, (p for p in PROMPTS), max_new_tokens=3) == listed
    assert generate(model, tokenizer, tuple(PROMPTS), max_new_tokens=3, num_beams=2) == generate(
        model, tokenizer, PROMPTS, max_new_tokens=3, num_beams=2
    )
    with pytest.raises(InputError, match="max_input_tokens must be a positive integer, got 0"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, max_input_tokens=0, truncate=True)


def test_samplers_are_checked(hf_checkpoint, tokenizer):
    model = load_model(hf_checkpoint("flan-t5-small"), dtype="float32")
    V = model.args.vocab_size

    def beyond(logprobs):
        return mx.full((logprobs.shape[0],), V, mx.int32)

    with pytest.raises(InputError, match=rf"token id {V}, outside the vocabulary \[0, {V}\)"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, sampler=beyond)
    with pytest.raises(InputError, match=r"token id -1, outside"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, sampler=lambda lp: mx.full((3,), -1, mx.int32))
    with pytest.raises(InputError, match=r"returned shape \(3, 1\); it must return one token per row \(3,\)"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, sampler=lambda lp: mx.argmax(lp, axis=-1)[:, None])
    with pytest.raises(InputError, match="sampler must be a function"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, sampler=0.7)
    with pytest.raises(InputError, match="logits_processors must be a list of functions"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=3, logits_processors=[1.2])
