"""Quantized layers for MLX's x86 CPU backend, whose quantized matmul is slow for products of many rows.

For many rows (encoder, prefill, teacher forcing) the weight is dequantized and multiplied by BLAS; decode
steps (few rows) keep the quantized kernel, which reads several times fewer bytes. Same parameters as
mlx.nn's layers: `adapt` retypes the layers mlx.nn.quantize made rather than re-implementing quantization.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

DEQUANTIZE_MIN_ROWS = 16


def _many_rows_on_cpu(x: mx.array) -> bool:
    return mx.default_device() == mx.cpu and x.size // max(x.shape[-1], 1) >= DEQUANTIZE_MIN_ROWS


def _dequantized(module) -> mx.array:
    return mx.dequantize(
        module["weight"],
        module["scales"],
        module.get("biases"),
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
    )


class QuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x):
        if not _many_rows_on_cpu(x):
            return super().__call__(x)
        y = x @ _dequantized(self).astype(x.dtype).T
        return y + self["bias"] if "bias" in self else y


class QuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x):
        if not _many_rows_on_cpu(x):
            return super().as_linear(x)
        return x @ _dequantized(self).astype(x.dtype).T


def adapt(model: nn.Module) -> nn.Module:
    """Retype mlx.nn's quantized layers in place as the CPU-aware ones above."""
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = QuantizedLinear
        elif type(module) is nn.QuantizedEmbedding:
            module.__class__ = QuantizedEmbedding
    return model
