"""Use an optimized BLAS for MLX on Linux when one is installed.

MLX's Linux CPU wheel links the reference BLAS; OpenBLAS makes its float32 matmuls ~10x faster.
A small C shim (csrc/gemv_shim.c, compiled on first use when a C compiler is available) is loaded
globally before mlx.core and serves MLX's cblas_sgemm from an OpenBLAS opened privately, so that
PyTorch in the same process keeps its own MKL (a globally loaded OpenBLAS would replace torch's
sgemm_ too, and torch would run ~3x slower). The shim also routes single-row matmuls (every decode
step) from sgemm to sgemv, 2-4x faster in OpenBLAS. Without a compiler, OpenBLAS is loaded globally.

Environment: MLX_MQA_BLAS=0 turns all of this off; MLX_MQA_BLAS=/path/libopenblas.so picks the
library; MLX_MQA_GEMV_SHIM=0 keeps OpenBLAS (still private) but skips the sgemv routing.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
SHIM_SOURCE = Path(__file__).parent / "csrc" / "gemv_shim.c"

loaded_blas = None  # path of the BLAS MLX uses, or None for MLX's bundled one
blas_scope = None  # "private" (behind the shim: other libraries keep their BLAS) or "global"
gemv_shim = None  # path of the shim when it routes single-row matmuls to sgemv, else None


def _cache_dir() -> Path:
    return Path(os.environ.get("MLX_MQA_CACHE", Path.home() / ".cache" / "mlx_mqa"))


def _build_shim() -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not SHIM_SOURCE.exists():
        return None
    src = SHIM_SOURCE.read_bytes()
    out = _cache_dir() / f"gemv_shim-{hashlib.sha1(src).hexdigest()[:12]}-{platform.machine()}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", str(SHIM_SOURCE), "-o", tmp, "-ldl"], check=True,
                       capture_output=True, timeout=60)
        os.replace(tmp, out)  # atomic: concurrent imports never see a half-written library
        return out
    except (OSError, subprocess.SubprocessError):
        return None


def _load_blas():
    global loaded_blas, blas_scope, gemv_shim
    choice = os.environ.get("MLX_MQA_BLAS", "1")
    if platform.system() != "Linux" or choice == "0":
        return
    if "mlx.core" in sys.modules:
        # Too late for symbol interposition; only an LD_PRELOAD would help now.
        if "openblas" in os.environ.get("LD_PRELOAD", ""):
            loaded_blas, blas_scope = "LD_PRELOAD", "global"
        return
    paths = [choice] if choice not in ("1", "") else list(CANDIDATES)
    path = next((p for p in paths if os.path.exists(p)), None)
    if path is None:
        return
    # OpenBLAS 0.3.21 does not recognise recent x86 CPUs and falls back to a slow generic kernel.
    if platform.machine() == "x86_64" and "OPENBLAS_CORETYPE" not in os.environ and _has_avx512():
        os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
    route_gemv = os.environ.get("MLX_MQA_GEMV_SHIM", "1") != "0"
    shim = _build_shim()
    if shim is not None:
        # Loaded first and globally so that mlx.core's cblas_sgemm resolves to it.
        lib = ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
        if lib.mlx_mqa_gemv_shim_init(path.encode(), int(route_gemv)) == 0:
            loaded_blas, blas_scope = path, "private"
            gemv_shim = str(shim) if route_gemv else None
            return
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    loaded_blas, blas_scope = path, "global"


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512f" in flags and "avx512bw" in flags
    except OSError:
        return False


_load_blas()
