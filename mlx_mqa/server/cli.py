"""`python -m mlx_mqa.server --model DIR`: an OpenAI-style completions server with continuous batching."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from ..cli import CONTEXT, fail
from ..errors import ConfigError, MlxMqaError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build(model_path, dtype, max_input_tokens, max_tokens_limit, memory_budget, max_slots, queue_size, api_key):
    """Load the model and start the generation thread: (App, Admission). Nothing is bound yet."""
    from ..checkpoint.load import load
    from ..cli import parse_size
    from .admission import plan_slots, self_cache_capacity
    from .app import App, ServerConfig
    from .batching import BatchGenerator

    if max_tokens_limit < 1 or queue_size < 0 or max_slots < 1:
        raise ConfigError("--max-tokens-limit and --max-slots must be at least 1, --queue-size at least 0")
    model, tokenizer = load(model_path, dtype)
    if max_input_tokens is None:
        max_input_tokens = model.args.max_input_tokens
    budget = parse_size(memory_budget) if memory_budget else None
    plan = plan_slots(model, max_input_tokens, max_tokens_limit, budget, max_slots)
    capacity = self_cache_capacity(max_tokens_limit)
    gen = BatchGenerator(model, tokenizer.eos_token_id, plan.slots, queue_size, capacity)
    name = Path(str(model_path)).name or str(model_path)
    return App(gen, tokenizer, ServerConfig(name, max_input_tokens, max_tokens_limit, api_key)), plan


def _shutdown(app, server, drain_s: float) -> None:
    """Stop accepting, end the rows (finished within `drain_s`, else cancelled), let the handler threads send
    their last events, then stop the server loop."""
    log = logging.getLogger("mlx_mqa.server")
    log.info("shutting down: draining for up to %.1f s", drain_s)
    app.generator.stop(drain_s)
    deadline = time.monotonic() + 5.0
    while app.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    server.shutdown()


@click.command(context_settings=CONTEXT)
@click.option("--model", required=True, help="Converted MLX directory, Hugging Face T5 directory or hub id.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (non-loopback needs --api-key).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: an ephemeral one, printed).")
@click.option("--memory-budget", default=None, help="K/V memory for the slots, e.g. 2GB, 512MiB (default: 1/4 of RAM).")
@click.option("--max-slots", type=int, default=64, show_default=True, help="Most rows decoded together.")
@click.option("--queue-size", type=int, default=64, show_default=True, help="Requests waiting for a slot; then 503.")
@click.option("--max-input-tokens", type=int, default=None, help="Longest prompt (default: n_positions, else 512).")
@click.option("--max-tokens-limit", type=int, default=512, show_default=True, help="Largest max_tokens accepted.")
@click.option("--api-key", default=None, envvar="MLX_MQA_API_KEY", help="Require 'Authorization: Bearer KEY'.")
@click.option("--drain-seconds", type=float, default=10.0, show_default=True, help="On SIGTERM, time to finish.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None, help="Cast weights.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level of the server's stderr log.")
def main(
    model,
    host,
    port,
    memory_budget,
    max_slots,
    queue_size,
    max_input_tokens,
    max_tokens_limit,
    api_key,
    drain_seconds,
    dtype,
    log_level,
):
    """Serve a T5 (MHA, GQA or MQA) over HTTP: POST /v1/completions, GET /v1/models, GET /health.

    \b
    Example:
      python -m mlx_mqa.server --model t5-mqa --port 0 --memory-budget 2GB
    """
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        from .app import make_server

        if host not in LOOPBACK and not api_key:
            raise ConfigError(f"binding {host} (not loopback) needs --api-key")
        app, plan = build(
            model, dtype, max_input_tokens, max_tokens_limit, memory_budget, max_slots, queue_size, api_key
        )
        server = make_server(app, host, port)
    except MlxMqaError as e:
        fail(e)
    except OSError as e:
        fail(ConfigError(str(e)))
    bound_host, bound_port = server.server_address[:2]
    click.echo(plan.describe(), err=True)
    click.echo(f"mlx_mqa.server listening on http://{bound_host}:{bound_port} slots={plan.slots}")
    sys.stdout.flush()

    def on_signal(signum, frame):
        threading.Thread(target=_shutdown, args=(app, server, drain_seconds), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    logging.getLogger("mlx_mqa.server").info("stopped")
    sys.exit(0)
