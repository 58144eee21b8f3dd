"""Conversion of multi-head T5 checkpoints to grouped-query (GQA) and multi-query (MQA) attention."""

from .converter import METHODS, Calibration, check_options, convert, convert_model, group_weights
from .grouping import GROUPINGS
from .pooling import GROUPS_IN, POOL_METHODS, convert_weights, pool_heads

__all__ = [
    "GROUPINGS",
    "GROUPS_IN",
    "METHODS",
    "POOL_METHODS",
    "Calibration",
    "check_options",
    "convert",
    "convert_model",
    "convert_weights",
    "group_weights",
    "pool_heads",
]
