"""The one hook between the portable model code and a platform engine.

Metal and CUDA run the portable path (MLX's fused attention, compiled decode steps). On a Linux CPU the
engine in `mlx_mqa.cpu` takes over what MLX's CPU backend does slowly. MLX_MQA_ENGINE=portable forces
the portable path everywhere (how CI tests what a Mac runs); MLX_MQA_ENGINE=cpu or auto (the default)
use the CPU engine where MLX runs on the CPU of a Linux machine.
"""

from __future__ import annotations

import os
import platform

ENGINES = ("auto", "portable", "cpu")


def engine_info() -> dict:
    """What a results file records about the engine: its name and, for the CPU engine, the BLAS under MLX."""
    from . import backend

    cpu = platform.system() == "Linux" and os.environ.get("MLX_MQA_ENGINE") != "portable"
    return {
        "engine": "cpu" if cpu else "portable",
        "blas": backend.loaded_blas,
        "blas_scope": backend.blas_scope,
        "blas_config": backend.blas_config,
    }
