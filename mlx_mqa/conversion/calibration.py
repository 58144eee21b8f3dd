"""Calibration data for conversion: text pairs from JSONL files, directories, plain text or a hub dataset,
tokenized into teacher-forced batches.

A record with a document and a summary gives (prefix + document -> summary); a record or file with text
only gives (its first tokens -> the tokens that follow). The default, `bundled`, is the few real
summarization examples shipped in `mlx_mqa/assets/data` (24 documents, ~11k encoder and ~5.6k decoder
tokens at 512 -> 256): enough for models up to ~5k wide, and offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from ..errors import InputError
from ..jsonl import read_jsonl
from .statistics import Batch

BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "data"
PAIR_FIELDS = (("document", "summary"), ("article", "highlights"), ("article", "abstract"), ("dialogue", "summary"))
TEXT_FIELDS = ("text", "document", "article", "content")

Pair = Tuple[str, Optional[str]]  # (encoder text, decoder text or None: split the text itself)


def _pair(rec, where: str) -> Pair:
    if isinstance(rec, dict):
        for src, tgt in PAIR_FIELDS:
            if isinstance(rec.get(src), str) and isinstance(rec.get(tgt), str):
                return rec[src], rec[tgt]
        for f in TEXT_FIELDS:
            if isinstance(rec.get(f), str):
                return rec[f], None
    fields = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
    raise InputError(f"{where}: no text field (expected document+summary or one of {TEXT_FIELDS}; found {fields})")


def _files(path: Path) -> List[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".txt"))
        if not files:
            raise InputError(f"calibration directory {path} holds no *.jsonl or *.txt file")
        return files
    if path.suffix not in (".jsonl", ".txt"):
        raise InputError(f"calibration file {path} is not .jsonl or .txt")
    return [path]


def _read_file(path: Path) -> Iterator[Pair]:
    if path.suffix == ".txt":
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            if block.strip():
                yield block, None
        return
    for lineno, rec in read_jsonl(path):
        yield _pair(rec, f"{path}:{lineno}")


def _read_hub(spec: str) -> Iterator[Pair]:
    """hf:NAME[:CONFIG][@SPLIT], streamed (datasets)."""
    try:
        import datasets
    except ImportError:  # checked by check_source
        raise InputError("a hub calibration set needs `datasets`") from None
    name, _, split = spec[3:].partition("@")
    name, _, config = name.partition(":")
    try:
        stream = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        for i, rec in enumerate(stream):
            yield _pair(rec, f"{spec} record {i}")
    except InputError:
        raise
    except Exception as e:  # offline, unknown name, bad split
        raise InputError(f"cannot stream {spec} ({type(e).__name__}: {e}); pass a local --calibration FILE") from None


def check_source(source: str) -> None:
    """Fail at once on a calibration source that cannot be read (before any weight is loaded)."""
    if source.startswith("hf:"):
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise InputError("a hub calibration set needs `datasets`: pip install 'mlx-mqa[bench]'") from None
        return
    path = BUNDLED_DIR if source == BUNDLED else Path(source).expanduser()
    if not path.exists():
        raise InputError(f"calibration source {source} does not exist")
    _files(path)


def read_pairs(source: str = BUNDLED, limit: Optional[int] = None) -> List[Pair]:
    """Up to `limit` calibration pairs from `source` (see the module docstring)."""
    check_source(source)
    if source.startswith("hf:"):
        records: Iterator[Pair] = _read_hub(source)
    else:
        path = BUNDLED_DIR if source == BUNDLED else Path(source).expanduser()
        records = (p for f in _files(path) for p in _read_file(f))
    pairs = []
    for p in records:
        if limit is not None and len(pairs) >= limit:
            break
        pairs.append(p)
    if not pairs:
        raise InputError(f"calibration source {source} holds no text")
    return pairs


def tokenize_pairs(tokenizer, pairs: Sequence[Pair], max_input: int, max_target: int, prefix: str = ""):
    """(encoder ids, decoder ids) per pair; decoder ids start with the decoder start token (0 in T5)."""
    eos, start = tokenizer.eos_token_id, tokenizer.pad_token_id or 0
    out = []
    for src, tgt in pairs:
        ids = tokenizer(prefix + src if tgt is not None else src)["input_ids"]
        if tgt is None:  # plain text: its beginning in, what follows out (halves when it is short)
            cut = min(max_input - 1, max(1, len(ids) // 2))
            enc, dec = ids[:cut] + [eos], ids[cut : cut + max_target - 1]
        else:
            enc = ids if len(ids) <= max_input else ids[: max_input - 1] + [eos]
            dec = tokenizer(tgt)["input_ids"][: max_target - 1]
        if dec:
            out.append((enc, [start] + dec))
    return out


def _pad(rows: Sequence[Sequence[int]]) -> Tuple[mx.array, mx.array]:
    L = max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), L), np.int32), np.zeros((len(rows), L), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return mx.array(ids), mx.array(mask)


def batches(examples, batch_size: int = 8) -> Iterator[Batch]:
    """Padded batches of (encoder ids, decoder ids) examples, similar lengths together."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    for b in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[b : b + batch_size]]
        yield (*_pad([e for e, _ in chunk]), *_pad([d for _, d in chunk]))


def calibrate(
    model,
    tokenizer,
    source: str = BUNDLED,
    samples: int = 128,
    max_input: int = 512,
    max_target: int = 128,
    batch_size: int = 8,
    prefix: str = "",
    bar=None,
):
    """Statistics of `model` over up to `samples` calibration pairs from `source` (see `statistics.collect`).
    `bar(total, desc)` may return a progress bar (an object with update() and close())."""
    from .statistics import collect

    if samples < 1:
        raise InputError(f"--calibration-samples must be at least 1, got {samples}")
    examples = tokenize_pairs(tokenizer, read_pairs(source, samples), max_input, max_target, prefix)
    if not examples:
        raise InputError(f"calibration source {source} gave no usable (input, target) pair")
    progress = bar(len(examples), "calibration") if bar else None
    try:
        return collect(model, batches(examples, batch_size), progress.update if progress else None)
    finally:
        if progress:
            progress.close()
