"""Conversion of multi-head T5 checkpoints to grouped-query (GQA) and multi-query (MQA) attention."""

from .converter import convert
from .pooling import GROUPS_IN, POOL_METHODS, convert_weights, pool_heads

__all__ = ["GROUPS_IN", "POOL_METHODS", "convert", "convert_weights", "pool_heads"]
