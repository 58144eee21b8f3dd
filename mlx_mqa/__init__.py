"""MLX T5 with multi-query and grouped-query attention (Ainslie et al. 2023)."""

__version__ = "0.1.0"

from . import backend  # noqa: F401, I001  (optimized BLAS on Linux must load before mlx.core)
from .checkpoint.load import load, load_model, load_tokenizer  # noqa: E402
from .decoding.generate import generate, generate_step, stream_generate  # noqa: E402

__all__ = ["load", "load_model", "load_tokenizer", "generate", "generate_step", "stream_generate", "__version__"]
