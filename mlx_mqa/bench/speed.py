"""Speed of T5 decoding with G key/value heads: MLX variants and the PyTorch reference, side by side.

One run = encode a batch of random token ids (the encoder plus the cross-attention K/V projections,
evaluated), then decode exactly `output_len` greedy steps (EOS ignored, as `mlx_lm.benchmark` does),
reading every token back to the host as a real generation loop does. A sweep runs a warm-up and then
`repeats` rounds over all variants, interleaved (the order rotates every round), so drift of a shared
machine hits every variant alike; medians are reported with min and max. Memory, K/V bytes and the
memory-traffic model that predicts the speedups: `mlx_mqa.bench.memory`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..decoding.sample_utils import greedy
from ..decoding.state import DecodeState
from .memory import current_rss, kv_cache_bytes, peak_rss, reset_peak_rss, traffic_per_step

# The MLX decode loops a speed run can time: the library's DecodeState, compiled or eager.
DECODE_PATHS = ("compiled", "eager")

# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    batch_size: int
    input_len: int
    output_len: int

    @property
    def label(self) -> str:
        return f"B={self.batch_size} {self.input_len}->{self.output_len}"


def parse_lengths(text: str) -> List[tuple]:
    """'512x64,2048x64' -> [(512, 64), (2048, 64)]."""
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            a, b = part.split("x")
            pair = (int(a), int(b))
        except ValueError:
            raise ValueError(f"length {part!r} is not INPUTxOUTPUT, e.g. 512x64") from None
        if pair[0] < 1 or pair[1] < 1:
            raise ValueError(f"length {part!r}: both lengths must be positive")
        out.append(pair)
    if not out:
        raise ValueError("no lengths given; e.g. --lengths 512x64,2048x64")
    return out


def parse_ints(text: str, what: str = "value") -> List[int]:
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{what}: {text!r} must list positive integers")
    return out


def settings_grid(batch_sizes: Sequence[int], lengths: Sequence[tuple]) -> List[Setting]:
    return [Setting(b, i, o) for (i, o) in lengths for b in batch_sizes]


def random_inputs(setting: Setting, vocab: int, seed: int = 0, eos_token_id: int = 1) -> np.ndarray:
    """[B, input_len] int32 ids in [3, vocab), each row ending with EOS as a tokenized text does."""
    rng = np.random.default_rng([seed, setting.batch_size, setting.input_len])
    ids = rng.integers(3, max(vocab, 4), size=(setting.batch_size, setting.input_len), dtype=np.int32)
    ids[:, -1] = eos_token_id
    return ids


# ----------------------------------------------------------------------------------------------- one run


@dataclass
class RunSample:
    encoder_s: float
    decode_s: float
    steps: int
    batch_size: int
    peak_bytes: Optional[int]  # this variant's weights + what the run added (see `memory_method`)
    peak_process_bytes: Optional[int]
    kv_self_bytes: int
    kv_cross_bytes: int
    tokens: Optional[List[List[int]]] = None

    @property
    def total_s(self) -> float:
        return self.encoder_s + self.decode_s


def _prefilled_arrays(state: DecodeState) -> list:
    """What exists once the encoder has run: cross-attention K/V, preallocated self caches, the mask."""
    arrays = [a for c in state.cross for a in (c.keys, c.values)]
    arrays += [a for c in state.cache for a in (c.keys, c.values) if a is not None]  # eager caches fill lazily
    return arrays + ([state.attention_mask] if state.attention_mask is not None else [])


def mlx_run(model, input_ids: np.ndarray, output_len: int, weight_bytes: int = 0, path: str = "eager",
            keep_tokens: bool = False) -> RunSample:
    """Encode + `output_len` greedy steps of one MLX model; tokens read back every step.

    The step is the library's `DecodeState.logits` ('compiled': fixed-capacity cache and compiled step;
    'eager': model.decode with a preallocated KVCache). The loop is `generate_step`'s with EOS ignored,
    written out here so the encoder is evaluated (and timed) apart from the first decode step.
    """
    if path not in DECODE_PATHS:
        raise ValueError(f"unknown MLX decode path {path!r}; choose from {list(DECODE_PATHS)}")
    B = input_ids.shape[0]
    ids = mx.array(input_ids)
    mx.eval(ids)
    base = mx.get_active_memory()
    mx.reset_peak_memory()

    t0 = time.perf_counter()
    state = DecodeState(model, ids, None, output_len, compiled=path == "compiled")
    mx.eval(_prefilled_arrays(state))
    t1 = time.perf_counter()

    def step(y):
        logits = state.logits(y).astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # as generate_step
        return greedy(logprobs).astype(mx.int32)

    y = step(mx.full((B,), model.args.decoder_start_token_id, dtype=mx.int32))
    mx.async_eval(y)
    tokens = []
    for n in range(output_len):
        if n + 1 < output_len:
            nxt = step(y)
            mx.async_eval(nxt)
        tokens.append(y.tolist())
        if n + 1 < output_len:
            y = nxt
    t2 = time.perf_counter()

    peak = mx.get_peak_memory()
    return RunSample(
        encoder_s=t1 - t0, decode_s=t2 - t1, steps=output_len, batch_size=B,
        peak_bytes=int(weight_bytes + max(peak - base, 0)), peak_process_bytes=int(peak),
        kv_self_bytes=int(sum(c.nbytes() for c in state.cache)),
        kv_cross_bytes=int(sum(c.nbytes() for c in state.cross)),
        tokens=[list(r) for r in zip(*tokens)] if keep_tokens else None)


def torch_run(model, input_ids: np.ndarray, output_len: int, device: str = "cpu", weight_bytes: int = 0,
              keep_tokens: bool = False) -> RunSample:
    """The same run on a transformers T5: encoder + cross K/V prefilled into its cache, then greedy steps."""
    import torch

    from .torch_reference import cache_nbytes, make_cache, prefill_cross, synchronize

    B = input_ids.shape[0]
    ids = torch.tensor(input_ids, dtype=torch.long, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_rss = current_rss()
    reset_peak_rss()
    synchronize(device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        enc = model.get_encoder()(input_ids=ids).last_hidden_state
        cache = make_cache(model)
        prefill_cross(model, cache, enc)
        synchronize(device)
        t1 = time.perf_counter()
        y = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
        tokens = []
        for _ in range(output_len):
            out = model(encoder_outputs=(enc,), decoder_input_ids=y, use_cache=True, **{_cache_kw(model): cache})
            logits = out.logits[:, -1, :].float()
            y = logits.log_softmax(-1).argmax(-1, keepdim=True)
            tokens.append(y[:, 0].tolist())
        synchronize(device)
        t2 = time.perf_counter()
    kv_self, kv_cross = cache_nbytes(cache)
    if device == "cuda":
        peak_process = int(torch.cuda.max_memory_allocated())
        peak = peak_process
    elif device == "mps":
        peak_process = int(torch.mps.driver_allocated_memory())
        peak = peak_process
    else:
        peak_process = peak_rss()
        peak = int(weight_bytes + max(peak_process - base_rss, 0))
    sample = RunSample(encoder_s=t1 - t0, decode_s=t2 - t1, steps=output_len, batch_size=B, peak_bytes=peak,
                       peak_process_bytes=peak_process, kv_self_bytes=kv_self, kv_cross_bytes=kv_cross,
                       tokens=[list(r) for r in zip(*tokens)] if keep_tokens else None)
    return sample


_CACHE_KW: Dict[type, str] = {}


def _cache_kw(model) -> str:
    """transformers 5 renamed the forward's `past_key_values` to `cache`."""
    cls = type(model)
    if cls not in _CACHE_KW:
        import inspect

        params = inspect.signature(cls.forward).parameters
        _CACHE_KW[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KW[cls]


# ----------------------------------------------------------------------------------------------- sweep


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
    self_kv: str = "mean"  # how the decode reads its self-attention cache (traffic model)
    decode_path: str = "eager"
    device: str = "cpu"
    memory_method: str = ""

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

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_runs(v: SpeedVariant, s: Setting, runs: List[RunSample]) -> SpeedResult:
    kv = kv_cache_bytes(v.num_decoder_layers, v.kv_heads, v.d_kv, s.batch_size, s.input_len, s.output_len,
                        v.itemsize)
    traffic = traffic_per_step(v.decoder_step_bytes, v.num_decoder_layers, v.kv_heads, v.d_kv, s.batch_size,
                               s.input_len, s.output_len, v.itemsize, v.self_kv)
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    procs = [r.peak_process_bytes for r in runs if r.peak_process_bytes is not None]
    last = runs[-1]
    return SpeedResult(
        variant=v.name, backend=v.backend, kv_heads=v.kv_heads, num_heads=v.num_heads, quantize_bits=v.quantize_bits,
        decode_path=v.decode_path, device=v.device, batch_size=s.batch_size, input_len=s.input_len,
        output_len=s.output_len, repeats=len(runs),
        encoder_s=_stats([r.encoder_s for r in runs]),
        decode_step_s=_stats([r.decode_s / r.steps for r in runs]),
        time_per_sample_s=_stats([r.total_s / r.batch_size for r in runs]),
        tokens_per_s=_stats([r.batch_size * r.steps / r.decode_s for r in runs]),
        peak_memory_bytes=int(max(peaks)) if peaks else 0,
        peak_memory_process_bytes=int(max(procs)) if procs else None, memory_method=v.memory_method,
        kv_self_bytes=last.kv_self_bytes, kv_cross_bytes=last.kv_cross_bytes,
        kv_cache_bytes=last.kv_self_bytes + last.kv_cross_bytes, kv_cache_bytes_formula=kv["total"],
        weight_bytes=v.weight_bytes, traffic_bytes_per_step=traffic)


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


def sweep(variants: Sequence[SpeedVariant], settings: Iterable[Setting], vocab: int, warmup: int = 1,
          repeats: int = 3, seed: int = 0, eos_token_id: int = 1,
          progress: Optional[Callable[[str], None]] = None,
          on_setting: Optional[Callable[[List[SpeedResult]], None]] = None) -> List[SpeedResult]:
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
    torch_rows = {(r.batch_size, r.input_len, r.output_len): r for r in results
                  if r.backend == "torch" and r.kv_heads == r.num_heads}
    seen = set()
    for r in results:
        k = (r.batch_size, r.input_len, r.output_len)
        if r.backend != "mlx" or r.kv_heads != r.num_heads or r.quantize_bits or k not in torch_rows or k in seen:
            continue
        seen.add(k)
        t = torch_rows[k]
        out.append({"batch_size": k[0], "input_len": k[1], "output_len": k[2], "mlx_variant": r.variant,
                    "torch_variant": t.variant, "mlx_time_per_sample_s": r.time_per_sample_s["median"],
                    "torch_time_per_sample_s": t.time_per_sample_s["median"],
                    "torch_over_mlx": t.time_per_sample_s["median"] / r.time_per_sample_s["median"],
                    "mlx_decode_step_s": r.decode_step_s["median"], "torch_decode_step_s": t.decode_step_s["median"],
                    "mlx_encoder_s": r.encoder_s["median"], "torch_encoder_s": t.encoder_s["median"]})
    return out

