"""Weight quantization through mlx.nn.quantize, leaving what must stay exact alone."""

from __future__ import annotations

from typing import Dict

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import ModelArgs
from .errors import ConfigError


def quantizable(path: str, module: nn.Module, group_size: int) -> bool:
    # Relative position biases are tiny tables read by index: keep them exact. Layer norms are not
    # Linear/Embedding and so never quantized.
    if "relative_attention_bias" in path:
        return False
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    return module.weight.shape[-1] % group_size == 0


def quantize_model(model: nn.Module, bits: int, group_size: int) -> nn.Module:
    if bits not in (2, 3, 4, 5, 6, 8):
        raise ConfigError(f"unsupported --q-bits {bits}")
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda p, m: quantizable(p, m, group_size))
    return model


def quantize_weights(args: ModelArgs, weights: Dict[str, mx.array], bits: int, group_size: int) -> Dict[str, mx.array]:
    """Float weights (converted layout) -> quantized weights for the same model."""
    from .model import Model

    model = Model(args)
    model.load_weights(list(weights.items()))
    quantize_model(model, bits, group_size)
    return dict(tree_flatten(model.parameters()))
