"""The speed sweep: every variant timed over a grid of settings, then summarized and compared.

A sweep runs a warm-up and then `repeats` rounds over all variants, interleaved (the order rotates every
round), so drift of a shared machine hits every variant alike; medians are reported with min and max, with
the measured and predicted (memory-traffic model) decode speedup over the multi-head variant. The timed runs
themselves: `mlx_mqa.bench.speed`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .memory import kv_cache_bytes, traffic_per_step
from .speed import RunSample, Setting, random_inputs


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

    @property
    def is_mha(self) -> bool:
        return self.kv_heads == self.num_heads


def _stats(values: Sequence[float]) -> Dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


@dataclass
class SpeedResult:
    variant: str
    backend: str
    kv_heads: int
    num_heads: int
    quantize_bits: Optional[int]
    decode_path: str
    device: str
    batch_size: int
    input_len: int
    output_len: int
    repeats: int
    encoder_s: Dict[str, float]
    decode_step_s: Dict[str, float]
    time_per_sample_s: Dict[str, float]
    tokens_per_s: Dict[str, float]
    peak_memory_bytes: int
    peak_memory_process_bytes: Optional[int]
    memory_method: str
    kv_self_bytes: int
    kv_cross_bytes: int
    kv_cache_bytes: int
    kv_cache_bytes_formula: int
    weight_bytes: int
    traffic_bytes_per_step: Dict[str, float]
    predicted_decode_speedup: Optional[float] = None
    measured_decode_speedup: Optional[float] = None
    measured_sample_speedup: Optional[float] = None
    baseline: Optional[str] = None
    pool: str = "mean"
    grouping: str = "contiguous"
    decode_step: str = ""  # MLX: the step that ran, compiled or eager ("auto" picks per run)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_runs(v: SpeedVariant, s: Setting, runs: List[RunSample]) -> SpeedResult:
    kv = kv_cache_bytes(v.num_decoder_layers, v.kv_heads, v.d_kv, s.batch_size, s.input_len, s.output_len, v.itemsize)
    traffic = traffic_per_step(
        v.decoder_step_bytes,
        v.num_decoder_layers,
        v.kv_heads,
        v.d_kv,
        s.batch_size,
        s.input_len,
        s.output_len,
        v.itemsize,
        # A compiled step reads its fixed-capacity self cache in full; others up to the current position.
        "full" if runs[-1].compiled else "mean",
    )
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    procs = [r.peak_process_bytes for r in runs if r.peak_process_bytes is not None]
    last = runs[-1]
    same = "backend kv_heads num_heads quantize_bits decode_path device memory_method weight_bytes pool grouping"
    return SpeedResult(
        variant=v.name,
        **{k: getattr(v, k) for k in same.split()},
        **{k: getattr(s, k) for k in ("batch_size", "input_len", "output_len")},
        repeats=len(runs),
        encoder_s=_stats([r.encoder_s for r in runs]),
        decode_step_s=_stats([r.decode_s / r.steps for r in runs]),
        time_per_sample_s=_stats([r.total_s / r.batch_size for r in runs]),
        tokens_per_s=_stats([r.batch_size * r.steps / r.decode_s for r in runs]),
        peak_memory_bytes=int(max(peaks)) if peaks else 0,
        peak_memory_process_bytes=int(max(procs)) if procs else None,
        kv_self_bytes=last.kv_self_bytes,
        kv_cross_bytes=last.kv_cross_bytes,
        kv_cache_bytes=last.kv_self_bytes + last.kv_cross_bytes,
        kv_cache_bytes_formula=kv["total"],
        traffic_bytes_per_step=traffic,
        decode_step=last.decode_step,
    )


def add_speedups(results: List[SpeedResult]) -> None:
    """Speedup of every variant over the multi-head variant of the same backend, quantization and setting."""
    key = lambda r: (r.backend, r.quantize_bits, r.decode_path, r.batch_size, r.input_len, r.output_len)  # noqa: E731
    base = {key(r): r for r in results if r.kv_heads == r.num_heads}
    for r in results:
        b = base.get(key(r))
        if b is None:
            continue
        r.baseline = b.variant
        r.predicted_decode_speedup = b.traffic_bytes_per_step["total"] / r.traffic_bytes_per_step["total"]
        r.measured_decode_speedup = b.decode_step_s["median"] / r.decode_step_s["median"]
        r.measured_sample_speedup = b.time_per_sample_s["median"] / r.time_per_sample_s["median"]


def sweep(
    variants: Sequence[SpeedVariant],
    settings: Iterable[Setting],
    vocab: int,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    eos_token_id: int = 1,
    progress: Optional[Callable[[str], None]] = None,
    on_setting: Optional[Callable[[List[SpeedResult]], None]] = None,
) -> List[SpeedResult]:
    """Warm-up then `repeats` interleaved rounds over all variants, per setting.

    `on_setting(results_so_far)` runs after each setting, so a long sweep can save what it has.
    """
    settings = list(settings)
    results: List[SpeedResult] = []
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


def mlx_vs_torch(results: Sequence[SpeedResult]) -> List[dict]:
    """Per setting: MLX multi-head (float, first decode path) vs PyTorch multi-head time per sample."""
    out = []
    torch_rows = {
        (r.batch_size, r.input_len, r.output_len): r
        for r in results
        if r.backend == "torch" and r.kv_heads == r.num_heads
    }
    seen = set()
    for r in results:
        k = (r.batch_size, r.input_len, r.output_len)
        if r.backend != "mlx" or r.kv_heads != r.num_heads or r.quantize_bits or k not in torch_rows or k in seen:
            continue
        seen.add(k)
        t = torch_rows[k]
        out.append(
            {
                "batch_size": k[0],
                "input_len": k[1],
                "output_len": k[2],
                "mlx_variant": r.variant,
                "torch_variant": t.variant,
                "mlx_time_per_sample_s": r.time_per_sample_s["median"],
                "torch_time_per_sample_s": t.time_per_sample_s["median"],
                "torch_over_mlx": t.time_per_sample_s["median"] / r.time_per_sample_s["median"],
                "mlx_decode_step_s": r.decode_step_s["median"],
                "torch_decode_step_s": t.decode_step_s["median"],
                "mlx_encoder_s": r.encoder_s["median"],
                "torch_encoder_s": t.encoder_s["median"],
            }
        )
    return out
