"""Training data: corpus reading and its errors, held-out splits, batch streams and their saved position."""

import json

import numpy as np
import pytest

from mlx_mqa.errors import InputError
from mlx_mqa.train.data import EpochSampler, SpanCorruptionData, make_windows, read_pairs, read_texts, split_held_out

from .conftest import write_corpus


def test_corruption_is_deterministic_given_seed(tokenizer):
    windows = make_windows(np.arange(3, 3 + 141 * 10, dtype=np.int32) % 3900 + 3, 141)
    a = SpanCorruptionData(windows, tokenizer, batch_size=4, seed=5)
    b = SpanCorruptionData(windows, tokenizer, batch_size=4, seed=5)
    for _ in range(4):  # crosses an epoch boundary
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


def test_held_out_split_is_fixed_disjoint_and_complete():
    items = [f"doc {i}" for i in range(50)]
    train, held = split_held_out(items, 0.1, seed=3)
    assert len(held) == 5 and sorted(train + held) == sorted(items)
    assert (train, held) == split_held_out(items, 0.1, seed=3)
    assert held != split_held_out(items, 0.1, seed=4)[1]
    assert split_held_out(items, 0.0) == (split_held_out(items, 0.0)[0], [])
    with pytest.raises(InputError, match="fraction"):
        split_held_out(items, 1.0)


def test_texts_from_files_directories_and_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_corpus(tmp_path / "d" / "a.jsonl", n=3)
    (tmp_path / "d" / "sub" / "b.txt").write_text("first block\n\nsecond block\n")
    assert len(read_texts([str(tmp_path / "d")])) == 5
    assert len(read_texts([str(tmp_path / "d" / "*.jsonl")])) == 3
    assert read_texts([str(tmp_path / "d" / "a.jsonl")], field="summary")[0].count(" ") == 7
    with pytest.raises(InputError, match="no data files"):
        read_texts([str(tmp_path / "nothing")])


def test_a_missing_text_field_is_named_with_the_fields_found(tmp_path):
    path = write_corpus(tmp_path / "c.jsonl", n=3, fields=("text", "title"))
    with pytest.raises(
        InputError,
        match=r"no record has the text field 'document'; fields found: "
        r"'id', 'text', 'title'.*--source-field",
    ):
        read_texts([str(path)])
    assert len(read_texts([str(path)], field="text")) == 3


def test_pairs_from_a_directory_and_a_missing_field(tmp_path):
    (tmp_path / "d").mkdir()
    write_corpus(tmp_path / "d" / "a.jsonl", n=3)
    write_corpus(tmp_path / "d" / "b.jsonl", n=2)
    pairs = read_pairs([str(tmp_path / "d")])
    assert len(pairs) == 5 and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)
    with pytest.raises(
        InputError,
        match=r"a.jsonl:1 lacks the field 'abstract'; fields found: 'document', 'id', "
        r"'summary'",
    ):
        read_pairs([str(tmp_path / "d")], target_field="abstract")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("text\n")
    with pytest.raises(InputError, match=r"no data files.*\.jsonl"):
        read_pairs([str(tmp_path / "e")])
    (tmp_path / "f.jsonl").write_text(json.dumps([1, 2]) + "\n")
    with pytest.raises(InputError, match="not a JSON object"):
        read_pairs([str(tmp_path / "f.jsonl")])
