"""The PyTorch reference: transformers' T5ForConditionalGeneration on the best local device. A GQA/MQA variant's
reference is the multi-head model with each group's mean K/V head repeated H/G times: it computes what the
G-head model computes (same outputs and ROUGE) at the cost of multi-head attention."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..conversion.pooling import is_grouped, pool_heads
from ..decoding.inputs import cut_after_eos
from ..errors import ConfigError
from ..models.config import check_kv_heads
from ..models.dtypes import check_dtype

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(preference: str = "auto") -> str:
    """'auto': mps > cuda > cpu. An explicit device that is not available is an error."""
    import torch

    if preference not in DEVICES:
        raise ConfigError(f"unknown --torch-device {preference!r}; choose from {DEVICES}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    has_cuda = torch.cuda.is_available()
    if preference == "auto":
        return "mps" if has_mps else "cuda" if has_cuda else "cpu"
    if preference == "mps" and not has_mps:
        raise ConfigError("--torch-device mps: PyTorch's MPS backend is not available here")
    if preference == "cuda" and not has_cuda:
        raise ConfigError("--torch-device cuda: no CUDA device is available to PyTorch here")
    return preference


def torch_dtype(name: str):
    """The torch dtype of the same name as the MLX one (`mlx_mqa.models.dtypes.DTYPES` lists them)."""
    import torch

    check_dtype(name)
    return getattr(torch, name)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def group_mean_kv_(model, kv_heads: int, groups_in: str = "decoder") -> None:
    """In place: each group of H/G K/V heads becomes the group's mean head, repeated H/G times, by the conversion's
    own `is_grouped` and `pool_heads`, so the reference sees exactly the converted model's weights."""
    import torch

    H = model.config.num_heads
    check_kv_heads(kv_heads, H, "kv_heads")
    if kv_heads == H:
        return
    with torch.no_grad():
        for name, w in model.state_dict().items():
            if not is_grouped(name, groups_in):
                continue
            d_kv = w.shape[0] // H
            pooled = pool_heads(w.detach().to("cpu", torch.float32).numpy(), H, kv_heads, "mean")
            g = pooled.reshape(kv_heads, 1, d_kv, -1)
            full = np.broadcast_to(g, (kv_heads, H // kv_heads, d_kv, g.shape[-1])).reshape(w.shape)
            w.copy_(torch.from_numpy(np.ascontiguousarray(full)).to(w.dtype))


def load_reference(
    path, kv_heads: Optional[int] = None, dtype: str = "float32", device: str = "cpu", groups_in: str = "decoder"
):
    """transformers T5 from a Hugging Face checkpoint directory, K/V group-mean pooled for kv_heads < H."""
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor loading bar would interleave with ours
    model = T5ForConditionalGeneration.from_pretrained(str(path), dtype=torch_dtype(dtype)).eval()
    if kv_heads is not None:
        group_mean_kv_(model, kv_heads, groups_in)
    return model.to(device)


class References:
    """The PyTorch references by K/V head count (group-mean K/V), each loaded on first use."""

    def __init__(self, path, dtype: str, device: str):
        self.path, self.dtype, self.device, self.models = path, dtype, device, {}

    def get(self, kv_heads: int):
        if kv_heads not in self.models:
            self.models[kv_heads] = load_reference(self.path, kv_heads, self.dtype, self.device)
        return self.models[kv_heads]

    def drop(self, kv_heads: int) -> None:
        import gc

        self.models.pop(kv_heads, None)
        gc.collect()


def weight_bytes(model) -> dict:
    """Bytes of all parameters (shared ones once), and of what one decoder step reads."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    dec = sum(p.numel() * p.element_size() for n, p in model.decoder.named_parameters() if "embed_tokens" not in n)
    head = model.get_output_embeddings().weight
    return {"total": int(total), "decoder_step": int(dec + head.numel() * head.element_size())}


def make_cache(model):
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))


def prefill_cross(model, cache, encoder_out) -> None:
    """Put every decoder layer's cross-attention K/V into `cache` now, as MLX does after the encoder (else
    transformers projects them during the first decode step)."""
    B, L, _ = encoder_out.shape
    for i, block in enumerate(model.decoder.block):
        attn = block.layer[1].EncDecAttention
        d = attn.key_value_proj_dim
        k = attn.k(encoder_out).view(B, L, -1, d).transpose(1, 2)
        v = attn.v(encoder_out).view(B, L, -1, d).transpose(1, 2)
        cache.cross_attention_cache.update(k, v, i)
        cache.is_updated[i] = True


def cache_nbytes(cache) -> Tuple[int, int]:
    """(self-attention, cross-attention) K/V bytes held by a transformers EncoderDecoderCache."""

    def size(c) -> int:
        tensors = [t for x in c.layers for t in (getattr(x, "keys", None), getattr(x, "values", None))]
        return int(sum(t.numel() * t.element_size() for t in tensors if t is not None and hasattr(t, "numel")))

    return size(cache.self_attention_cache), size(cache.cross_attention_cache)


def generate(model, input_ids, attention_mask, max_new_tokens: int, device="cpu", num_beams=1, eos_token_id=1):
    """Greedy (or beam) generation with transformers; EOS honoured; ids per row without the start token."""
    import torch

    ids = torch.tensor(np.asarray(input_ids), dtype=torch.long, device=device)
    mask = np.ones(ids.shape) if attention_mask is None else np.asarray(attention_mask)
    # Plain search: none of the sampling, repetition or n-gram settings a generation_config.json might carry.
    plain = dict(min_new_tokens=0, do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            eos_token_id=eos_token_id,
            **plain,
        )
    return cut_after_eos(out[:, 1:].tolist(), eos_token_id)  # as mlx_mqa's generate returns them
