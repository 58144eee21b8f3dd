"""Dataset loading for the benchmark: hub name mapping, JSONL files, bundled samples, offline errors."""

import json

import pytest

from mlx_mqa.bench import data
from mlx_mqa.bench.data import HUB_DATASETS, DataError, Example, load_examples, load_hub, load_jsonl


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hub_mapping_table():
    expect = {
        "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "article", "highlights", (512, 256)),
        "arxiv": ("ccdv/arxiv-summarization", None, "article", "abstract", (2048, 512)),
        "pubmed": ("ccdv/pubmed-summarization", None, "article", "abstract", (2048, 512)),
        "xsum": ("EdinburghNLP/xsum", None, "document", "summary", (512, 64)),
    }
    got = {k: (v.path, v.config, v.document, v.summary, v.lengths) for k, v in HUB_DATASETS.items()}
    assert got == expect
    assert data.dataset_lengths("bundled:arxiv") == (2048, 512)


def test_hub_loader_maps_columns_and_streams(monkeypatch, tmp_path):
    """A hub dataset simulated by local records with the hub's column names."""
    recs = [{"article": f"article {i}.", "abstract": f"abstract {i}.", "section_names": "x"} for i in range(5)]
    file = write_jsonl(tmp_path / "arxiv_local.jsonl", recs)
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return (json.loads(line) for line in file.read_text().splitlines())

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    label, ex = load_examples("arxiv", split="validation", limit=3)
    assert calls == [("ccdv/arxiv-summarization", None, "validation", True)]
    assert label == "arxiv"
    assert ex == [Example(f"arxiv-validation-{i:05d}", f"article {i}.", f"abstract {i}.") for i in range(3)]

    recs = [{"id": "abc", "article": "An article.", "highlights": "A.\nB."}]
    file = write_jsonl(tmp_path / "cnn_local.jsonl", recs)
    ex = load_hub("cnn_dailymail", limit=10)
    assert calls[-1] == ("abisee/cnn_dailymail", "3.0.0", "test", True)
    assert ex == [Example("abc", "An article.", "A.\nB.")]


def test_unreachable_hub_names_data_option(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'abisee/cnn_dailymail' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(DataError) as e:
        load_hub("cnn_dailymail", limit=2)
    msg = str(e.value)
    assert "--data" in msg and "bundled:cnn_dailymail" in msg and "ConnectionError" in msg


def test_offline_env_fails_fast_without_calling_datasets(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not be called"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.hub_reachable() is False
    with pytest.raises(DataError, match=r"not reachable.*--data FILE\.jsonl"):
        load_hub("pubmed")


def test_unknown_dataset_names_data_option():
    with pytest.raises(DataError) as e:
        load_examples("multi_news")
    msg = str(e.value)
    assert "unknown dataset 'multi_news'" in msg and "--data FILE.jsonl" in msg and "cnn_dailymail" in msg
    with pytest.raises(DataError, match="--data"):
        load_examples("bundled:multi_news")


def test_jsonl_loader(tmp_path):
    file = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "document": "Doc one.", "summary": "S1.", "extra": 1},
            {"id": 7, "document": "Doc two.", "summary": "S2."},
            {"document": "Doc three.", "summary": "S3."},
        ],
    )
    ex = load_jsonl(file)
    assert [e.id for e in ex] == ["a", "7", "d-3"]
    assert ex[0] == Example("a", "Doc one.", "S1.")
    assert len(load_jsonl(file, limit=2)) == 2
    assert load_examples(data_file=file, limit=1) == ("file:d.jsonl", ex[:1])


@pytest.mark.parametrize(
    "records,match",
    [
        ([{"id": "a", "document": "x"}], r"d\.jsonl:1: missing .*summary"),
        (
            [{"id": "a", "document": "x", "summary": "y"}, {"id": "a", "document": "z", "summary": "w"}],
            "more than once",
        ),
        ([{"id": "a", "document": "  ", "summary": "y"}], "empty document"),
    ],
)
def test_jsonl_errors(tmp_path, records, match):
    with pytest.raises(DataError, match=match):
        load_jsonl(write_jsonl(tmp_path / "d.jsonl", records))


def test_jsonl_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"id": "a", "document": "x", "summary": "y"}\n{not json\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_jsonl(bad)
    with pytest.raises(DataError, match=r"--data .*no such file"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_bundled_samples_are_small_and_real():
    assert data.bundled_datasets() == ["arxiv", "cnn_dailymail", "pubmed", "xsum"]
    for name in data.bundled_datasets():
        label, ex = load_examples(f"bundled:{name}")
        assert label == f"bundled:{name}" and len(ex) == 6
        assert all(e.document.strip() and e.summary.strip() for e in ex)
        assert max(len(e.document.split()) for e in ex) <= 3000
    cnn = data.load_bundled("cnn_dailymail", limit=1)[0]
    assert cnn.document.startswith("(CNN)The Palestinian Authority officially became the 123rd member")
    assert "\n" in cnn.summary  # highlights joined by newlines, as on the hub
    assert data.with_prefix([cnn], "summarize: ")[0].startswith("summarize: (CNN)")
