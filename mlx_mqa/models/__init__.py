"""The T5 architecture: configuration, model, attention kernels and K/V caches."""

from .config import ModelArgs
from .t5 import Model

__all__ = ["Model", "ModelArgs"]
