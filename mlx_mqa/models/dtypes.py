"""The dtype table and the rules that depend on the weights' dtype."""

from __future__ import annotations

import mlx.core as mx

from ..errors import ConfigError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
# The FFN output projection's output is what overflows float16 (transformers keeps it in float32 too).
FLOAT32_IN_FLOAT16 = ".DenseReluDense.wo.weight"


def default_dtype() -> str:
    """bfloat16 where there is a GPU; float32 on CPU, where MLX half-precision matmuls are slow."""
    return "float32" if mx.default_device() == mx.cpu or not mx.is_available(mx.gpu) else "bfloat16"


def check_dtype(name: str, allowed=tuple(DTYPES)) -> mx.Dtype:
    if name not in allowed:
        raise ConfigError(f"unknown dtype {name!r}; choose from {list(allowed)}")
    return DTYPES[name]


def weight_dtype(name: str, dtype: str) -> mx.Dtype:
    """Storage dtype of parameter `name` in a model of `dtype`."""
    if dtype == "float16" and name.endswith(FLOAT32_IN_FLOAT16):
        return mx.float32
    return DTYPES[dtype]
