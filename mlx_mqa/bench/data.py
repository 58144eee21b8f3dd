"""Summarization data: hub datasets by name (streamed, so only the first `limit` records are downloaded), local
JSON Lines, and bundled samples; each an `Example(id, document, summary)` list. A dataset that cannot be found or
reached raises `DataError` naming `--data`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

from ..errors import InputError
from ..jsonl import read_jsonl

DATA_DIR = Path(__file__).resolve().parent.parent / "assets" / "data"
BUNDLED_PREFIX = "bundled:"
JSONL_FIELDS = ("id", "document", "summary")
DATA_OPTION = "--data FILE.jsonl (fields id, document, summary)"


class DataError(InputError):
    """A dataset that cannot be found, reached or read."""


@dataclass(frozen=True)
class Example:
    id: str
    document: str
    summary: str


@dataclass
class QualityJob:
    """One source's examples and the lengths they are generated at."""

    label: str
    examples: List[Example]
    input_len: int
    output_len: int


@dataclass(frozen=True)
class HubDataset:
    """Where a dataset name points on the Hugging Face hub, and which columns to read."""

    path: str
    config: Optional[str]
    document: str
    summary: str
    id: Optional[str] = "id"
    # (input tokens, output tokens) of the GQA paper's setting for this dataset, where it has one.
    lengths: Optional[Tuple[int, int]] = None


# The names the benchmark knows. Lengths follow Ainslie et al. 2023 (sec. 4): CNN/DailyMail 512/256,
# arXiv and PubMed 2048/512. XSum is not in the paper; 512/64 suits its one-sentence summaries.
HUB_DATASETS: Dict[str, HubDataset] = {
    "cnn_dailymail": HubDataset("abisee/cnn_dailymail", "3.0.0", "article", "highlights", "id", (512, 256)),
    "arxiv": HubDataset("ccdv/arxiv-summarization", None, "article", "abstract", None, (2048, 512)),
    "pubmed": HubDataset("ccdv/pubmed-summarization", None, "article", "abstract", None, (2048, 512)),
    "xsum": HubDataset("EdinburghNLP/xsum", None, "document", "summary", "id", (512, 64)),
}


def bundled_datasets() -> List[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.jsonl"))


def dataset_lengths(name: str) -> Optional[Tuple[int, int]]:
    """The paper's (input, output) lengths for a dataset name (`bundled:x` counts as `x`)."""
    spec = HUB_DATASETS.get(name.removeprefix(BUNDLED_PREFIX))
    return spec.lengths if spec else None


def _offline_hint(name: str) -> str:
    base = name.removeprefix(BUNDLED_PREFIX)
    hint = f"pass {DATA_OPTION}"
    if base in bundled_datasets():
        hint += f", or --dataset {BUNDLED_PREFIX}{base} for the few real examples bundled with mlx_mqa"
    return hint


def load_jsonl(path, limit: Optional[int] = None) -> List[Example]:
    """Examples from a JSON Lines file with fields `id`, `document`, `summary` (other fields are ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"--data {path}: no such file; expected JSON Lines with fields {', '.join(JSONL_FIELDS)}")
    out: List[Example] = []
    for lineno, rec in _records(path):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with fields {', '.join(JSONL_FIELDS)}")
        missing = [f for f in ("document", "summary") if not isinstance(rec.get(f), str)]
        if missing:
            raise DataError(
                f"{path}:{lineno}: missing or non-string field(s) {', '.join(missing)}; "
                f"each line needs {', '.join(JSONL_FIELDS)}"
            )
        if not rec["document"].strip():
            raise DataError(f"{path}:{lineno}: empty document")
        out.append(Example(str(rec.get("id", f"{path.stem}-{lineno}")), rec["document"], rec["summary"]))
    if not out:
        raise DataError(f"{path} holds no examples")
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: id {dup!r} occurs more than once")
    return out


def _records(path: Path) -> Iterator[Tuple[int, object]]:
    """`mlx_mqa.jsonl.read_jsonl`, its errors raised as DataError (bad data for the benchmark)."""
    try:
        yield from read_jsonl(path)
    except InputError as e:
        raise DataError(str(e)) from None


def load_bundled(name: str, limit: Optional[int] = None) -> List[Example]:
    """The few real examples shipped in mlx_mqa/assets/data (see its README for their provenance)."""
    base = name.removeprefix(BUNDLED_PREFIX)
    path = DATA_DIR / f"{base}.jsonl"
    if not path.exists():
        raise DataError(
            f"no bundled sample {base!r}; bundled: {', '.join(bundled_datasets())}. For other data pass {DATA_OPTION}"
        )
    return load_jsonl(path, limit)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check that the hub's host resolves and accepts a connection (skipped behind a proxy)."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(name: str, split: str = "test", limit: Optional[int] = None, check_network: bool = True) -> List[Example]:
    """Stream the first `limit` examples of a known dataset from the hub."""
    spec = HUB_DATASETS.get(name)
    if spec is None:
        raise DataError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(HUB_DATASETS))}; bundled offline samples: "
            f"{', '.join(BUNDLED_PREFIX + b for b in bundled_datasets())}. "
            f"For other data pass {DATA_OPTION}"
        )
    where = f"{spec.path}" + (f" ({spec.config})" if spec.config else "")
    if check_network and not hub_reachable():
        raise DataError(
            f"dataset {name!r} ({where}) needs the Hugging Face hub, which is not reachable; {_offline_hint(name)}"
        )
    try:
        import datasets

        ds = datasets.load_dataset(spec.path, spec.config, split=split, streaming=True)
        out = []
        for i, rec in enumerate(ds):
            if limit is not None and i >= limit:
                break
            ex_id = str(rec[spec.id]) if spec.id and spec.id in rec else f"{name}-{split}-{i:05d}"
            out.append(Example(ex_id, rec[spec.document], rec[spec.summary]))
    except Exception as e:  # offline, unknown split, changed schema...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot read dataset {name!r} ({where}, split {split!r}): {type(e).__name__}: {msg}; {_offline_hint(name)}"
        ) from None
    if not out:
        raise DataError(f"dataset {name!r} ({where}, split {split!r}) gave no examples")
    return out


def load_examples(
    dataset: Optional[str] = None,
    data_file=None,
    split: str = "test",
    limit: Optional[int] = None,
    check_network: bool = True,
) -> Tuple[str, List[Example]]:
    """(source label, examples) from exactly one of `data_file`, `bundled:NAME` or a hub dataset name."""
    if data_file is not None:
        return f"file:{Path(data_file).name}", load_jsonl(data_file, limit)
    if dataset is None:
        raise DataError("no dataset given; pass --dataset NAME or --data FILE.jsonl")
    if dataset.startswith(BUNDLED_PREFIX):
        return dataset, load_bundled(dataset, limit)
    return dataset, load_hub(dataset, split, limit, check_network)


def with_prefix(examples: Iterable[Example], prefix: str) -> List[str]:
    return [prefix + e.document for e in examples]
