"""Use an optimized BLAS for MLX on Linux when one is installed.

MLX's Linux CPU wheel links the reference BLAS; Debian's OpenBLAS loaded with RTLD_GLOBAL
before mlx.core makes its float32 matmuls ~10x faster. Set MLX_MQA_BLAS=0 to turn this off,
or MLX_MQA_BLAS=/path/to/libblas.so to choose the library.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

loaded_blas = None


def _load_blas():
    global loaded_blas
    choice = os.environ.get("MLX_MQA_BLAS", "1")
    if platform.system() != "Linux" or choice == "0":
        return
    if "mlx.core" in sys.modules:
        # Too late for symbol interposition; only an LD_PRELOAD would help now.
        loaded_blas = "LD_PRELOAD" if "openblas" in os.environ.get("LD_PRELOAD", "") else None
        return
    paths = [choice] if choice not in ("1", "") else list(CANDIDATES)
    for path in paths:
        if os.path.exists(path):
            # OpenBLAS 0.3.21 does not recognise recent x86 CPUs and falls back to a slow kernel.
            if platform.machine() == "x86_64" and "OPENBLAS_CORETYPE" not in os.environ and _has_avx512():
                os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            loaded_blas = path
            return


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512f" in flags and "avx512bw" in flags
    except OSError:
        return False


_load_blas()
