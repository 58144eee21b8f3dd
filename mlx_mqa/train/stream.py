"""Span corruption over a corpus read lazily (`--stream`): memory does not grow with the corpus, and each
process of a data-parallel run reads its own documents.

Document d (counted over the whole stream, in order) belongs to rank d % world. A rank packs its documents'
tokens into windows, a block of at least `block_windows` windows at a time, and serves each block in a
seeded order. The saved position is the block's first document, the tokens carried into it and the windows
already served, so a resumed stream re-reads the corpus up to there (without tokenizing) and continues
exactly where it left off.
"""

from __future__ import annotations

from itertools import islice
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .data import SpanCorruption, iter_texts, make_windows, tokenize_stream
from .objectives import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY

READ_DOCUMENTS = 64  # documents tokenized together


def held_out_prefix(
    sources: Sequence[str], field: str, tokenizer, window: int, n_windows: int
) -> Tuple[np.ndarray, int]:
    """The leading documents of the stream held out for evaluation: (their first `n_windows` windows,
    the number of documents they took). Training skips those documents."""
    parts: List[np.ndarray] = []
    tokens = used = 0
    for text in iter_texts(sources, field, streaming=True):
        if tokens >= n_windows * window:
            break
        parts.append(tokenize_stream(tokenizer, [text]))
        tokens += len(parts[-1])
        used += 1
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return make_windows(stream, window)[:n_windows], used


class StreamedSpanData(SpanCorruption):
    """Batches of span-corrupted windows packed from a lazily read corpus, sharded by rank."""

    objective = "span_corruption"
    rank_sharded = True  # next_batch() is this rank's own micro-batch

    def __init__(
        self,
        sources: Sequence[str],
        tokenizer,
        batch_size: int,
        window: int,
        seed: int = 0,
        field: str = "document",
        rank: int = 0,
        world: int = 1,
        skip_documents: int = 0,
        block_windows: int = 512,
        noise_density: float = NOISE_DENSITY,
        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    ):
        super().__init__(tokenizer, noise_density, mean_noise_span_length)
        if not 0 <= rank < world:
            raise InputError(f"rank {rank} is not in a world of {world}")
        self.sources, self.field, self.tokenizer = list(sources), field, tokenizer
        self.batch_size, self.window, self.seed = batch_size, window, seed
        self.rank, self.world, self.skip = rank, world, skip_documents
        self.block_windows = block_windows
        self.rng = np.random.default_rng([seed, 1, rank])
        self.epoch, self.doc, self.carry, self.taken = 0, skip_documents, np.zeros(0, np.int32), 0
        self._docs: Optional[Iterator[Tuple[int, str]]] = None
        self._block: Optional[np.ndarray] = None

    # ------------------------------------------------------------- reading -----

    def _own_documents(self, n: int) -> List[str]:
        """Up to n more documents of this rank; self._read is the index after the last one read."""
        out = []
        for d, text in self._docs:
            self._read = d + 1
            if d % self.world == self.rank:
                out.append(text)
                if len(out) == n:
                    break
        return out

    def _fill_block(self) -> None:
        """The block starting at (epoch, doc, carry), in its seeded order; sets where the next one starts."""
        if self._docs is None:  # documents before self.doc are read, not tokenized
            self._docs = islice(enumerate(iter_texts(self.sources, self.field, streaming=True)), self.doc, None)
        self._read = self.doc
        parts, tokens, ended = [self.carry], len(self.carry), False
        while not ended and tokens < self.block_windows * self.window:
            texts = self._own_documents(READ_DOCUMENTS)
            ended = len(texts) < READ_DOCUMENTS
            if texts:
                parts.append(tokenize_stream(self.tokenizer, texts))
                tokens += len(parts[-1])
        stream = np.concatenate(parts)
        windows = make_windows(stream, self.window)
        if len(windows) == 0 and self.doc == self.skip and ended:
            raise InputError(
                f"rank {self.rank} of {self.world} has fewer than {self.window} training tokens in "
                f"{', '.join(self.sources)}: give more data or use fewer processes"
            )
        order = np.random.default_rng([self.seed, 2, self.rank, self.epoch, self.doc]).permutation(len(windows))
        self._block = windows[order][self.taken :]
        if ended:  # the next epoch starts over (the tail shorter than a window is dropped)
            self._next = (self.epoch + 1, self.skip, np.zeros(0, np.int32))
        else:
            self._next = (self.epoch, self._read, stream[len(windows) * self.window :])

    def _advance(self) -> None:
        epoch, doc, carry = self._next
        if epoch != self.epoch:
            self._docs = None
        self.epoch, self.doc, self.carry, self.taken, self._block = epoch, doc, carry, 0, None

    def _windows(self, k: int) -> np.ndarray:
        out = []
        while k:
            if self._block is None:
                self._fill_block()
            m = min(k, len(self._block))
            out.append(self._block[:m])
            self._block, self.taken, k = self._block[m:], self.taken + m, k - m
            if len(self._block) == 0:
                self._advance()
        return np.concatenate(out)

    # ------------------------------------------------------------- batch stream -----

    def next_batch(self) -> Dict[str, np.ndarray]:
        return self.batch_from(self._windows(self.batch_size), self.rng)

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "doc": self.doc,
            "carry": self.carry.tolist(),
            "taken": self.taken,
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, s: dict) -> None:
        self.epoch, self.doc, self.taken = int(s["epoch"]), int(s["doc"]), int(s["taken"])
        self.carry = np.asarray(s["carry"], np.int32)
        self.rng.bit_generator.state = s["rng"]
        self._docs, self._block = None, None

    def describe(self) -> dict:
        return {
            "objective": self.objective,
            "stream": self.sources,
            "field": self.field,
            "window": self.window,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "held_out_documents": self.skip,
            "block_windows": self.block_windows,
            "noise_density": self.noise_density,
            "mean_noise_span_length": self.mean_span,
        }
