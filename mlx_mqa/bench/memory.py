"""What a decode step holds and reads: process memory (RSS), K/V-cache bytes, parameter bytes, the traffic model.

The memory-traffic model predicts the decode speedup of G heads over multi-head: at small batch a
decoder step is bound by the bytes it reads, i.e. the decoder weights (blocks, final norm and the
output head) plus the K/V cache (self-attention at its mean length over the decode, or its whole
buffer for a fixed-capacity cache, and the cross-attention K/V of the whole input).
"""

from __future__ import annotations

import platform
import resource
from typing import Dict, Optional

# ----------------------------------------------------------------------------------------------- memory


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
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


# ----------------------------------------------------------------------------------------------- KV bytes / traffic


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
    decoder_weight_bytes: int,
    num_layers: int,
    kv_heads: int,
    d_kv: int,
    batch_size: int,
    input_len: int,
    output_len: int,
    itemsize: int,
    self_kv: str = "mean",
) -> Dict[str, float]:
    """Bytes one decoder step reads: decoder weights + self K/V + cross K/V (averaged over the decode).

    self_kv='mean': the self cache is read up to the current position (mean (output_len+1)/2 tokens);
    'full': a fixed-capacity cache is read whole every step.
    """
    per_token = kv_cache_bytes(num_layers, kv_heads, d_kv, batch_size, 1, 0, itemsize)["cross"]
    kv_self = per_token * ((output_len + 1) / 2.0 if self_kv == "mean" else float(output_len))
    kv_cross = per_token * input_len
    return {
        "weights": float(decoder_weight_bytes),
        "kv_self": kv_self,
        "kv_cross": float(kv_cross),
        "total": float(decoder_weight_bytes) + kv_self + kv_cross,
    }


def mlx_weight_bytes(model) -> Dict[str, int]:
    """Bytes of all parameters, and of what a decoder step reads (decoder stack + output head)."""
    from mlx.utils import tree_flatten

    total = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    dec = sum(v.nbytes for _, v in tree_flatten(model.decoder.parameters()))
    head_module = model.shared if model.args.tie_word_embeddings else model.lm_head
    head = sum(v.nbytes for _, v in tree_flatten(head_module.parameters()))
    return {"total": int(total), "decoder_step": int(dec + head)}
