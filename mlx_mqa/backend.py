"""Use an optimized BLAS for MLX on Linux when one is installed.

MLX's Linux CPU wheel links the reference BLAS; Debian's OpenBLAS loaded with RTLD_GLOBAL
before mlx.core makes its float32 matmuls ~10x faster. On top of it, a small shim routes
single-row matmuls (every decode step) from sgemm to sgemv, 2-4x faster in OpenBLAS; it is
compiled on first use when a C compiler is available (csrc/gemv_shim.c).

Environment: MLX_MQA_BLAS=0 turns all of this off; MLX_MQA_BLAS=/path/libopenblas.so picks the
library; MLX_MQA_GEMV_SHIM=0 keeps OpenBLAS but skips the shim.
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
gemv_shim = None  # path of the loaded shim, or None


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
    global loaded_blas, gemv_shim
    choice = os.environ.get("MLX_MQA_BLAS", "1")
    if platform.system() != "Linux" or choice == "0":
        return
    if "mlx.core" in sys.modules:
        # Too late for symbol interposition; only an LD_PRELOAD would help now.
        loaded_blas = "LD_PRELOAD" if "openblas" in os.environ.get("LD_PRELOAD", "") else None
        return
    paths = [choice] if choice not in ("1", "") else list(CANDIDATES)
    path = next((p for p in paths if os.path.exists(p)), None)
    if path is None:
        return
    # OpenBLAS 0.3.21 does not recognise recent x86 CPUs and falls back to a slow generic kernel.
    if platform.machine() == "x86_64" and "OPENBLAS_CORETYPE" not in os.environ and _has_avx512():
        os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
    if os.environ.get("MLX_MQA_GEMV_SHIM", "1") != "0":
        shim = _build_shim()
        if shim is not None:
            # Loaded first so that its cblas_sgemm wins symbol resolution for mlx.core.
            lib = ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
            if lib.mlx_mqa_gemv_shim_init(path.encode()) == 0:
                gemv_shim = str(shim)
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    loaded_blas = path


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512f" in flags and "avx512bw" in flags
    except OSError:
        return False


_load_blas()
