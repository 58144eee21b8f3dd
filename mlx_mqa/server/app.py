"""The HTTP side: the standard library's ThreadingHTTPServer (as mlx-lm's server), one thread per connection.

Handler threads only tokenize, check and wait on their rows' event queues; the generation thread
(`batching.BatchGenerator`) owns the model. Every bad request gets a JSON error and a 4xx status, logged.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional

from .batching import BatchGenerator, Event, Overloaded, Params, Row
from .protocol import (
    RequestError,
    TextStream,
    choice,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse_completion,
)

log = logging.getLogger("mlx_mqa.server")
MAX_BODY = 4 * 2**20
RETRY_AFTER_S = 1
POLL_S = 0.1


@dataclass
class ServerConfig:
    model_name: str
    max_input_tokens: int
    max_tokens_limit: int
    api_key: Optional[str] = None
    request_timeout_s: float = 600.0


class App:
    """What every handler thread shares: the generator, the tokenizer and the limits."""

    def __init__(self, generator: BatchGenerator, tokenizer, config: ServerConfig):
        self.generator = generator
        self.tokenizer = tokenizer
        self.config = config
        self.in_flight = 0
        self._lock = threading.Lock()

    def health(self) -> dict:
        s = self.generator.stats()
        status = "stopping" if self.generator.closing else "ok"
        return {"status": status, **s, "model": self.config.model_name, "in_flight": self.in_flight}

    def tokenize(self, prompts: List[str]) -> List[List[int]]:
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        for i, t in enumerate(ids):
            if len(t) > self.config.max_input_tokens:
                raise RequestError(
                    f"prompt {i} has {len(t)} tokens, more than this server's max input tokens "
                    f"({self.config.max_input_tokens})"
                )
        return ids

    def track(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta


class Handler(BaseHTTPRequestHandler):
    server_version = "mlx_mqa"
    protocol_version = "HTTP/1.1"
    app: App  # set on the subclass made by `make_server`

    def log_message(self, fmt, *args):  # the access log goes to the logger, not to stderr directly
        log.info("%s %s", self.address_string(), fmt % args)

    # --- plumbing -------------------------------------------------------------------------------------
    def _send_json(self, status: int, body: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, e: RequestError) -> None:
        log.warning("%s %s -> %d %s: %s", self.command, self.path, e.status, e.kind, e)
        self.close_connection = True
        self._send_json(e.status, error_body(str(e), e.kind), e.headers)

    def _authorized(self) -> bool:
        key = self.app.config.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            self._send_error(RequestError("missing or wrong API key (Authorization: Bearer ...)", 401, "auth_error"))
            return False
        return True

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # --- routes ---------------------------------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":  # open to probes: counts only
            self._send_json(200, self.app.health())
        elif not self._authorized():
            return
        elif path == "/v1/models":
            name = self.app.config.model_name
            m = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "mlx_mqa"}
            self._send_json(200, {"object": "list", "data": [m]})
        else:
            self._send_error(RequestError(f"no route GET {self.path}", 404, "not_found_error"))

    def do_POST(self):
        if not self._authorized():
            return
        if self.path.split("?")[0].rstrip("/") != "/v1/completions":
            self._send_error(RequestError(f"no route POST {self.path}", 404, "not_found_error"))
            return
        self.app.track(1)
        try:
            self._completions()
        except RequestError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.app.track(-1)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("a Content-Length header is required", 411, "invalid_request_error") from None
        if length < 0 or length > MAX_BODY:
            raise RequestError(f"the body must hold at most {MAX_BODY} bytes", 413, "invalid_request_error")
        return self.rfile.read(length)

    def _completions(self) -> None:
        app = self.app
        self._checked = time.monotonic()
        req = parse_completion(self._read_body(), app.config.max_tokens_limit)
        ids = app.tokenize(req.prompts)
        params = Params(req.max_tokens, req.temperature, req.top_p)
        rows = [Row(t, params) for t in ids]
        gen = app.generator
        if len(rows) > gen.slots + gen.queue_size:  # would never fit: not worth a retry
            raise RequestError(f"{len(rows)} prompts; this server takes at most {gen.slots + gen.queue_size} at once")
        try:
            app.generator.submit(rows)
        except Overloaded as e:
            raise RequestError(str(e), 503, "overloaded_error", {"Retry-After": RETRY_AFTER_S}) from None
        try:
            if req.stream:
                self._stream(req, rows)
            else:
                self._complete(req, rows)
        finally:
            for r in rows:
                app.generator.cancel(r)  # a no-op for rows that ended; frees the slot of any that did not

    def _next_event(self, row: Row, deadline: float) -> Optional[Event]:
        """The row's next event, or None once the client left or the request timed out (both checked every
        POLL_S, also while events keep coming)."""
        while True:
            now = time.monotonic()
            if now - self._checked >= POLL_S:
                self._checked = now
                if self._client_gone() or now > deadline:
                    return None
            try:
                return row.events.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def _complete(self, req, rows: List[Row]) -> None:
        deadline = time.monotonic() + self.app.config.request_timeout_s
        choices, completion = [], 0
        for i, row in enumerate(rows):
            text = TextStream(self.app.tokenizer, req.stop)
            while True:
                ev = self._next_event(row, deadline)
                if ev is None:  # the client left (`finally` above frees the slots), or time is up
                    if self._client_gone():
                        return
                    raise RequestError("the request timed out", 504, "timeout_error")
                if ev.token is not None and not text.stopped:
                    text.add(ev.token)
                    if text.stopped:
                        self.app.generator.cancel(row)
                if ev.finish_reason is not None:
                    if ev.finish_reason == "error":
                        raise RequestError(f"generation failed: {ev.error}", 500, "server_error")
                    reason = "stop" if text.stopped else ev.finish_reason
                    break
            completion += row.generated
            choices.append(choice(i, text.text, reason))
        cid = new_id()
        prompt_tokens = sum(len(r.input_ids) for r in rows)
        self._send_json(200, completion_body(cid, self.app.config.model_name, choices, prompt_tokens, completion))

    def _stream(self, req, rows: List[Row]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        cid, model = new_id(), self.app.config.model_name
        deadline = time.monotonic() + self.app.config.request_timeout_s

        def send(body: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
            self.wfile.flush()

        for i, row in enumerate(rows):
            text = TextStream(self.app.tokenizer, req.stop)
            while True:
                ev = self._next_event(row, deadline)
                if ev is None:
                    return
                if ev.token is not None and not text.stopped:
                    # One event per token, its text possibly empty (held back, or not yet a whole character).
                    delta = text.add(ev.token)
                    if text.stopped:
                        self.app.generator.cancel(row)
                    send(chunk_body(cid, model, i, delta, None))
                if ev.finish_reason is not None:
                    reason = "stop" if text.stopped else ev.finish_reason
                    if ev.error:
                        send(error_body(ev.error, "server_error" if reason == "error" else "server_shutdown"))
                    send(chunk_body(cid, model, i, text.flush(), reason))
                    break
        if req.include_usage:
            prompt_tokens = sum(len(r.input_ids) for r in rows)
            completion = sum(r.generated for r in rows)
            usage = completion_body(cid, model, [], prompt_tokens, completion)["usage"]
            send({**chunk_body(cid, model, None, "", None), "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(app: App, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
