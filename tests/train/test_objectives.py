"""T5 span corruption: sentinels, noise density, lengths, reconstruction, determinism."""

import numpy as np
import pytest

from mlx_mqa.span_corruption import (EpochSampler, SpanCorruptionData, corrupt, make_windows,
                                     random_spans_noise_mask, sentinel_ids, span_lengths, uncorrupt)


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
            assert not m[0] and m[-1]          # T5: starts with a kept span, ends with a noise span


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
    assert span_lengths(512) == (568, 114)       # T5's span_corruption default
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
    assert in_sent == tgt_sent == sentinels[:n_spans].tolist()    # <extra_id_0>, <extra_id_1>, ... in order
    assert tgt[0] == sentinels[0]
    assert len(tgt) - n_spans - 1 == round(141 * 0.15)            # the noise tokens, each once
    assert uncorrupt(inp, tgt, sentinels, 1) == tokens.tolist()


def test_corruption_is_deterministic_given_seed(tokenizer):
    windows = make_windows(np.arange(3, 3 + 141 * 10, dtype=np.int32) % 3900 + 3, 141)
    a = SpanCorruptionData(windows, tokenizer, batch_size=4, seed=5)
    b = SpanCorruptionData(windows, tokenizer, batch_size=4, seed=5)
    for _ in range(4):                                            # crosses an epoch boundary
        x, y = a.next_batch(), b.next_batch()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    batch = a.next_batch()
    assert batch["input_ids"].shape == (4, 128) and batch["labels"].shape == (4, 29)
    assert (batch["decoder_input_ids"][:, 0] == 0).all()
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    # state round trip: a restored stream continues identically
    s = a.state()
    c = SpanCorruptionData(windows, tokenizer, batch_size=4, seed=5)
    c.set_state(s)
    np.testing.assert_array_equal(a.next_batch()["labels"], c.next_batch()["labels"])


def test_epoch_sampler_visits_every_item_once_per_epoch():
    s = EpochSampler(10, seed=3)
    first = s.take(7).tolist() + s.take(3).tolist()
    assert sorted(first) == list(range(10)) and s.state() == {"epoch": 1, "pos": 0}
    assert sorted(s.take(10).tolist()) == list(range(10))
