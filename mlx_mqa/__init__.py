"""MLX T5 with multi-query and grouped-query attention (Ainslie et al. 2023)."""

import warnings

from . import backend  # noqa: F401, I001  (optimized BLAS on Linux must load before mlx.core)
from ._version import __version__
from .checkpoint.load import load, load_model, load_tokenizer
from .generate import generate, generate_step, stream_generate

# `python -m mlx_mqa.generate` runs a module this package already imported (for the names above, as
# mlx-lm does); runpy's warning about that is expected.
warnings.filterwarnings("ignore", message="'mlx_mqa.generate' found in sys.modules", category=RuntimeWarning)

__all__ = ["load", "load_model", "load_tokenizer", "generate", "generate_step", "stream_generate", "__version__"]
