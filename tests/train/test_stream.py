"""Streamed span corruption: documents sharded by rank, packed exactly as an in-memory corpus would be,
held-out documents skipped, and a saved position that resumes the same batches."""

import numpy as np
import pytest

from mlx_mqa.errors import InputError
from mlx_mqa.train.data import iter_texts, make_windows, read_texts, tokenize_stream
from mlx_mqa.train.stream import StreamedSpanData, held_out_prefix

from .conftest import write_corpus

WINDOW = 20


def stream(corpus, tokenizer, **kw):
    return StreamedSpanData([str(corpus)], tokenizer, batch_size=3, window=WINDOW, seed=4, **kw)


def rows(a):
    return sorted(map(tuple, a.tolist()))


def epoch_windows(data):
    """Every window the stream serves in its first epoch (uncorrupted)."""
    out = []
    while data.epoch == 0:
        out.append(data._windows(1))
    return np.concatenate(out)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_packs_its_own_documents_exactly(tokenizer, tmp_path, world):
    corpus = write_corpus(tmp_path / "c.jsonl", n=70)
    texts = read_texts([str(corpus)])
    served = []
    for rank in range(world):
        data = stream(corpus, tokenizer, rank=rank, world=world, skip_documents=5, block_windows=4)
        got = epoch_windows(data)
        own = [t for d, t in enumerate(texts) if d >= 5 and d % world == rank]
        assert rows(got) == rows(make_windows(tokenize_stream(tokenizer, own), WINDOW))
        served += rows(got)
    # Each document on one rank only: no window is served twice.
    assert len(served) == len(set(served))


def test_saved_position_resumes_the_same_batches_across_blocks_and_epochs(tokenizer, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=30)
    a = stream(corpus, tokenizer, rank=1, world=2, block_windows=3)
    b = stream(corpus, tokenizer, rank=1, world=2, block_windows=3)
    for _ in range(7):
        a.next_batch()
    state = a.state()
    assert len(state["carry"]) < WINDOW
    b.set_state(state)
    epochs = set()
    for _ in range(25):  # several blocks and past the end of the corpus
        x, y = a.next_batch(), b.next_batch()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
        epochs.add(a.epoch)
    assert epochs >= {0, 1}
    assert x["input_ids"].shape[0] == 3


def test_block_order_is_seeded(tokenizer, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=30)
    a, b = stream(corpus, tokenizer), stream(corpus, tokenizer)
    c = StreamedSpanData([str(corpus)], tokenizer, batch_size=3, window=WINDOW, seed=5)
    np.testing.assert_array_equal(a._windows(6), b._windows(6))
    assert not np.array_equal(stream(corpus, tokenizer)._windows(6), c._windows(6))


def test_held_out_prefix_takes_leading_documents(tokenizer, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=30)
    held, used = held_out_prefix([str(corpus)], "document", tokenizer, WINDOW, 10)
    texts = read_texts([str(corpus)])
    assert len(held) == 10 and 0 < used < 30
    np.testing.assert_array_equal(held, make_windows(tokenize_stream(tokenizer, texts[:used]), WINDOW)[:10])
    assert len(make_windows(tokenize_stream(tokenizer, texts[: used - 1]), WINDOW)) < 10


def test_a_rank_without_a_window_of_data_is_told(tokenizer, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=2)
    with pytest.raises(InputError, match=r"rank 1 of 2 has fewer than 400 training tokens.*fewer processes"):
        StreamedSpanData([str(corpus)], tokenizer, batch_size=2, window=400, rank=1, world=2).next_batch()
    with pytest.raises(InputError, match="rank 2 is not in a world of 2"):
        stream(corpus, tokenizer, rank=2, world=2)


def test_hf_datasets_stream_a_local_dataset(tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "ds").mkdir()
    write_corpus(tmp_path / "ds" / "train.jsonl", n=12)
    spec = f"hf:{tmp_path / 'ds'}@train"
    assert list(iter_texts([spec], streaming=True)) == read_texts([str(tmp_path / "ds")])
    with pytest.raises(InputError, match="no column 'text'"):
        list(iter_texts([spec], field="text", streaming=True))
    data = StreamedSpanData([spec], tokenizer, batch_size=2, window=WINDOW, rank=0, world=2)
    assert data.next_batch()["input_ids"].shape[0] == 2


def test_text_files_stream_by_blank_line_blocks(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n  \ntwo\n\n\nthree")
    assert list(iter_texts([str(tmp_path / "a.txt")])) == ["one\nstill one", "two", "three"]
