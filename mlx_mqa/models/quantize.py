"""Weight quantization through mlx.nn.quantize, leaving what must stay exact alone."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .. import engine
from ..errors import ConfigError
from .config import ModelArgs
from .t5 import Model


def quantizable(path: str, module: nn.Module, group_size: int) -> bool:
    # Relative position biases are tiny tables read by index: keep them exact. Layer norms are not
    # Linear/Embedding and so never quantized.
    if "relative_attention_bias" in path:
        return False
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    return module.weight.shape[-1] % group_size == 0


def quantize_model(
    model: nn.Module, bits: int, group_size: int, only: Optional[Callable[[str], bool]] = None
) -> nn.Module:
    """Quantize in place: the layers `quantizable` selects, or (loading) exactly those `only` names."""
    if bits not in (2, 3, 4, 5, 6, 8):
        raise ConfigError(f"unsupported --q-bits {bits}")
    if only is None:
        predicate = lambda p, m: quantizable(p, m, group_size)  # noqa: E731
    else:
        predicate = lambda p, m: hasattr(m, "to_quantized") and only(p)  # noqa: E731
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return engine.current().adapt_quantized(model)


def quantize_weights(args: ModelArgs, weights: Dict[str, mx.array], bits: int, group_size: int) -> Dict[str, mx.array]:
    """Float weights (converted layout) -> quantized weights for the same model."""
    model = Model(args)
    model.load_weights(list(weights.items()))
    quantize_model(model, bits, group_size)
    return dict(tree_flatten(model.parameters()))
