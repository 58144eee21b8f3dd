"""Training objectives and their data: T5 span corruption over a text corpus, and supervised
document -> summary pairs.

Span corruption follows the T5 codebase (`t5.data.preprocessors.span_corruption`):
`random_spans_noise_mask` picks round(L * density) noise tokens in round(noise / mean_span)
spans with a random segmentation (always starting with a non-noise span and ending with a
noise span); inputs keep the non-noise tokens with each noise span replaced by one sentinel,
targets are each sentinel followed by the tokens it replaced, then EOS. Sentinel i is the
tokenizer's `<extra_id_i>`. Everything is deterministic given a numpy Generator.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .data import read_jsonl
from .errors import InputError

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


# ---------------------------------------------------------------- span corruption (T5) -----

def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> np.ndarray:
    """Boolean [length] mask of noise tokens, as T5's `random_spans_noise_mask` (random_roll=False)."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        # num_items split into num_segments non-empty segments, uniformly at random.
        first_in_segment = (np.arange(num_items - 1) < num_segments - 1).astype(np.int64)
        first_in_segment = np.concatenate([[0], rng.permutation(first_in_segment)])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id, minlength=num_segments)

    noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, np.int64)
    indicator[span_starts] = 1
    is_noise = (np.cumsum(indicator) % 2) == 1
    return is_noise[:orig_length]


def span_lengths(inputs_length: int, noise_density: float = NOISE_DENSITY,
                 mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> Tuple[int, int]:
    """(raw tokens per window, targets length) so that corrupted inputs are exactly `inputs_length`
    (EOS included), as T5's `random_spans_helper` with one sentinel per span."""

    def lengths(tokens_length):
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def sentinel_ids(tokenizer, n: int = 100) -> np.ndarray:
    """Ids of <extra_id_0> ... <extra_id_{n-1}> (their order is the tokenizer's business)."""
    ids = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(n)]
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(i is None or i == unk for i in ids):
        raise InputError(f"the tokenizer has fewer than {n} sentinel tokens <extra_id_i>")
    return np.asarray(ids, np.int32)


