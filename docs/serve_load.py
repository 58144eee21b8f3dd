"""Load on the completions server: MHA, GQA and MQA of one model at the same K/V memory budget.

Per variant, a server (`python -m mlx_mqa.server`) is started on 127.0.0.1 (ephemeral port) and N clients send
streamed completions (bounded in count and time); then the same prompts run one by one through generate() in
this process (the sequential baseline). Reported: requests/s, generated tokens/s, time to first token and latency
(p50/p95/p99), slots and peak slots used; written as JSON, a markdown table and a PNG plot under --out.

Random weights of a real shape (default t5-base: 512-token prompts, 64 new tokens). Targets: at 8 clients the
server's tokens/s >= 3x sequential generate(); at a budget where MHA is memory-bound, MQA >= 1.5x MHA.

    python docs/serve_load.py --out /tmp/serve_load                       # t5-base, 8 clients, 256MiB
    python docs/serve_load.py --out /tmp/serve_load --clients 1,8,16 --memory-budget 1GB
    python docs/serve_load.py --out /tmp/serve_quick --quick              # t5-small shape, 1 layer, seconds
    python docs/serve_load.py --out /tmp/one --connect http://127.0.0.1:8080 --prompt-model DIR
"""

from __future__ import annotations

# isort: off
import mlx_mqa  # noqa: F401  (loads its BLAS before anything imports mlx.core)

# isort: on
import argparse
import http.client
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import numpy as np

