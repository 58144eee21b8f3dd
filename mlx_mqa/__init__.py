"""MLX T5 with multi-query and grouped-query attention (Ainslie et al. 2023)."""

import sys
import warnings

if sys.platform == "linux":  # OpenBLAS under MLX's Linux CPU backend: loaded before anything imports mlx.core
    from .cpu import blas  # noqa: F401

from ._version import __version__  # noqa: E402
from .checkpoint.load import load, load_model, load_tokenizer  # noqa: E402
from .generate import generate, generate_step, stream_generate  # noqa: E402

# `python -m mlx_mqa.generate` runs a module this package already imported (for the names above, as
# mlx-lm does); runpy's warning about that is expected.
warnings.filterwarnings("ignore", message="'mlx_mqa.generate' found in sys.modules", category=RuntimeWarning)

__all__ = ["load", "load_model", "load_tokenizer", "generate", "generate_step", "stream_generate", "__version__"]
