"""The OpenAI completions format: request checking and response bodies (as mlx-lm's server writes them)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional

FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options", "n", "user"}
MAX_PROMPTS = 16
MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 64


class RequestError(Exception):
    """A bad request: answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", headers=None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


@dataclass
class CompletionRequest:
    prompts: List[str]
    max_tokens: int
    temperature: float
    top_p: float
    stop: List[str]
    stream: bool
    model: Optional[str]
    include_usage: bool = False


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise RequestError(f"'{name}' must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _strings(body: dict, name: str, most: int, allow_str: bool = True) -> List[str]:
    v = body.get(name)
    if v is None:
        return []
    items = [v] if allow_str and isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError(f"'{name}' must be a string or a list of strings")
    if len(items) > most:
        raise RequestError(f"'{name}' holds {len(items)} entries; at most {most}")
    return items


def parse_completion(raw: bytes, max_tokens_limit: int) -> CompletionRequest:
    """The body of POST /v1/completions, checked field by field."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}; supported: {', '.join(sorted(FIELDS))}")
    if "prompt" not in body:
        raise RequestError("'prompt' is required")
    prompts = _strings(body, "prompt", MAX_PROMPTS)
    if not prompts or not all(p.strip() for p in prompts):
        raise RequestError("'prompt' is empty; T5 needs at least one input token")
    max_tokens = body.get("max_tokens", min(DEFAULT_MAX_TOKENS, max_tokens_limit))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(f"'max_tokens' must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise RequestError("only 'n': 1 is supported (send a list of prompts for several completions)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("'stream_options' takes only {'include_usage': true|false}")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError("'stream_options.include_usage' must be true or false")
    stop = _strings(body, "stop", MAX_STOPS)
    if any(not s for s in stop):
        raise RequestError("'stop' strings must not be empty")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError("'user' must be a string")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    return CompletionRequest(prompts, max_tokens, temperature, top_p, stop, stream, model, include_usage)


def new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(cid: str, model: str, choices: List[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def choice(index: int, text: str, finish_reason: Optional[str]) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


def chunk_body(cid: str, model: str, index: Optional[int], text: str, finish_reason: Optional[str]) -> dict:
    """One event of a stream; index None: the usage event (no choices), as OpenAI's `include_usage`."""
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if index is None else [choice(index, text, finish_reason)],
    }


class TextStream:
    """A row's tokens to text: the deltas safe to send (no half character, nothing that could begin a stop
    string) and the stop strings found."""

    def __init__(self, tokenizer, stop: List[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: List[int] = []
        self.sent = 0  # characters of the text already sent
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Append a token; return the new text that can be sent now."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for s in self.stop:
            at = self.text.find(s)
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        if self.stopped:
            return self.flush()
        if self.text.endswith("\ufffd"):
            return ""
        hold = max((len(s) - 1 for s in self.stop), default=0)
        upto = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : upto], upto
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