from mlx_mqa.engine import engine_info

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "mlx_mqa" / "assets" / "data" / "cnn_dailymail.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Directory for results.json, results.md and results.png.")
    p.add_argument("--shape", default="t5-base", help="Random model shape (mlx_mqa/assets/t5-configs).")
    p.add_argument("--layers", type=int, default=None, help="Encoder and decoder layers (default: the shape's).")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--kv-heads", default=None, help="K/V heads per variant, e.g. 12,3,1 (default: H, H/4, 1).")
    p.add_argument("--clients", default="8", help="Concurrent clients, one run per value: e.g. 1,8,16.")
    p.add_argument("--requests", type=int, default=48, help="Requests per run (bounded).")
    p.add_argument("--time-limit", type=float, default=300.0, help="Seconds per run at most.")
    p.add_argument("--input-tokens", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--memory-budget", default="256MiB", help="Server K/V budget, the same for every variant.")
    p.add_argument("--max-slots", type=int, default=64)
    p.add_argument("--sequential", type=int, default=8, help="Prompts run one by one through generate().")
    p.add_argument("--cache", default=None, help="Where random checkpoints are kept (default: mlx_mqa's cache).")
    p.add_argument("--connect", default=None, help="Measure a running server at this URL instead (no variants).")
    p.add_argument("--prompt-model", default=None, help="With --connect: a model directory for its tokenizer.")
    p.add_argument("--quick", action="store_true", help="Check the script: t5-small shape, 1 layer, few requests.")
    a = p.parse_args(argv)
    if a.quick:
        a.shape, a.layers, a.input_tokens, a.max_tokens = "t5-small", 1, 64, 8
        # 1 MiB holds 2 MHA slots of this shape and 25 MQA ones: 3 clients make MHA wait for a slot.
        a.requests, a.sequential, a.time_limit, a.memory_budget = 6, 2, 120.0, "1MiB"
        a.clients = "3"
    a.client_counts = [int(c) for c in str(a.clients).split(",")]
    return a


# --- models and prompts -------------------------------------------------------------------------------------
def prepare_variants(a) -> List[dict]:
    """The multi-head random checkpoint and its conversions, one directory per K/V head count (kept in the cache)."""
    from mlx_mqa.bench.variants import prepare_source
    from mlx_mqa.conversion import convert

    src = prepare_source(f"random:{a.shape}", cache_dir=a.cache, layers=a.layers)
    H = src.num_heads
    if a.kv_heads:
        counts = [int(g) for g in a.kv_heads.split(",")]
    else:
        counts = [H, next(g for g in range(max(1, H // 4), 0, -1) if H % g == 0), 1]
    variants = []
    for G in counts:
        label = "MHA" if G == H else "MQA" if G == 1 else f"GQA-{G}"
        out = src.path.parent / f"{src.path.name}-serve-kv{G}-{a.dtype}"
        if not (out / "config.json").exists():
            convert(str(src.path), str(out), kv_heads=G, dtype=a.dtype, overwrite=out.exists())
        variants.append({"label": label, "kv_heads": G, "path": str(out)})
    return variants


def make_prompts(tokenizer, n: int, tokens: int) -> List[str]:
    """`n` distinct prompts of about `tokens` tokens (at most), from the bundled news articles."""
    docs = [json.loads(line)["document"] for line in DATA.read_text().splitlines() if line.strip()]
    text = " ".join(docs)
    words = text.split()
    prompts, start = [], 0
    for i in range(n):
        ids = tokenizer("summarize: " + " ".join(words[start : start + 4 * tokens]))["input_ids"][: tokens - 1]
        prompt = tokenizer.decode(ids, skip_special_tokens=True)
        while len(tokenizer(prompt)["input_ids"]) > tokens:  # re-tokenizing may add a token or two
            prompt = prompt[: int(len(prompt) * 0.98)]
        prompts.append(prompt)
        start = (start + 97 * (i + 1)) % max(1, len(words) - 4 * tokens)
    return prompts


# --- the server ------------------------------------------------------------------------------------------------
class Server:
    """`python -m mlx_mqa.server` in a subprocess on 127.0.0.1:0, stopped with SIGTERM."""

    def __init__(self, path: str, a, clients: int):
        cmd = [sys.executable, "-m", "mlx_mqa.server", "--model", path, "--port", "0", "--log-level", "WARNING"]
        cmd += ["--memory-budget", a.memory_budget, "--max-slots", str(a.max_slots), "--queue-size", str(clients)]
        cmd += ["--max-input-tokens", str(a.input_tokens), "--max-tokens-limit", str(a.max_tokens)]
        cmd += ["--drain-seconds", "0"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "http://" not in line:
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split()[3]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(60)


def get_json(url: str, path: str) -> dict:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def one_request(url: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    """A streamed completion: start, first token and end times, tokens generated, HTTP status."""
    u = urlparse(url)
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    rec = {"start": t0, "first": None, "end": None, "tokens": 0, "status": None}
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        rec["status"] = resp.status
        if resp.status != 200:
            resp.read()
            return rec
        while True:
            line = resp.readline()
            if not line or line.strip() == b"data: [DONE]":
                break
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if rec["first"] is None and event.get("choices"):
                rec["first"] = time.monotonic()
            if "usage" in event:
                rec["tokens"] = event["usage"]["completion_tokens"]
        rec["end"] = time.monotonic()
    except OSError as e:
        rec["error"] = str(e)
    finally:
        conn.close()
    return rec


def run_load(url: str, prompts: List[str], clients: int, requests: int, max_tokens: int, limit: float) -> dict:
    """`clients` threads, each sending one request at a time, until `requests` are sent or `limit` s pass."""
    counter, records, lock = itertools.count(), [], threading.Lock()
    deadline = time.monotonic() + limit

    def client():
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= requests:
                return
            rec = one_request(url, prompts[i % len(prompts)], max_tokens, timeout=limit)
            with lock:
                records.append(rec)
            if rec["status"] == 503:
                time.sleep(1.0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 60)
    return summarize(records)


def pct(values, q) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def summarize(records: List[dict]) -> dict:
    ok = [r for r in records if r["status"] == 200 and r["end"] is not None]
    wall = (max(r["end"] for r in ok) - min(r["start"] for r in ok)) if ok else 0.0
    ttft = [r["first"] - r["start"] for r in ok if r["first"] is not None]
    latency = [r["end"] - r["start"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    out = {"requests_ok": len(ok), "requests_failed": len(records) - len(ok), "wall_s": wall, "tokens": tokens}
    out["requests_per_s"] = len(ok) / wall if wall else None
    out["tokens_per_s"] = tokens / wall if wall else None
    for name, vals in (("ttft", ttft), ("latency", latency)):
        for q in (50, 95, 99):
            out[f"{name}_p{q}_s"] = pct(vals, q)
    return out


# --- the sequential baseline ---------------------------------------------------------------------------------------
def sequential_generate(path: str, prompts: List[str], max_tokens: int) -> dict:
    """generate() of one prompt at a time, in this process (after one warm-up call)."""
    model, tok = mlx_mqa.load(path)
    mlx_mqa.generate(model, tok, prompts[0], max_new_tokens=max_tokens)
    t0, tokens = time.monotonic(), 0
    for p in prompts:
        r = mlx_mqa.generate(model, tok, [p], max_new_tokens=max_tokens, return_result=True)
        tokens += len(r.tokens[0])
    wall = time.monotonic() - t0
    return {"requests": len(prompts), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


# --- one variant, the report -----------------------------------------------------------------------------------
def measure_variant(v: dict, a, prompts: List[str]) -> List[dict]:
    rows = []
    for clients in a.client_counts:
        server = Server(v["path"], a, clients)
        try:
            # Warm-up: the compiled step is traced per batch size and padded input length.
            run_load(server.url, prompts, clients, clients, a.max_tokens, a.time_limit)
            load = run_load(server.url, prompts, clients, a.requests, a.max_tokens, a.time_limit)
            health = get_json(server.url, "/health")
        finally:
            server.stop()
        rows.append({**v, "clients": clients, "slots": health["slots"], "peak_slots_used": health["peak_slots_used"]})
        rows[-1].update(load)
    seq = sequential_generate(v["path"], prompts[: a.sequential], a.max_tokens)
    for r in rows:
        r["sequential"] = seq
        r["speedup_vs_sequential"] = r["tokens_per_s"] / seq["tokens_per_s"] if r["tokens_per_s"] else None
    return rows


def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rows: List[dict], a) -> str:
    head = (
        f"Server load: {a.shape} random weights, {a.input_tokens}-token prompts, {a.max_tokens} new tokens, "
        f"K/V budget {a.memory_budget}, dtype {a.dtype}\n\n"
        "| variant | G | clients | slots | peak used | req/s | gen tok/s | seq tok/s | x seq | TTFT p50/p95/p99 s "
        "| latency p50/p95/p99 s | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        ttft = "/".join(fmt(r[f"ttft_p{q}_s"]) for q in (50, 95, 99))
        lat = "/".join(fmt(r[f"latency_p{q}_s"]) for q in (50, 95, 99))
        lines.append(
            f"| {r['label']} | {r['kv_heads']} | {r['clients']} | {r['slots']} | {r['peak_slots_used']} | "
            f"{fmt(r['requests_per_s'])} | {fmt(r['tokens_per_s'], 1)} | {fmt(r['sequential']['tokens_per_s'], 1)} | "
            f"{fmt(r['speedup_vs_sequential'])} | {ttft} | {lat} | {r['requests_failed']} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r['label']}\n{r['clients']} cl." for r in rows]
    x = np.arange(len(rows))
    left.bar(x - 0.2, [r["tokens_per_s"] or 0 for r in rows], 0.4, label="server")
    left.bar(x + 0.2, [r["sequential"]["tokens_per_s"] for r in rows], 0.4, label="sequential generate()")
    left.set_xticks(x, names)
    left.set_ylabel("generated tokens/s")
    left.legend()
    for q, off in ((50, -0.2), (95, 0.2)):
        right.bar(x + off, [r[f"latency_p{q}_s"] or 0 for r in rows], 0.4, label=f"latency p{q}")
    right.plot(x, [r["ttft_p50_s"] or 0 for r in rows], "k^", label="TTFT p50")
    right.set_xticks(x, names)
    right.set_ylabel("seconds")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.connect:
        if not a.prompt_model:
            raise SystemExit("--connect needs --prompt-model DIR (for its tokenizer)")
        variants, tok_path = [], a.prompt_model
    else:
        variants = prepare_variants(a)
        tok_path = variants[0]["path"]
    tokenizer = mlx_mqa.load_tokenizer(tok_path)
    prompts = make_prompts(tokenizer, max(a.requests, a.sequential, 1), a.input_tokens)
    rows = []
    if a.connect:
        for clients in a.client_counts:
            health = get_json(a.connect, "/health")
            load = run_load(a.connect, prompts, clients, a.requests, a.max_tokens, a.time_limit)
            rows.append({"label": health.get("model", "server"), "kv_heads": None, "clients": clients, **load})
        (out / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
        return
    for v in variants:
        print(f"measuring {v['label']} ({v['path']})", file=sys.stderr)
        rows += measure_variant(v, a, prompts)
    info = {"args": vars(a), "engine": engine_info(), "rows": rows}
    (out / "results.json").write_text(json.dumps(info, indent=2))
    (out / "results.md").write_text(markdown(rows, a))
    plot(rows, out / "results.png")
    print(markdown(rows, a))


if __name__ == "__main__":
    main()