def corrupt(tokens: np.ndarray, rng: np.random.Generator, sentinels: np.ndarray, eos_id: int,
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one token window, both ending with EOS."""
    tokens = np.asarray(tokens, np.int32)
    mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
    starts = mask & ~np.concatenate([[False], mask[:-1]])       # first token of each noise span
    span_index = np.cumsum(starts) - 1
    if span_index[-1] >= len(sentinels):
        raise InputError(f"{span_index[-1] + 1} noise spans but only {len(sentinels)} sentinels; "
                         f"use shorter windows")
    # inputs: non-noise tokens, and a sentinel in place of each noise span
    inp = np.where(starts, sentinels[np.maximum(span_index, 0)], tokens)
    inp = inp[~mask | starts]
    # targets: each sentinel followed by the noise span it replaced
    nonnoise_starts = ~mask & np.concatenate([[True], mask[:-1]])
    tgt_span_index = np.cumsum(nonnoise_starts) - 1
    tgt = np.where(nonnoise_starts, sentinels[np.maximum(tgt_span_index, 0)], tokens)
    tgt = tgt[mask | nonnoise_starts]
    # T5's targets hold a sentinel for every non-noise span; a trailing one (never the case with
    # T5's mask, which ends in noise) would carry nothing, so it is dropped, as T5 does with EOS.
    if not mask[-1]:
        tgt = tgt[:-1]
    return (np.concatenate([inp, [eos_id]]).astype(np.int32),
            np.concatenate([tgt, [eos_id]]).astype(np.int32))


def uncorrupt(inputs: Sequence[int], targets: Sequence[int], sentinels: Sequence[int], eos_id: int) -> List[int]:
    """Rebuild the original window from (inputs, targets): the test of `corrupt`."""
    spans: Dict[int, List[int]] = {}
    current = None
    sent = {int(s): i for i, s in enumerate(sentinels)}
    for t in targets:
        t = int(t)
        if t == eos_id:
            break
        if t in sent:
            current = sent[t]
            spans[current] = []
        else:
            spans[current].append(t)
    out: List[int] = []
    for t in inputs:
        t = int(t)
        if t == eos_id:
            break
        out.extend(spans[sent[t]] if t in sent else [t])
    return out


# ---------------------------------------------------------------- corpus reading -----

def read_texts(sources: Sequence[str], field: str = "document", extra_fields: Sequence[str] = ()) -> List[str]:
    """Documents from .jsonl files (field `field`, plus `extra_fields` appended as separate docs),
    plain .txt files (one document per blank-line separated block), directories or globs of those,
    or a Hugging Face `datasets` name written `hf:NAME[:CONFIG][@SPLIT]` (text column `field`)."""
    texts: List[str] = []
    for src in sources:
        if src.startswith("hf:"):
            texts.extend(_read_hf(src[3:], field))
            continue
        p = Path(src)
        files = sorted(p.rglob("*.jsonl")) + sorted(p.rglob("*.txt")) if p.is_dir() else \
            [Path(f) for f in sorted(glob.glob(src))]
        if not files:
            raise InputError(f"no corpus files at {src!r} (expected .jsonl or .txt files, or hf:NAME)")
        for f in files:
            if f.suffix == ".jsonl":
                for _, rec in read_jsonl(f):
                    for key in (field, *extra_fields) if isinstance(rec, dict) else ():
                        if isinstance(rec.get(key), str) and rec[key].strip():
                            texts.append(rec[key])
            else:
                texts.extend(b.strip() for b in f.read_text(encoding="utf-8").split("\n\n") if b.strip())
    return texts


def _read_hf(spec: str, field: str) -> List[str]:
    import datasets

    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split or "train")
    return [t for t in ds[field] if isinstance(t, str) and t.strip()]


def split_documents(texts: Sequence[str], eval_fraction: float, seed: int = 0) -> Tuple[List[str], List[str]]:
    """Hold out a fixed random fraction of documents (not windows, so no text leaks into eval)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_eval = int(round(len(texts) * eval_fraction))
    held = set(order[:n_eval].tolist())
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def tokenize_stream(tokenizer, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """All documents' tokens, concatenated (no special tokens, as T5 packs its corpus)."""
    parts = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(list(texts[i:i + batch]), add_special_tokens=False)["input_ids"]
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
    return np.where(dec == -100, pad_id, dec)


def collate(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], pad_id: int = 0, start_id: int = 0) -> Dict[str, np.ndarray]:
    """Right-padded arrays: input_ids, attention_mask, decoder_input_ids, labels (-100 = ignore)."""
    B = len(pairs)
    Li = max(len(p[0]) for p in pairs)
    Lt = max(len(p[1]) for p in pairs)
    inp = np.full((B, Li), pad_id, np.int32)
    att = np.zeros((B, Li), np.int32)
    lab = np.full((B, Lt), -100, np.int32)
    for b, (x, y) in enumerate(pairs):
        inp[b, :len(x)] = x
        att[b, :len(x)] = 1
        lab[b, :len(y)] = y
    return {"input_ids": inp, "attention_mask": att, "decoder_input_ids": _shift_right(lab, start_id, pad_id),
            "labels": lab}


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
            out.append(perm[self.pos:self.pos + m])
            self.pos += m
            k -= m
            if self.pos == self.n:
                self.epoch, self.pos, self._order = self.epoch + 1, 0, None
        return np.concatenate(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, s: dict) -> None:
        self.epoch, self.pos, self._order = int(s["epoch"]), int(s["pos"]), None


class SpanCorruptionData:
    """Batches of span-corrupted fixed-length windows. The corruption RNG (a numpy Generator)
    and the sampler position are the stream's state, saved in checkpoints."""

    objective = "span_corruption"

    def __init__(self, windows: np.ndarray, tokenizer, batch_size: int, seed: int = 0,
                 noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH):
        self.windows = windows
        self.batch_size = batch_size
        self.sentinels = sentinel_ids(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.noise_density, self.mean_span = noise_density, mean_noise_span_length
        self.sampler = EpochSampler(len(windows), seed)
        self.rng = np.random.default_rng([seed, 1])
        self.seed = seed

    def batch_from(self, rows: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        pairs = [corrupt(r, rng, self.sentinels, self.eos_id, self.noise_density, self.mean_span) for r in rows]
        return collate(pairs, self.pad_id, self.pad_id)

    def next_batch(self) -> Dict[str, np.ndarray]:
        return self.batch_from(self.windows[self.sampler.take(self.batch_size)], self.rng)

    def eval_batches(self, windows: np.ndarray, batch_size: int, seed: int = 1234) -> List[Dict[str, np.ndarray]]:
        """A fixed held-out set: the same corruption every time it is built with the same seed."""
        rng = np.random.default_rng([seed, 2])
        return [self.batch_from(windows[i:i + batch_size], rng) for i in range(0, len(windows), batch_size)]

    def state(self) -> dict:
        return {"sampler": self.sampler.state(), "rng": self.rng.bit_generator.state}

    def set_state(self, s: dict) -> None:
        self.sampler.set_state(s["sampler"])
        self.rng.bit_generator.state = s["rng"]

    def describe(self) -> dict:
        return {"objective": self.objective, "windows": list(self.windows.shape), "batch_size": self.batch_size,
                "seed": self.seed, "noise_density": self.noise_density, "mean_noise_span_length": self.mean_span,
                "data_fingerprint": fingerprint(self.windows)}


def read_pairs(path: str, source_field: str = "document", target_field: str = "summary") -> List[Tuple[str, str]]:
    pairs = []
    for lineno, rec in read_jsonl(Path(path)):
        if not isinstance(rec, dict) or source_field not in rec or target_field not in rec:
            raise InputError(f"{path}:{lineno} lacks the field {source_field!r} or {target_field!r}")
        pairs.append((rec[source_field], rec[target_field]))
    if not pairs:
        raise InputError(f"{path} holds no examples")
    return pairs


def encode_pairs(tokenizer, pairs: Sequence[Tuple[str, str]], max_source: int, max_target: int,
                 prefix: str = "summarize: ") -> List[Tuple[np.ndarray, np.ndarray]]:
    """Tokenized (source, target), truncated so that each still ends with EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for src, tgt in pairs:
        s = tokenizer(prefix + src, add_special_tokens=False)["input_ids"][:max_source - 1] + [eos]
        t = tokenizer(tgt, add_special_tokens=False)["input_ids"][:max_target - 1] + [eos]
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

    def eval_batches(self, examples, batch_size: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
        return [collate(examples[i:i + batch_size], self.pad_id, self.pad_id)
                for i in range(0, len(examples), batch_size)]

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def set_state(self, s: dict) -> None:
        self.sampler.set_state(s["sampler"])

    def describe(self) -> dict:
        fp = fingerprint(*[np.concatenate([s, [-1], t]) for s, t in self.examples[:1000]])
        return {"objective": self.objective, "examples": len(self.examples), "batch_size": self.batch_size,
                "seed": self.seed, "data_fingerprint": fp}
