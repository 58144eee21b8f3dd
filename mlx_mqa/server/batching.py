"""Continuous batching: one thread owns the model and steps a batch of rows; requests join and leave at step
boundaries.

A request is admitted when a slot is free: its encoder pass and cross K/V run once, alone (so its numbers are
those of `generate()` of that prompt), then it joins the batch (`step.BatchState`). Beyond the slots, requests
wait in a bounded queue; past it, `submit` raises `Overloaded`. A finished or cancelled row leaves at once.
Every row's events (tokens, the end) go to its own `queue.Queue`, read by the HTTP thread that serves it.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

import mlx.core as mx

from ..decoding.compiled import model_lock
from ..decoding.sample_utils import make_sampler
from ..decoding.state import encode_bounded
from .step import BatchState


class Overloaded(Exception):
    """Every slot is taken and the queue is full (or the server is stopping)."""


@dataclass
class Params:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 0.0


@dataclass
class Event:
    token: Optional[int] = None  # a generated token (EOS excluded)
    finish_reason: Optional[str] = None  # set on the last event: stop, length, cancelled
    error: Optional[str] = None


@dataclass
class Row:
    """One prompt being generated: what the HTTP thread reads (`events`) and may set (`cancel`)."""

    input_ids: List[int]
    params: Params
    id: int = 0
    events: "queue.Queue[Event]" = field(default_factory=queue.Queue)
    cancelled: bool = False
    generated: int = 0
    last: int = 0
    sampler: Optional[Callable] = None

    def cancel(self) -> None:
        self.cancelled = True  # read by the generation thread at the next step boundary


class BatchGenerator:
    """The generation thread and its admission state. `slots`: rows decoded together; `queue_size`: rows that
    may wait for a slot; `capacity`: self-attention cache columns shared by the rows (> the longest decode)."""

    def __init__(self, model, eos_token_id: int, slots: int, queue_size: int, capacity: int, compiled=None):
        self.model = model
        self.eos = eos_token_id
        self.start_token = model.args.decoder_start_token_id
        self.slots = slots
        self.queue_size = queue_size
        self.batch = BatchState(model, capacity, compiled)
        self.active: List[Row] = []
        self.joining: List[Row] = []  # taken from the queue, being encoded
        self.waiting: Deque[Row] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.closing = False
        self.cancelled_total = 0
        self.finished_total = 0
        self.peak_used = 0
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="mlx_mqa-generation", daemon=True)
        self._thread.start()

    # --- called from HTTP threads -------------------------------------------------------------------
    def submit(self, rows: List[Row]) -> None:
        """Queue rows together (all or none), or raise Overloaded."""
        with self.cond:
            if self.closing or self.stopping:
                raise Overloaded("the server is shutting down")
            if self._used() + len(self.waiting) + len(rows) > self.slots + self.queue_size:
                raise Overloaded(
                    f"all {self.slots} slots are busy and the queue ({self.queue_size}) is full; retry later"
                )
            for r in rows:
                r.id = next(self._ids)
                if r.params.temperature > 0:
                    r.sampler = make_sampler(r.params.temperature, r.params.top_p)
                self.waiting.append(r)
            self.cond.notify_all()

    def stats(self) -> dict:
        with self.cond:
            return {
                "slots": self.slots,
                "slots_used": self._used(),
                "queue_depth": len(self.waiting),
                "queue_size": self.queue_size,
                "finished": self.finished_total,
                "cancelled": self.cancelled_total,
                "peak_slots_used": self.peak_used,
            }

    def cancel(self, row: Row) -> None:
        """A waiting row leaves the queue now; an active one leaves at the next step boundary."""
        with self.cond:
            if row in self.waiting:
                self.waiting.remove(row)
                self.cancelled_total += 1
                row.events.put(Event(finish_reason="cancelled"))
                return
        row.cancel()

    def close(self) -> None:
        """Accept no new rows; the queued and active ones go on."""
        with self.cond:
            self.closing = True

    def idle(self) -> bool:
        with self.cond:
            return not self.active and not self.waiting

    def stop(self, drain_s: float = 0.0, timeout: float = 10.0) -> None:
        """Accept nothing more, let rows finish for up to `drain_s` seconds, then cancel the rest (each gets a
        final `cancelled` event) and end the thread."""
        self.close()
        deadline = time.monotonic() + drain_s
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self._thread.join(timeout)

    # --- the generation thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.active and not self.waiting:
                    self.cond.wait()
                if self.stopping:
                    self._end_all("cancelled")
                    return
                while self.waiting and self._used() < self.slots:
                    self.joining.append(self.waiting.popleft())
                joining = list(self.joining)
            for row in joining:
                try:
                    self._admit(row)
                except Exception as e:  # this request's fault (or the model's): it alone ends
                    self._finish(row, "error", f"{type(e).__name__}: {e}")
            try:
                if self.active:
                    self._step()
            except Exception as e:  # a fault in the model: end every row with an error, keep serving
                self._fail_all(f"{type(e).__name__}: {e}")

    def _used(self) -> int:
        """With self.cond held: slots taken (rows decoding, and rows being admitted)."""
        return len(self.active) + len(self.joining)

    def _admit(self, row: Row) -> None:
        """Encode a row and add it to the batch (a row in `joining` leaves it, whatever happens)."""
        try:
            self._encode_and_join(row)
        finally:
            with self.cond:
                if row in self.joining:
                    self.joining.remove(row)

    def _encode_and_join(self, row: Row) -> None:
        if row.cancelled:
            self._finish(row, "cancelled")
            return
        ids = mx.array([row.input_ids], dtype=mx.int32)
        enc = encode_bounded(self.model, ids, None)
        with model_lock(self.model):
            cross = self.model.cross_kv(enc)
        self.batch.add(cross, len(row.input_ids))
        row.last = self.start_token
        with self.cond:
            self.joining.remove(row)
            self.active.append(row)
            self.peak_used = max(self.peak_used, len(self.active))

    def _step(self) -> None:
        y = mx.array([r.last for r in self.active], dtype=mx.int32)
        logits = self.batch.logits(y).astype(mx.float32)
        if any(r.sampler for r in self.active):
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            greedy = mx.argmax(logprobs, axis=-1)
            toks = [r.sampler(logprobs[i : i + 1])[0] if r.sampler else greedy[i] for i, r in enumerate(self.active)]
            tokens = mx.stack(toks).tolist()
        else:
            tokens = mx.argmax(logits, axis=-1).tolist()
        keep = []
        for i, (row, tok) in enumerate(zip(self.active, tokens)):
            row.generated += 1
            row.last = tok
            if row.cancelled:
                self._finish(row, "cancelled")
            elif tok == self.eos:
                self._finish(row, "stop")
            else:
                row.events.put(Event(token=tok))
                if row.generated >= row.params.max_tokens:
                    self._finish(row, "length")
                else:
                    keep.append(i)
        self._leave(keep)

    def _leave(self, keep: List[int]) -> None:
        with self.cond:
            self.active = [self.active[i] for i in keep]
        self.batch.keep(keep)

    def _finish(self, row: Row, reason: str, error: Optional[str] = None) -> None:
        with self.cond:
            if reason == "cancelled":
                self.cancelled_total += 1
            else:
                self.finished_total += 1
        row.events.put(Event(finish_reason=reason, error=error))

    def _end_all(self, reason: str, error: Optional[str] = None) -> None:
        """With self.cond held: end every active and waiting row."""
        for row in list(self.active) + list(self.waiting):
            row.events.put(Event(finish_reason=reason, error=error or "the server is shutting down"))
            self.cancelled_total += 1
        self.active, self.waiting, self.joining = [], collections.deque(), []
        self.batch.keep([])

    def _fail_all(self, message: str) -> None:
        with self.cond:
            for row in self.active:
                row.events.put(Event(finish_reason="error", error=message))
            self.active = []
        self.batch = BatchState(self.model, self.batch.capacity, self.batch.compiled_choice)
