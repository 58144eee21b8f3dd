"""One timed run of T5 decoding, MLX or PyTorch, its settings, and what a decode step holds and reads.

A run encodes a batch of random ids (encoder and cross-attention K/V, evaluated), then decodes exactly
`output_len` greedy steps (EOS ignored, as `mlx_lm.benchmark` does), reading every token back to the host.

The memory-traffic model predicts the decode speedup of G heads over multi-head: at small batch a step is bound
by the bytes it reads, the decoder weights (blocks, final norm, output head) plus the K/V cache (self-attention
at its mean length over the decode, or a fixed-capacity buffer whole, and the cross-attention K/V of the input).
The sweep over variants and settings: `sweep`.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..decoding.sample_utils import greedy
from ..decoding.state import DecodeState

# The MLX decode steps a run can time: DecodeState's default ("auto": compiled, or eager where the C attention
# kernel reads the cross K/V), the compiled one (fixed-capacity cache) or the eager one (model.decode + KVCache).
DECODE_PATHS = {"auto": None, "compiled": True, "eager": False}


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":")), None)
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if platform.system() == "Darwin" else r * 1024)


def current_rss() -> int:
    rss = _proc_status("VmRSS")
    return rss if rss is not None else peak_rss()


def kv_cache_bytes(
    num_layers: int, kv_heads: int, d_kv: int, batch_size: int, input_len: int, output_len: int, itemsize: int
) -> Dict[str, int]:
    """Analytic K/V bytes after decoding `output_len` tokens: self-attention cache and cross-attention K/V."""
    per_token = 2 * num_layers * batch_size * kv_heads * d_kv * itemsize  # keys + values
    return {
        "self": per_token * output_len,
        "cross": per_token * input_len,
        "total": per_token * (output_len + input_len),
    }


def traffic_per_step(
    decoder_weight_bytes, num_layers, kv_heads, d_kv, batch_size, input_len, output_len, itemsize, self_kv="mean"
) -> Dict[str, float]:
    """Bytes one decoder step reads, averaged over the decode: decoder weights + self K/V (self_kv 'mean': up to
    the current position, (output_len+1)/2 tokens on average; 'full': a fixed-capacity cache whole) + cross K/V."""
    per_token = kv_cache_bytes(num_layers, kv_heads, d_kv, batch_size, 1, 0, itemsize)["cross"]
    kv_self = per_token * ((output_len + 1) / 2.0 if self_kv == "mean" else float(output_len))
    kv_cross, weights = float(per_token * input_len), float(decoder_weight_bytes)
    return {"weights": weights, "kv_self": kv_self, "kv_cross": kv_cross, "total": weights + kv_self + kv_cross}


def mlx_weight_bytes(model) -> Dict[str, int]:
    """Bytes of all parameters, and of what a decoder step reads (decoder stack + output head)."""
    from mlx.utils import tree_flatten

    total = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    dec = sum(v.nbytes for _, v in tree_flatten(model.decoder.parameters()))
    head_module = model.shared if model.args.tie_word_embeddings else model.lm_head
    head = sum(v.nbytes for _, v in tree_flatten(head_module.parameters()))
    return {"total": int(total), "decoder_step": int(dec + head)}


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
    compiled: Optional[bool] = None  # MLX: whether the compiled step ran (its static self cache is read in full)

    @property
    def total_s(self) -> float:
        return self.encoder_s + self.decode_s

    @property
    def decode_step(self) -> str:
        """The MLX step that ran: 'compiled' or 'eager'; '' for PyTorch."""
        return {None: "", True: "compiled", False: "eager"}[self.compiled]


def _prefilled_arrays(state: DecodeState) -> list:
    """What exists once the encoder has run: cross-attention K/V, preallocated self caches, the mask."""
    arrays = [a for c in state.cross for a in (c.keys, c.values)]
    arrays += [a for c in state.cache for a in (c.keys, c.values) if a is not None]  # eager caches fill lazily
    return arrays + ([state.attention_mask] if state.attention_mask is not None else [])


def mlx_run(
    model, input_ids: np.ndarray, output_len: int, weight_bytes: int = 0, path: str = "auto", keep_tokens: bool = False
) -> RunSample:
    """Encode + `output_len` greedy steps of one MLX model through `DecodeState.logits` (`DECODE_PATHS`): the loop
    of `generate_step` with EOS ignored, written out so that the encoder is evaluated and timed on its own."""
    if path not in DECODE_PATHS:
        raise ValueError(f"unknown MLX decode path {path!r}; choose from {list(DECODE_PATHS)}")
    B = input_ids.shape[0]
    ids = mx.array(input_ids)
    mx.eval(ids)
    base = mx.get_active_memory()
    mx.reset_peak_memory()

    t0 = time.perf_counter()
    state = DecodeState(model, ids, None, output_len, compiled=DECODE_PATHS[path])
    mx.eval(_prefilled_arrays(state))
    t1 = time.perf_counter()

    def step(y):
        return greedy(state.logits(y).astype(mx.float32)).astype(mx.int32)  # as generate_step's plain greedy

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
    kv = [int(sum(c.nbytes() for c in caches)) for caches in (state.cache, state.cross)]
    tokens = [list(r) for r in zip(*tokens)] if keep_tokens else None
    peaks = (int(weight_bytes + max(peak - base, 0)), int(peak))
    return RunSample(t1 - t0, t2 - t1, output_len, B, *peaks, *kv, tokens, state.compiled)


def torch_run(
    model, input_ids: np.ndarray, output_len: int, device: str = "cpu", weight_bytes: int = 0, keep_tokens: bool = False
) -> RunSample:
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
            out = model(encoder_outputs=(enc,), decoder_input_ids=y, use_cache=True, **{_cache_kw(type(model)): cache})
            logits = out.logits[:, -1, :].float()
            y = logits.argmax(-1, keepdim=True)
            tokens.append(y[:, 0].tolist())
        synchronize(device)
        t2 = time.perf_counter()
    kv_self, kv_cross = cache_nbytes(cache)
    if device in ("cuda", "mps"):
        peak = peak_process = int(
            torch.cuda.max_memory_allocated() if device == "cuda" else torch.mps.driver_allocated_memory()
        )
    else:
        peak_process = peak_rss()
        peak = int(weight_bytes + max(peak_process - base_rss, 0))
    tokens = [list(r) for r in zip(*tokens)] if keep_tokens else None
    return RunSample(t1 - t0, t2 - t1, output_len, B, peak, peak_process, kv_self, kv_cross, tokens)


@lru_cache(maxsize=None)
def _cache_kw(cls) -> str:
    """The forward's cache argument: transformers 5 renamed `past_key_values` to `cache`."""
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
