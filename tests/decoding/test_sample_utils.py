"""Samplers and logits processors: mlx-lm's, on batched decoder histories."""

import mlx.core as mx
import numpy as np

from mlx_mqa import load_model
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.sample_utils import banned_ngram_tokens, make_logits_processors, make_sampler
from tests.helpers import batch


def test_banned_ngrams():
    hist = np.array([[0, 5, 6, 7, 5, 6], [0, 1, 2, 3, 4, 5]])
    assert banned_ngram_tokens(hist, 3) == [[7], []]
    assert banned_ngram_tokens(hist, 2) == [[7], []]  # (6,) was followed by 7; row 2 never repeats 5
    assert banned_ngram_tokens(np.array([[0, 3, 3]]), 2) == [[3]]
    assert banned_ngram_tokens(np.array([[0, 3]]), 4) == [[]]


def test_sampling_is_seeded_and_top_p_restricts(eos_checkpoint, tokenizer):
    model = load_model(eos_checkpoint, dtype="float32")
    ids, mask = batch(tokenizer)
    runs = []
    for _ in range(2):
        mx.random.seed(7)
        runs.append(generate_tokens(model, mx.array(ids), mx.array(mask), 12, sampler=make_sampler(1.0)))
    assert runs[0] == runs[1]
    greedy = generate_tokens(model, mx.array(ids), mx.array(mask), 12)
    # A vanishing nucleus, or top-k of 1, keeps only the top token: sampling becomes greedy.
    for sampler in (make_sampler(1.0, top_p=1e-6), make_sampler(1.0, top_k=1)):
        assert generate_tokens(model, mx.array(ids), mx.array(mask), 12, sampler=sampler) == greedy
    logits = mx.array([[0.0, 1.0, 5.0, 4.9]])
    mx.random.seed(0)
    draws = {int(make_sampler(1.0, top_p=0.9)(logits)[0]) for _ in range(40)}
    assert draws == {2, 3}


def test_min_p_keeps_only_tokens_near_the_top():
    logprobs = mx.log(mx.array([[0.5, 0.3, 0.15, 0.05]]))
    mx.random.seed(3)
    sampler = make_sampler(1.0, min_p=0.5)  # keeps p >= 0.5 * 0.5
    assert {int(sampler(logprobs)[0]) for _ in range(60)} == {0, 1}


def test_repetition_penalty_applies_per_row_to_generated_tokens_only():
    (proc,) = make_logits_processors(repetition_penalty=2.0)
    history = mx.array([[0, 3, 3], [0, 5, 2]])  # column 0 is the decoder start token, not text
    logits = mx.array([[1.0, 1.0, 1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0, -1.0]])
    out = np.array(proc(history, logits))
    np.testing.assert_allclose(out[0], [1.0, 1.0, 1.0, 0.5, 1.0, -1.0])
    np.testing.assert_allclose(out[1], [1.0, 1.0, 0.5, 1.0, 1.0, -2.0])
    assert make_logits_processors() == []
