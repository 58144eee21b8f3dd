"""T5 encoder-decoder in MLX with grouped key/value heads.

Module names mirror the Hugging Face checkpoint (``block.{i}.layer.{j}.SelfAttention.q`` ...),
so loading a converted checkpoint needs no key mapping.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .base import Mask, padding_mask, scaled_dot_product_attention
from .cache import CrossKV, KVCache, StaticKVCache
from .config import ModelArgs

# float16 clamp, as transformers does, so activations never become inf.
FP16_CLAMP = float(np.finfo(np.float16).max) - 1000.0


@lru_cache(maxsize=None)
def bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of every relative position in [-max_distance, max_distance] (index = rel + max_distance).

    Mirrors Mesh TensorFlow / transformers' float32 arithmetic; positions beyond
    +-max_distance fall in the same bucket as +-max_distance, so clipping is exact.
    """
    rel = np.arange(-max_distance, max_distance + 1, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(rel.astype(np.float32) / np.float32(max_exact))
        scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


def _clamp_fp16(x: mx.array) -> mx.array:
    return mx.clip(x, -FP16_CLAMP, FP16_CLAMP) if x.dtype == mx.float16 else x


class T5Attention(nn.Module):
    def __init__(self, args: ModelArgs, kv_heads: int, has_relative_attention_bias: bool, bidirectional: bool):
        super().__init__()
        self.n_heads = args.num_heads
        self.n_kv_heads = kv_heads
        self.d_kv = args.d_kv
        inner = args.num_heads * args.d_kv
        self.q = nn.Linear(args.d_model, inner, bias=False)
        self.k = nn.Linear(args.d_model, kv_heads * args.d_kv, bias=False)
        self.v = nn.Linear(args.d_model, kv_heads * args.d_kv, bias=False)
        self.o = nn.Linear(inner, args.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(args.relative_attention_num_buckets, args.num_heads)
            self._bidirectional = bidirectional
            self._num_buckets = args.relative_attention_num_buckets
            self._max_distance = args.relative_attention_max_distance

    def position_bias(self, query_length: int, key_length: int, offset=0, dtype=None) -> mx.array:
        """[1, H, Tq, Tk] bias for queries at offset..offset+Tq-1 over keys 0..Tk-1.

        `offset` may be an mx.array (compiled decoding), so nothing here depends on its value. The bias of
        query i and key j depends on j - i only: it is a strided view of one row of Tq + Tk - 1 values per
        head, not an [H, Tq, Tk] array (192 MiB for t5-base at 2048 tokens). `dtype` casts that row, so a cast
        does not materialise the view.
        """
        table = mx.array(bucket_table(self._bidirectional, self._num_buckets, self._max_distance))
        md = self._max_distance
        # Relative positions j - (i + offset) from -(Tq - 1) - offset to Tk - 1 - offset: value j - i + Tq - 1.
        rel = mx.arange(key_length + query_length - 1) - (query_length - 1) - offset
        row = mx.take(self.relative_attention_bias.weight.T, table[mx.clip(rel, -md, md) + md], axis=1)
        if dtype is not None:
            row = row.astype(dtype)
        n = row.shape[1]
        return mx.as_strided(row, (1, self.n_heads, query_length, key_length), (0, n, -1, 1), query_length - 1)

    def project_kv_heads(self, x: mx.array):
        """K and V as contiguous [B, G, L, D] (cross-attention K/V, read every step): each head's product is
        written in place, where a transposed [B, L, G, D] projection would be copied, holding both at once."""
        if not isinstance(self.k, nn.Linear):  # quantized: project, then lay out
            k, v = self.project_kv(x)
            return mx.contiguous(k), mx.contiguous(v)

        def heads(linear: nn.Linear) -> mx.array:
            return x[:, None] @ linear.weight.reshape(self.n_kv_heads, self.d_kv, -1).swapaxes(-1, -2)

        return heads(self.k), heads(self.v)

    def project_kv(self, x: mx.array):
        B, L, _ = x.shape
        k = self.k(x).reshape(B, L, self.n_kv_heads, self.d_kv).transpose(0, 2, 1, 3)
        v = self.v(x).reshape(B, L, self.n_kv_heads, self.d_kv).transpose(0, 2, 1, 3)
        return k, v

    def __call__(
        self, x: mx.array, mask: Mask, cache: Optional[KVCache] = None, cross: Optional[CrossKV] = None
    ) -> mx.array:
        B, L, _ = x.shape
        q = self.q(x).reshape(B, L, self.n_heads, self.d_kv).transpose(0, 2, 1, 3)
        if cross is not None:
            k, v = cross.keys, cross.values
            beams = B // k.shape[0]
            if beams > 1:
                # Beams of one input share its cross K/V: fold them into the query length instead of
                # copying K/V per beam (cross-attention has no position bias, so this is exact).
                Bk, H, D = k.shape[0], self.n_heads, self.d_kv
                q = q.reshape(Bk, beams, H, L, D).transpose(0, 2, 1, 3, 4).reshape(Bk, H, beams * L, D)
                out = scaled_dot_product_attention(q, k, v, mask)
                out = out.reshape(Bk, H, beams, L, D).transpose(0, 2, 1, 3, 4).reshape(B, H, L, D)
                return self.o(out.transpose(0, 2, 1, 3).reshape(B, L, -1))
        else:
            k, v = self.project_kv(x)
            if cache is not None:
                k, v = cache.update_and_fetch(k, v)
        out = scaled_dot_product_attention(q, k, v, mask)
        return self.o(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class T5DenseActDense(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.wi = nn.Linear(args.d_model, args.d_ff, bias=False)
        self.wo = nn.Linear(args.d_ff, args.d_model, bias=False)
        self.act = _activation(args.activation)

    def __call__(self, x):
        return _apply_wo(self.wo, self.act(self.wi(x)))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.wi_0 = nn.Linear(args.d_model, args.d_ff, bias=False)
        self.wi_1 = nn.Linear(args.d_model, args.d_ff, bias=False)
        self.wo = nn.Linear(args.d_ff, args.d_model, bias=False)
        self.act = _activation(args.activation)

    def __call__(self, x):
        return _apply_wo(self.wo, self.act(self.wi_0(x)) * self.wi_1(x))


def _apply_wo(wo: nn.Module, h: mx.array) -> mx.array:
    # `wo` may be kept in float32 for float16 models: its output is what overflows.
    wo_dtype = wo.scales.dtype if hasattr(wo, "scales") else wo.weight.dtype
    if wo_dtype != h.dtype:
        out = wo(h.astype(wo_dtype))
        if h.dtype == mx.float16:
            out = mx.clip(out, -FP16_CLAMP, FP16_CLAMP)
        return out.astype(h.dtype)
    return wo(h)


def _activation(name: str):
    acts = {
        "relu": nn.relu,
        "gelu_new": nn.gelu_approx,
        "gelu": nn.gelu,
        "silu": nn.silu,
        "gelu_pytorch_tanh": nn.gelu_approx,
    }
    if name not in acts:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(acts)}")
    return acts[name]


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction; mx.fast.rms_norm accumulates in float32."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.rms_norm(x, self.weight.astype(x.dtype), self.eps)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, args, kv_heads, has_bias, bidirectional):
        super().__init__()
        self.SelfAttention = T5Attention(args, kv_heads, has_bias, bidirectional)
        self.layer_norm = T5LayerNorm(args.d_model, args.layer_norm_epsilon)

    def __call__(self, x, mask, cache=None):
        return _clamp_fp16(x + self.SelfAttention(self.layer_norm(x), mask, cache=cache))


class T5LayerCrossAttention(nn.Module):
    def __init__(self, args, kv_heads):
        super().__init__()
        self.EncDecAttention = T5Attention(args, kv_heads, False, False)
        self.layer_norm = T5LayerNorm(args.d_model, args.layer_norm_epsilon)

    def __call__(self, x, mask, cross: CrossKV):
        return _clamp_fp16(x + self.EncDecAttention(self.layer_norm(x), mask, cross=cross))


class T5LayerFF(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(args) if args.is_gated else T5DenseActDense(args)
        self.layer_norm = T5LayerNorm(args.d_model, args.layer_norm_epsilon)

    def __call__(self, x):
        return _clamp_fp16(x + self.DenseReluDense(self.layer_norm(x)))


class EncoderBlock(nn.Module):
    def __init__(self, args: ModelArgs, has_bias: bool):
        super().__init__()
        self.layer = [T5LayerSelfAttention(args, args.encoder_num_key_value_heads, has_bias, True), T5LayerFF(args)]

    def __call__(self, x, mask):
        return self.layer[1](self.layer[0](x, mask))


class DecoderBlock(nn.Module):
    def __init__(self, args: ModelArgs, has_bias: bool):
        super().__init__()
        g = args.num_key_value_heads
        self.layer = [T5LayerSelfAttention(args, g, has_bias, False), T5LayerCrossAttention(args, g), T5LayerFF(args)]

    def __call__(self, x, self_mask, cross_mask, cross: CrossKV, cache: Optional[KVCache]):
        x = self.layer[0](x, self_mask, cache=cache)
        x = self.layer[1](x, cross_mask, cross)
        return self.layer[2](x)


class T5Stack(nn.Module):
    def __init__(self, args: ModelArgs, decoder: bool):
        super().__init__()
        n = args.num_decoder_layers if decoder else args.num_layers
        cls = DecoderBlock if decoder else EncoderBlock
        # Only block 0 owns the relative position bias; the others reuse it.
        self.block = [cls(args, has_bias=(i == 0)) for i in range(n)]
        self.final_layer_norm = T5LayerNorm(args.d_model, args.layer_norm_epsilon)

    @property
    def bias_owner(self) -> T5Attention:
        return self.block[0].layer[0].SelfAttention


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.shared = nn.Embedding(args.vocab_size, args.d_model)
        self.encoder = T5Stack(args, decoder=False)
        self.decoder = T5Stack(args, decoder=True)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)

    @property
    def dtype(self):
        return self.shared.weight.dtype if hasattr(self.shared, "weight") else mx.float32

    def encode(self, input_ids: mx.array, attention_mask: Optional[mx.array] = None) -> mx.array:
        for x in self.encode_layers(input_ids, attention_mask):
            pass
        return x

    def encode_layers(self, input_ids: mx.array, attention_mask: Optional[mx.array] = None) -> Iterator[mx.array]:
        """The encoder's hidden states after each block, the last one normed (the encoder output): for callers
        that evaluate a long input one layer at a time."""
        x = self.shared(input_ids)
        L = input_ids.shape[1]
        bias = self.encoder.bias_owner.position_bias(L, L, dtype=x.dtype)
        pad = padding_mask(attention_mask, x.dtype)
        mask = bias if pad is None else (bias, pad)  # kept apart: the engine decides whether to sum them
        for block in self.encoder.block[:-1]:
            x = block(x, mask)
            yield x
        yield self.encoder.final_layer_norm(self.encoder.block[-1](x, mask))

    def cross_kv(self, encoder_out: mx.array) -> List[CrossKV]:
        """Cross-attention K/V of every decoder layer, computed once per input."""
        return [CrossKV(*b.layer[1].EncDecAttention.project_kv_heads(encoder_out)) for b in self.decoder.block]

    def decode(
        self,
        decoder_input_ids: mx.array,
        cross: Sequence[CrossKV],
        encoder_attention_mask: Optional[mx.array] = None,
        cache: Optional[Sequence[KVCache]] = None,
        return_hidden: bool = False,
    ) -> mx.array:
        x = self.shared(decoder_input_ids)
        self_masks, cross_mask = self.decoder_masks(decoder_input_ids.shape[1], x.dtype, cache, encoder_attention_mask)
        for i, block in enumerate(self.decoder.block):
            x = block(x, self_masks[i], cross_mask, cross[i], cache[i] if cache is not None else None)
        x = self.decoder.final_layer_norm(x)
        if return_hidden:
            return x
        return self.lm_logits(x)

    def decoder_masks(self, T: int, dtype, cache=None, encoder_attention_mask=None):
        """Per decoder layer, the additive self-attention mask (position bias + causal) for T queries after the
        cache's tokens; and the cross-attention padding mask."""
        offset = cache[0].offset if cache is not None else 0
        static = isinstance(cache[0], StaticKVCache) if cache is not None else False
        # A static cache attends over its whole buffer: the causal mask hides unwritten slots.
        key_length = cache[0].capacity if static else offset + T
        self_mask = self.decoder.bias_owner.position_bias(T, key_length, offset, dtype)
        if T > 1 or static:
            causal = mx.arange(key_length)[None, :] <= (mx.arange(T) + offset)[:, None]
            self_mask = mx.where(causal, self_mask, mx.finfo(dtype).min)
        orders = self.args.decoder_head_order
        # Layers whose heads were regrouped (similarity grouping) read the shared bias in their own head order.
        if orders is None:
            masks = [self_mask] * len(self.decoder.block)
        else:
            masks = [self_mask[:, mx.array(order)] for order in orders]
        return masks, padding_mask(encoder_attention_mask, dtype)

    def lm_logits(self, hidden: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.shared.as_linear(hidden * (self.args.d_model**-0.5))
        return self.lm_head(hidden)

    def __call__(
        self, input_ids: mx.array, decoder_input_ids: mx.array, attention_mask: Optional[mx.array] = None
    ) -> mx.array:
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, self.cross_kv(enc), attention_mask)

    def make_cache(self, max_size: Optional[int] = None) -> List[KVCache]:
        return [KVCache(max_size) for _ in self.decoder.block]

    @property
    def layers(self):
        return self.decoder.block

    def sanitize(self, weights: dict) -> dict:
        """Drop checkpoint entries that this model shares or does not use."""
        drop = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
        if self.args.tie_word_embeddings:
            drop.add("lm_head.weight")
        return {k: v for k, v in weights.items() if k not in drop}
