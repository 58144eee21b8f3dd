"""A real server on an ephemeral loopback port, over tiny random checkpoints; HTTP helpers with timeouts."""

import contextlib
import http.client
import json
import threading
import urllib.error
import urllib.request

import pytest

TIMEOUT_S = 60


@pytest.fixture(scope="session")
def tiny_mha(hf_checkpoint, tokenizer):
    # The bundled tokenizer's vocabulary, so generated ids are text; this shape's greedy texts are varied.
    return hf_checkpoint(
        "flan-t5-small", shared_std=0.05, num_layers=1, num_decoder_layers=1, vocab_size=len(tokenizer)
    )


@pytest.fixture(scope="session")
def tiny_mqa(tiny_mha, tmp_path_factory):
    from mlx_mqa.conversion import convert

    return convert(str(tiny_mha), str(tmp_path_factory.mktemp("mqa") / "mqa"), kv_heads=1, dtype="float32")


@contextlib.contextmanager
def running_server(path, memory_budget="1GB", max_slots=8, queue_size=8, max_input_tokens=None, **kw):
    """The server's app in this process, bound to 127.0.0.1:0, stopped on exit."""
    from mlx_mqa.server.app import make_server
    from mlx_mqa.server.cli import build

    app, plan = build(
        str(path),
        kw.pop("dtype", None),
        max_input_tokens,
        kw.pop("max_tokens_limit", 512),
        memory_budget,
        max_slots,
        queue_size,
        kw.pop("api_key", None),
    )
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Client(f"127.0.0.1:{server.server_address[1]}"), app
    finally:
        app.generator.stop(0)
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


class Client:
    def __init__(self, address: str):
        self.address = address
        self.host, port = address.split(":")
        self.port = int(port)

    def request(self, method, path, body=None, headers=None, raw=None):
        """(status, parsed JSON body, headers)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://{self.address}{path}", data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def complete(self, **body):
        return self.request("POST", "/v1/completions", body)

    def health(self):
        return self.request("GET", "/health")[1]

    def open_stream(self, **body):
        """A streaming request: (connection, response) to read `data:` lines from."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), headers)
        return conn, conn.getresponse()

    def stream(self, **body):
        """All events of a streamed completion, [DONE] included (as the string)."""
        conn, resp = self.open_stream(**body)
        try:
            return read_events(resp)
        finally:
            conn.close()


def read_events(resp, limit=10_000):
    events = []
    for _ in range(limit):
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[len(b"data: ") :].decode()
        events.append(payload if payload == "[DONE]" else json.loads(payload))
        if payload == "[DONE]":
            break
    return events
