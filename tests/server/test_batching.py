"""Continuous batching over real HTTP: each request's greedy text is that of generate() of its prompt alone."""

import threading
import time

import pytest

from tests.helpers import PROMPTS

from .conftest import TIMEOUT_S, running_server

# Prompts of different lengths (3 to ~40 tokens).
MIXED = [
    PROMPTS[1],
    PROMPTS[0],
    PROMPTS[2],
    "translate English to German: The house is wonderful.",
    PROMPTS[2] + " " + PROMPTS[0],
]
MAX_TOKENS = 24


def reference(path, prompts, max_tokens):
    import mlx_mqa

    model, tok = mlx_mqa.load(str(path))
    return [mlx_mqa.generate(model, tok, p, max_new_tokens=max_tokens) for p in prompts]


@pytest.mark.parametrize("variant", ["tiny_mha", "tiny_mqa"])
def test_concurrent_requests_match_generate_alone(variant, request):
    path = request.getfixturevalue(variant)
    expected = reference(path, MIXED, MAX_TOKENS)
    assert len(set(expected)) == len(MIXED) and all(expected)  # texts that tell the rows apart
    results = [None] * len(MIXED)
    # max_tokens_limit = MAX_TOKENS: a cache of few spare columns, so a busy batch is compacted on the way (whether
    # it is depends on timing here; tests/server/test_step.py compacts deterministically).
    with running_server(path, max_slots=3, queue_size=8, max_tokens_limit=MAX_TOKENS) as (client, app):

        def ask(i):
            time.sleep(0.03 * i)  # arrivals at different times: rows join a batch already decoding
            results[i] = client.complete(prompt=MIXED[i], max_tokens=MAX_TOKENS)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(MIXED))]
        for t in threads:
            t.start()
        # A list prompt: several rows of one request, joined together.
        status, body, _ = client.complete(prompt=MIXED[:2], max_tokens=MAX_TOKENS)
        for t in threads:
            t.join(TIMEOUT_S)
        health = client.health()
    assert status == 200 and [c["text"] for c in body["choices"]] == expected[:2]
    for (status, body, _), text in zip(results, expected):
        assert status == 200
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        (c,) = body["choices"]
        assert c["text"] == text and c["index"] == 0 and c["logprobs"] is None
        assert c["finish_reason"] in ("stop", "length")
        u = body["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] >= 1
    assert health["peak_slots_used"] >= 2  # rows were really decoded together
    assert health["slots_used"] == 0 and health["queue_depth"] == 0


def test_stream_concatenates_to_the_completion(tiny_mha):
    with running_server(tiny_mha, max_slots=2) as (client, _):
        status, body, _ = client.complete(prompt=PROMPTS[0], max_tokens=20)
        events = client.stream(prompt=PROMPTS[0], max_tokens=20, stream_options={"include_usage": True})
        assert status == 200 and events[-1] == "[DONE]"
        usage = events[-2]
        assert usage["choices"] == [] and usage["usage"] == body["usage"]
        chunks = events[:-2]
        assert len(chunks) == body["usage"]["completion_tokens"] + (body["choices"][0]["finish_reason"] == "length")
        assert all(e["object"] == "text_completion" for e in chunks)
        assert "".join(e["choices"][0]["text"] for e in chunks) == body["choices"][0]["text"]
        assert [e["choices"][0]["finish_reason"] for e in chunks][-1] == body["choices"][0]["finish_reason"]
        assert all(e["choices"][0]["finish_reason"] is None for e in chunks[:-1])

        # A stop string cuts the text before it, streamed or not.
        full = body["choices"][0]["text"]
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        status, cut, _ = client.complete(prompt=PROMPTS[0], max_tokens=20, stop=[stop, "zzzzqqq"])
        assert cut["choices"][0]["text"] == full[: full.find(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"
        streamed = client.stream(prompt=PROMPTS[0], max_tokens=20, stop=stop)
        assert "".join(e["choices"][0]["text"] for e in streamed[:-1]) == full[: full.find(stop)]


def test_models_and_health(tiny_mha):
    with running_server(tiny_mha, max_slots=2, queue_size=3) as (client, _):
        status, models, _ = client.request("GET", "/v1/models")
        assert status == 200 and models["data"][0]["id"] == tiny_mha.name
        h = client.health()
        assert h["status"] == "ok" and h["slots"] == 2 and h["queue_size"] == 3 and h["model"] == tiny_mha.name
        status, body, _ = client.complete(prompt=PROMPTS[1], max_tokens=5, temperature=0.8, top_p=0.9)
        assert status == 200 and 1 <= body["usage"]["completion_tokens"] <= 5
