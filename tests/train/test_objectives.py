"""Objectives: the target-token loss; T5 span corruption's sentinels, noise density, lengths, reconstruction."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_mqa.train.objectives import (
    IGNORE,
    corrupt,
    loss_terms,
    random_spans_noise_mask,
    sentinel_ids,
    span_lengths,
    uncorrupt,
)

from .tiny import tiny_model


@pytest.fixture(scope="module")
def sentinels(tokenizer):
    return sentinel_ids(tokenizer)


def test_sentinels_are_the_tokenizers_extra_ids(tokenizer, sentinels):
    assert len(sentinels) == 100 and len(set(sentinels.tolist())) == 100
    assert tokenizer.convert_ids_to_tokens(int(sentinels[0])) == "<extra_id_0>"
    assert tokenizer.convert_ids_to_tokens(int(sentinels[7])) == "<extra_id_7>"


def test_noise_mask_counts_and_shape():
    rng = np.random.default_rng(0)
    for length in (10, 57, 141, 568):
        for _ in range(20):
            m = random_spans_noise_mask(length, rng)
            n_noise = int(round(length * 0.15))
            assert m.sum() == n_noise
            starts = m & ~np.concatenate([[False], m[:-1]])
            assert starts.sum() == max(int(round(n_noise / 3)), 1)
            assert not m[0] and m[-1]  # T5: starts with a kept span, ends with a noise span


def test_density_and_mean_span_length_over_many_samples():
    rng = np.random.default_rng(1)
    masks = [random_spans_noise_mask(141, rng) for _ in range(500)]
    noise = np.mean([m.mean() for m in masks])
    assert abs(noise - 0.15) < 0.01
    lengths = []
    for m in masks:
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]]))))[::2]
        lengths.extend(runs.tolist())
    assert abs(np.mean(lengths) - 3.0) < 0.2


def test_lengths_match_t5_helper():
    assert span_lengths(512) == (568, 114)  # T5's span_corruption default
    raw, tgt = span_lengths(128)
    rng = np.random.default_rng(0)
    tokens = np.arange(10, 10 + raw)
    inp, out = corrupt(tokens, rng, np.arange(5000, 5100), eos_id=1)
    assert len(inp) == 128 and len(out) == tgt


def test_inputs_targets_sentinels_and_reconstruction(sentinels):
    rng = np.random.default_rng(2)
    tokens = rng.integers(3, 3900, size=141).astype(np.int32)
    inp, tgt = corrupt(tokens, rng, sentinels, eos_id=1)
    assert inp[-1] == 1 and tgt[-1] == 1
    in_sent = [t for t in inp if t in set(sentinels.tolist())]
    tgt_sent = [t for t in tgt if t in set(sentinels.tolist())]
    n_spans = int(round(round(141 * 0.15) / 3))
    assert in_sent == tgt_sent == sentinels[:n_spans].tolist()  # <extra_id_0>, <extra_id_1>, ... in order
    assert tgt[0] == sentinels[0]
    assert len(tgt) - n_spans - 1 == round(141 * 0.15)  # the noise tokens, each once
    assert uncorrupt(inp, tgt, sentinels, 1) == tokens.tolist()


def test_loss_counts_only_real_target_tokens():
    model = tiny_model()
    rng = np.random.default_rng(0)
    inp = mx.array(rng.integers(3, 3900, (1, 12)).astype(np.int32))
    labels = rng.integers(3, 3900, (1, 5)).astype(np.int32)
    dec = np.concatenate([[[0]], labels[:, :-1]], axis=1)
    one = {
        "input_ids": inp,
        "attention_mask": mx.ones((1, 12), mx.int32),
        "decoder_input_ids": mx.array(dec),
        "labels": mx.array(labels),
    }
    padded = dict(
        one,
        decoder_input_ids=mx.array(np.pad(dec, ((0, 0), (0, 3)))),
        labels=mx.array(np.pad(labels, ((0, 0), (0, 3)), constant_values=IGNORE)),
    )
    (s1, n1), (s2, n2) = loss_terms(model, one), loss_terms(model, padded)
    assert n1.item() == n2.item() == 5
    assert abs(s1.item() - s2.item()) < 1e-4 * abs(s1.item())
