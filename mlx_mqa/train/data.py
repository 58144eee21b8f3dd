"""Training data: corpora (JSONL, text, `datasets`), held-out splits, token windows, and batch streams
with a saved position (span corruption over windows; supervised document -> summary pairs).

A batch stream has `next_batch()`, `state()` / `set_state()` (saved in checkpoints, so a resumed run
sees the same batches) and `describe()` (the settings a resumed run must share).
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple, TypeVar

import numpy as np

from ..errors import InputError
from ..jsonl import read_jsonl
from .objectives import IGNORE, MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY, corrupt, sentinel_ids

T = TypeVar("T")


# ---------------------------------------------------------------- corpus reading -----


def corpus_files(src: str, suffixes: Sequence[str] = (".jsonl", ".txt")) -> List[Path]:
    """A file, a glob, or a directory (every file with one of `suffixes` inside, recursively)."""
    p = Path(src)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = [f for s in suffixes for f in sorted(p.rglob(f"*{s}")) if f.is_file()]
    else:
        files = [Path(f) for f in sorted(glob.glob(src)) if Path(f).is_file()]
    if not files:
        kinds = " or ".join(suffixes)
        raise InputError(f"no data files at {src!r} (expected {kinds} files, directories or globs of them)")
    return files


def read_texts(sources: Sequence[str], field: str = "document") -> List[str]:
    """Every document of `iter_texts`, in memory."""
    return list(iter_texts(sources, field))


def iter_texts(sources: Sequence[str], field: str = "document", streaming: bool = False) -> Iterator[str]:
    """Documents, read lazily and in order, from .jsonl files (field `field`), plain text files (one
    document per blank-line separated block), directories or globs of those, or a Hugging Face `datasets`
    name written `hf:NAME[:CONFIG][@SPLIT]` (text column `field`; `streaming` reads it without download)."""
    for src in sources:
        if src.startswith("hf:"):
            yield from _hf_texts(src[3:], field, streaming)
            continue
        for f in corpus_files(src):
            yield from (_jsonl_texts(f, field) if f.suffix == ".jsonl" else _text_blocks(f))


def _text_blocks(path: Path) -> Iterator[str]:
    block: List[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block).strip()
                block = []
    if block:
        yield "".join(block).strip()


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    fields, records, texts = set(), 0, 0
    for _, rec in read_jsonl(path):
        records += 1
        if isinstance(rec, dict):
            fields.update(rec)
            if isinstance(rec.get(field), str) and rec[field].strip():
                texts += 1
                yield rec[field]
    if records and not texts:
        found = ", ".join(map(repr, sorted(fields))) or "none (the records are not JSON objects)"
        raise InputError(
            f"{path}: no record has the text field {field!r}; fields found: {found} (choose one with --source-field)"
        )


def _hf_texts(spec: str, field: str, streaming: bool) -> Iterator[str]:
    import datasets

    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=streaming)
    columns = ds.column_names  # None for some streamed datasets until read
    if columns is not None and field not in columns:
        raise InputError(
            f"hf:{spec} has no column {field!r}; columns: {', '.join(columns)} (choose one with --source-field)"
        )
    for rec in ds:
        if field not in rec:
            raise InputError(
                f"hf:{spec} has no column {field!r}; columns: {', '.join(rec)} (choose one with --source-field)"
            )
        if isinstance(rec[field], str) and rec[field].strip():
            yield rec[field]


def read_pairs(
    sources: Sequence[str], source_field: str = "document", target_field: str = "summary"
) -> List[Tuple[str, str]]:
    """(source, target) pairs from JSONL files, globs, or directories (every *.jsonl inside)."""
    pairs = []
    for src in sources:
        for f in corpus_files(src, (".jsonl",)):
            for lineno, rec in read_jsonl(f):
                missing = [k for k in (source_field, target_field) if not isinstance(rec, dict) or k not in rec]
                if missing:
                    found = ", ".join(map(repr, sorted(rec))) if isinstance(rec, dict) else "not a JSON object"
                    raise InputError(
                        f"{f}:{lineno} lacks the field {missing[0]!r}; fields found: {found} "
                        f"(choose them with --source-field / --target-field)"
                    )
                pairs.append((rec[source_field], rec[target_field]))
    if not pairs:
        raise InputError(f"{', '.join(sources)} holds no examples")
    return pairs


def split_held_out(items: Sequence[T], fraction: float, seed=0) -> Tuple[List[T], List[T]]:
    """(train, held-out): a fixed random `fraction` of whole items (documents, records, pairs) held out,
    so no text leaks into evaluation. Both lists follow the seeded permutation's order."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"the held-out fraction must be in [0, 1), not {fraction}")
    order = np.random.default_rng(seed).permutation(len(items))
    n_held = int(round(len(items) * fraction))
    return [items[i] for i in order[n_held:]], [items[i] for i in order[:n_held]]


