"""The speed sweep: every variant over a grid of settings in interleaved rounds (the order rotates every round,
so a shared machine's drift hits all alike); medians with min and max, and speedups over multi-head, measured
and predicted by the memory-traffic model. One timed run: `speed`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .speed import RunSample, Setting, kv_cache_bytes, random_inputs, traffic_per_step


@dataclass
class SpeedVariant:
    """A model to time. `run(input_ids, output_len)` returns a RunSample."""

    name: str
    backend: str  # "mlx" | "torch"
    kv_heads: int
    num_heads: int
    num_decoder_layers: int
    d_kv: int
    itemsize: int
    weight_bytes: int
    decoder_step_bytes: int
    run: Callable[[np.ndarray, int], RunSample]
    quantize_bits: Optional[int] = None
    decode_path: str = "auto"
    device: str = "cpu"
    memory_method: str = ""
    pool: str = "mean"  # how the K/V heads were made (the PyTorch reference: group means)
    grouping: str = "contiguous"


def _stats(values: Sequence[float]) -> Dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def summarize_runs(v: SpeedVariant, s: Setting, runs: List[RunSample]) -> dict:
    """One result row of results.json's "speed" (speed.csv flattens it: `results.speed_row`)."""
    shape = (v.num_decoder_layers, v.kv_heads, v.d_kv, s.batch_size, s.input_len, s.output_len, v.itemsize)
    # A compiled step reads its fixed-capacity self cache in full; others up to the current position.
    traffic = traffic_per_step(v.decoder_step_bytes, *shape, "full" if runs[-1].compiled else "mean")
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    procs = [r.peak_process_bytes for r in runs if r.peak_process_bytes is not None]
    last = runs[-1]
    return dict(
        variant=v.name,
        **{k: getattr(v, k) for k in "backend kv_heads num_heads quantize_bits decode_path device".split()},
        **{k: getattr(s, k) for k in ("batch_size", "input_len", "output_len")},
        repeats=len(runs),
        encoder_s=_stats([r.encoder_s for r in runs]),
        decode_step_s=_stats([r.decode_s / r.steps for r in runs]),
        time_per_sample_s=_stats([r.total_s / r.batch_size for r in runs]),
        tokens_per_s=_stats([r.batch_size * r.steps / r.decode_s for r in runs]),
        peak_memory_bytes=int(max(peaks)) if peaks else 0,
        peak_memory_process_bytes=int(max(procs)) if procs else None,
        memory_method=v.memory_method,
        kv_self_bytes=last.kv_self_bytes,
        kv_cross_bytes=last.kv_cross_bytes,
        kv_cache_bytes=last.kv_self_bytes + last.kv_cross_bytes,
        kv_cache_bytes_formula=kv_cache_bytes(*shape)["total"],
        weight_bytes=v.weight_bytes,
        traffic_bytes_per_step=traffic,
        predicted_decode_speedup=None,
        measured_decode_speedup=None,
        measured_sample_speedup=None,
        baseline=None,
        pool=v.pool,
        grouping=v.grouping,
        decode_step=last.decode_step,  # MLX: the step that ran, compiled or eager ("auto" picks per run)
    )


def add_speedups(results: List[dict]) -> None:
    """Speedup of every variant over the multi-head variant of the same backend, quantization and setting."""
    key = lambda r: tuple(r[k] for k in "backend quantize_bits decode_path batch_size input_len output_len".split())  # noqa: E731
    base = {key(r): r for r in results if r["kv_heads"] == r["num_heads"]}
    for r in results:
        b = base.get(key(r))
        if b is not None:
            r["baseline"] = b["variant"]
            r["predicted_decode_speedup"] = b["traffic_bytes_per_step"]["total"] / r["traffic_bytes_per_step"]["total"]
            r["measured_decode_speedup"] = b["decode_step_s"]["median"] / r["decode_step_s"]["median"]
            r["measured_sample_speedup"] = b["time_per_sample_s"]["median"] / r["time_per_sample_s"]["median"]


def sweep(
    variants: Sequence[SpeedVariant],
    settings: Iterable[Setting],
    vocab: int,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    eos_token_id: int = 1,
    progress: Optional[Callable[[str], None]] = None,
    on_setting: Optional[Callable[[List[dict]], None]] = None,
) -> List[dict]:
    """Per setting, warm-up then `repeats` rounds over all variants; `on_setting(results so far)` after each."""
    results: List[dict] = []
    for s in settings:
        ids = random_inputs(s, vocab, seed, eos_token_id)
        for _ in range(warmup):
            for v in variants:
                v.run(ids, s.output_len)
                if progress:
                    progress(f"warm-up {v.name} {s.label}")
        runs: Dict[str, List[RunSample]] = {v.name: [] for v in variants}
        for r in range(repeats):
            k = r % len(variants)
            for v in list(variants[k:]) + list(variants[:k]):  # rotate the order every round
                runs[v.name].append(v.run(ids, s.output_len))
                if progress:
                    progress(f"{v.name} {s.label} #{r + 1}")
        results.extend(summarize_runs(v, s, runs[v.name]) for v in variants)
        add_speedups(results)
        if on_setting:
            on_setting(list(results))
    return results


def mlx_vs_torch(results: Sequence[dict]) -> List[dict]:
    """Per setting: MLX multi-head (float, first decode path) vs PyTorch multi-head time per sample."""
    setting = lambda r: (r["batch_size"], r["input_len"], r["output_len"])  # noqa: E731
    mha = [r for r in results if r["kv_heads"] == r["num_heads"]]
    torch_rows = {setting(r): r for r in mha if r["backend"] == "torch"}
    out = {}
    for r in mha:
        k = setting(r)
        if r["backend"] == "mlx" and not r["quantize_bits"] and k in torch_rows and k not in out:
            t = torch_rows[k]
            row = dict(batch_size=k[0], input_len=k[1], output_len=k[2], mlx_variant=r["variant"])
            row.update(torch_variant=t["variant"], mlx_time_per_sample_s=r["time_per_sample_s"]["median"])
            row["torch_time_per_sample_s"] = t["time_per_sample_s"]["median"]
            row["torch_over_mlx"] = row["torch_time_per_sample_s"] / row["mlx_time_per_sample_s"]
            for key in ("decode_step_s", "encoder_s"):
                row.update({f"mlx_{key}": r[key]["median"], f"torch_{key}": t[key]["median"]})
            out[k] = row
    return list(out.values())
