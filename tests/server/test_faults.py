"""Bad input, overload, clients that leave, API keys and SIGTERM: each answered, and the server keeps serving."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PROMPTS

from .conftest import TIMEOUT_S, Client, read_events, running_server

LONG = 1000  # max_tokens of a request that is still running when the test acts


def wait_for(predicate, timeout=TIMEOUT_S, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def one_slot_budget(path, max_input_tokens, max_tokens_limit) -> str:
    import mlx_mqa
    from mlx_mqa.server.admission import kv_bytes_per_token, self_cache_capacity

    model, _ = mlx_mqa.load(str(path))
    return str(kv_bytes_per_token(model) * (max_input_tokens + self_cache_capacity(max_tokens_limit)))


def raw_request(client: Client, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection((client.host, client.port), timeout=TIMEOUT_S)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    sock.sendall(head.encode() + b"\r\n\r\n" + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_client_that_leaves_frees_its_slot(tiny_mha, stream):
    with running_server(tiny_mha, max_slots=2, max_tokens_limit=LONG) as (client, _):
        sock = raw_request(client, {"prompt": PROMPTS[0], "max_tokens": LONG, "stream": stream})
        wait_for(lambda: client.health()["slots_used"] == 1)
        if stream:  # the stream has begun
            got = b""
            while b"data: " not in got and len(got) < 2**16:
                got += sock.recv(4096)
            assert b"data: " in got
        sock.close()
        h = wait_for(lambda: (lambda h: h if h["slots_used"] == 0 else None)(client.health()))
        assert h["cancelled"] == 1 and h["finished"] == 0 and h["queue_depth"] == 0
        status, body, _ = client.complete(prompt=PROMPTS[1], max_tokens=4)
        assert status == 200 and body["choices"][0]["text"]


def test_overload_answers_503_with_retry_after(tiny_mha):
    budget = one_slot_budget(tiny_mha, 64, LONG)
    opts = dict(memory_budget=budget, max_input_tokens=64, max_tokens_limit=LONG, queue_size=1)
    with running_server(tiny_mha, **opts) as (client, _):
        assert client.health()["slots"] == 1
        first, resp1 = client.open_stream(prompt=PROMPTS[0], max_tokens=LONG)
        second, resp2 = client.open_stream(prompt=PROMPTS[1], max_tokens=LONG)
        try:
            assert resp1.status == 200 and resp1.readline().startswith(b"data: ")
            wait_for(lambda: client.health()["queue_depth"] == 1)
            status, body, headers = client.complete(prompt=PROMPTS[2], max_tokens=4)
            assert status == 503 and int(headers["Retry-After"]) >= 1
            assert body["error"]["type"] == "overloaded_error" and "slots" in body["error"]["message"]
        finally:  # the responses hold the sockets too
            for conn, resp in ((first, resp1), (second, resp2)):
                resp.close()
                conn.close()
        h = wait_for(lambda: (lambda h: h if h["slots_used"] == h["queue_depth"] == 0 else None)(client.health()))
        assert h["cancelled"] == 2  # both left with their clients, neither ran to the end
        status, body, _ = client.complete(prompt=PROMPTS[2], max_tokens=4)
        assert status == 200


BAD = [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b"\xff\xfe", 400),
    ({}, 400),
    ({"prompt": "hi", "frobnicate": 1}, 400),
    ({"prompt": 5}, 400),
    ({"prompt": ""}, 400),
    ({"prompt": ["fine", "   "]}, 400),
    ({"prompt": []}, 400),
    ({"prompt": "hi", "max_tokens": "10"}, 400),
    ({"prompt": "hi", "max_tokens": 10**9}, 400),
    ({"prompt": "hi", "max_tokens": 0}, 400),
    ({"prompt": "hi", "max_tokens": True}, 400),
    ({"prompt": "hi", "temperature": -1}, 400),
    ({"prompt": "hi", "top_p": "x"}, 400),
    ({"prompt": "hi", "stream": "yes"}, 400),
    ({"prompt": "hi", "stop": [1]}, 400),
    ({"prompt": "hi", "stop": ""}, 400),
    ({"prompt": "hi", "n": 2}, 400),
    ({"prompt": "word " * 100}, 400),  # over --max-input-tokens
    ({"prompt": ["a"] * 16}, 400),  # more rows than slots + queue: never fits
    ({"prompt": "hi", "stream_options": {"include_usage": 1}}, 400),
]


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(tiny_mha, caplog):
    with running_server(tiny_mha, max_input_tokens=32, max_tokens_limit=64, max_slots=4, queue_size=4) as (client, _):
        for body, code in BAD:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            status, answer, _ = client.request("POST", "/v1/completions", raw=raw)
            assert status == code, body
            assert isinstance(answer["error"]["message"], str) and answer["error"]["type"], body
        for method, path in [("GET", "/nope"), ("POST", "/v1/chat/completions")]:
            status, answer, _ = client.request(method, path, raw=b"{}" if method == "POST" else None)
            assert status == 404 and answer["error"]["type"] == "not_found_error"
        status, body, _ = client.complete(prompt=PROMPTS[1], max_tokens=4)
        assert status == 200 and client.health()["slots_used"] == 0
    assert sum("-> 400" in r.getMessage() for r in caplog.records) == len(BAD)


def test_api_key(tiny_mha):
    with running_server(tiny_mha, api_key="s3cret") as (client, _):
        assert client.complete(prompt="hi", max_tokens=2)[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.request("GET", "/v1/models", headers=wrong)[0] == 401
        right = {"Authorization": "Bearer s3cret"}
        status, _, _ = client.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}, headers=right)
        assert status == 200
        assert client.request("GET", "/health")[0] == 200


def test_non_loopback_host_needs_an_api_key(tiny_mha):
    from click.testing import CliRunner

    from mlx_mqa.server.cli import main

    result = CliRunner().invoke(main, ["--model", str(tiny_mha), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-key" in result.output


def _read_line(stream, timeout):
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


def test_sigterm_ends_streams_cleanly_and_exits_0(tiny_mha):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "mlx_mqa.server", "--model", str(tiny_mha), "--port", "0"]
    cmd += ["--drain-seconds", "0", "--max-tokens-limit", str(LONG), "--memory-budget", "256MB"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = _read_line(proc.stdout, 120).decode()
        assert "listening on http://127.0.0.1:" in line, line
        client = Client(line.split("http://")[1].split()[0])
        conn, resp = client.open_stream(prompt=PROMPTS[0], max_tokens=LONG)
        assert resp.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        events = read_events(resp)
        conn.close()
        assert events[-1] == "[DONE]"
        last = events[-2]["choices"][0]
        assert last["finish_reason"] in ("cancelled", "length", "stop")
        assert proc.wait(timeout=TIMEOUT_S) == 0
        assert b"stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT_S)