def tokenize_stream(tokenizer, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """All documents' tokens, concatenated (no special tokens, as T5 packs its corpus)."""
    parts = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(list(texts[i : i + batch]), add_special_tokens=False)["input_ids"]
        parts.extend(np.asarray(e, np.int32) for e in enc)
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def make_windows(stream: np.ndarray, window: int) -> np.ndarray:
    """[N, window] non-overlapping chunks of the token stream (the tail is dropped)."""
    n = len(stream) // window
    return np.ascontiguousarray(stream[: n * window].reshape(n, window))


def fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- batch streams -----


def _shift_right(labels: np.ndarray, start_id: int, pad_id: int) -> np.ndarray:
    dec = np.full_like(labels, pad_id)
    dec[:, 0] = start_id
    dec[:, 1:] = labels[:, :-1]
    return np.where(dec == IGNORE, pad_id, dec)


def collate(
    pairs: Sequence[Tuple[np.ndarray, np.ndarray]], pad_id: int = 0, start_id: int = 0
) -> Dict[str, np.ndarray]:
    """Right-padded arrays: input_ids, attention_mask, decoder_input_ids, labels (IGNORE = no loss)."""
    B = len(pairs)
    Li = max(len(p[0]) for p in pairs)
    Lt = max(len(p[1]) for p in pairs)
    inp = np.full((B, Li), pad_id, np.int32)
    att = np.zeros((B, Li), np.int32)
    lab = np.full((B, Lt), IGNORE, np.int32)
    for b, (x, y) in enumerate(pairs):
        inp[b, : len(x)] = x
        att[b, : len(x)] = 1
        lab[b, : len(y)] = y
    return {
        "input_ids": inp,
        "attention_mask": att,
        "decoder_input_ids": _shift_right(lab, start_id, pad_id),
        "labels": lab,
    }


class EpochSampler:
    """Indices of a dataset in a seeded permutation per epoch; its state is (epoch, position)."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise InputError("the training set is empty")
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._order = None

    def _perm(self):
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return self._order

    def take(self, k: int) -> np.ndarray:
        out = []
        while k:
            perm = self._perm()
            m = min(k, self.n - self.pos)
            out.append(perm[self.pos : self.pos + m])
            self.pos += m
            k -= m
            if self.pos == self.n:
                self.epoch, self.pos, self._order = self.epoch + 1, 0, None
        return np.concatenate(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, s: dict) -> None:
        self.epoch, self.pos, self._order = int(s["epoch"]), int(s["pos"]), None


class SpanCorruption:
    """T5's span corruption of token windows into (input, target) batches: the rule every span-corruption
    stream shares."""

    def __init__(self, tokenizer, noise_density: float = NOISE_DENSITY, mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH):
        self.sentinels = sentinel_ids(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.noise_density, self.mean_span = noise_density, mean_noise_span_length

    def batch_from(self, rows: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        pairs = [corrupt(r, rng, self.sentinels, self.eos_id, self.noise_density, self.mean_span) for r in rows]
        return collate(pairs, self.pad_id, self.pad_id)

    def eval_batches(self, windows: np.ndarray, batch_size: int, seed: int = 1234) -> List[Dict[str, np.ndarray]]:
        """A fixed held-out set: the same corruption every time it is built with the same seed."""
        rng = np.random.default_rng([seed, 2])
        return [self.batch_from(windows[i : i + batch_size], rng) for i in range(0, len(windows), batch_size)]


class SpanCorruptionData(SpanCorruption):
    """Batches of span-corrupted fixed-length windows. The corruption RNG (a numpy Generator)
    and the sampler position are the stream's state, saved in checkpoints."""

    objective = "span_corruption"

    def __init__(
        self,
        windows: np.ndarray,
        tokenizer,
        batch_size: int,
        seed: int = 0,
        noise_density: float = NOISE_DENSITY,
        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    ):
        super().__init__(tokenizer, noise_density, mean_noise_span_length)
        self.windows = windows
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(windows), seed)
        self.rng = np.random.default_rng([seed, 1])
        self.seed = seed

    def next_batch(self) -> Dict[str, np.ndarray]:
        return self.batch_from(self.windows[self.sampler.take(self.batch_size)], self.rng)

    def state(self) -> dict:
        return {"sampler": self.sampler.state(), "rng": self.rng.bit_generator.state}

    def set_state(self, s: dict) -> None:
        self.sampler.set_state(s["sampler"])
        self.rng.bit_generator.state = s["rng"]

    def describe(self) -> dict:
        return {
            "objective": self.objective,
            "windows": list(self.windows.shape),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "noise_density": self.noise_density,
            "mean_noise_span_length": self.mean_span,
            "data_fingerprint": fingerprint(self.windows),
        }


def encode_pairs(
    tokenizer, pairs: Sequence[Tuple[str, str]], max_source: int, max_target: int, prefix: str = "summarize: "
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Tokenized (source, target), truncated so that each still ends with EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for src, tgt in pairs:
        s = tokenizer(prefix + src, add_special_tokens=False)["input_ids"][: max_source - 1] + [eos]
        t = tokenizer(tgt, add_special_tokens=False)["input_ids"][: max_target - 1] + [eos]
        out.append((np.asarray(s, np.int32), np.asarray(t, np.int32)))
    return out


class SupervisedData:
    """Batches of document -> summary pairs, right-padded, in a seeded order per epoch."""

    objective = "supervised"

    def __init__(self, examples: Sequence[Tuple[np.ndarray, np.ndarray]], tokenizer, batch_size: int, seed: int = 0):
        self.examples = list(examples)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id
        self.sampler = EpochSampler(len(self.examples), seed)
        self.seed = seed

    def next_batch(self) -> Dict[str, np.ndarray]:
        return collate([self.examples[i] for i in self.sampler.take(self.batch_size)], self.pad_id, self.pad_id)

    def eval_batches(self, examples, batch_size: int) -> List[Dict[str, np.ndarray]]:
        return [
            collate(examples[i : i + batch_size], self.pad_id, self.pad_id) for i in range(0, len(examples), batch_size)
        ]

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def set_state(self, s: dict) -> None:
        self.sampler.set_state(s["sampler"])

    def describe(self) -> dict:
        fp = fingerprint(*[np.concatenate([s, [-1], t]) for s, t in self.examples[:1000]])
        return {
            "objective": self.objective,
            "examples": len(self.examples),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "data_fingerprint": fp,
        }
