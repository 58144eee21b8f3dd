"""Use an optimized BLAS for MLX on Linux.

MLX's Linux CPU wheel links the reference BLAS; OpenBLAS makes its float32 matmuls ~10x faster.
A small C shim (csrc/gemv_shim.c, compiled on first use into a private cache directory, see
mlx_mqa.paths) is loaded globally before mlx.core and serves MLX's cblas_sgemm from an OpenBLAS opened
privately, so that PyTorch in the same process keeps its own MKL (a globally loaded OpenBLAS would
replace torch's sgemm_ too, and torch would run ~3x slower). The shim also routes single-row matmuls
(every decode step) from sgemm to sgemv, 2-4x faster in OpenBLAS, and head-sized products (attention
blocks, which run on two CPU streams at once) to a second, single-threaded instance of the same library,
so that the two streams do not fight over the cores. The same library holds a CPU attention kernel
(csrc/attention.c, bound in mlx_mqa.cpu.kernel), which runs its products on that instance.

The BLAS, first found wins: the scipy-openblas32 wheel (a dependency on Linux; its symbols carry a
scipy_ prefix, which only the shim can serve), then a system OpenBLAS (Debian's libopenblas0-pthread,
...). Without a C compiler only a system OpenBLAS can be used, loaded globally. When no optimized BLAS
can be used, importing this module warns once; it never raises.

Environment: MLX_MQA_BLAS=0 turns all of this off (silently); MLX_MQA_BLAS=/path/libopenblas.so picks
the library; MLX_MQA_GEMV_SHIM=0 keeps OpenBLAS (still private) but skips the sgemv routing;
MLX_MQA_CACHE sets the cache directory.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ..paths import cache_dir, private_dir
from . import rebind

CANDIDATES = (  # system OpenBLAS builds, after the scipy-openblas32 wheel
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
SHIM_SOURCE = Path(__file__).parent / "csrc" / "gemv_shim.c"
# Every source of the library (the shim, the attention kernel, their header): the build's cache key.
SHIM_SOURCES = tuple(sorted(SHIM_SOURCE.parent.glob("*.[ch]")))

loaded_blas = None  # path of the BLAS MLX uses, or None for MLX's bundled one
blas_scope = None  # "private" (behind the shim: other libraries keep their BLAS) or "global"
gemv_shim = None  # path of the shim when it routes single-row matmuls to sgemv, else None
blas_config = None  # openblas_get_config() and core of the loaded OpenBLAS, e.g. "OpenBLAS 0.3.34 ...; core SkylakeX"
coretype_override = None  # the OPENBLAS_CORETYPE set while loading the library, if any
shim_library = None  # the loaded shim (ctypes), once it serves MLX's sgemm; holds the attention kernel

COST = "float32 matmuls ~10x slower (the offline `python bench.py` took ~201 s instead of ~20 s with OpenBLAS)"


class SlowBlasWarning(UserWarning):
    """MLX is left with its reference BLAS (Linux only; MLX_MQA_BLAS=0 silences it)."""


def scipy_openblas_library() -> str | None:
    """The scipy-openblas32 wheel's library, found without importing the package (whose __init__ would
    load it globally)."""
    try:
        spec = importlib.util.find_spec("scipy_openblas32")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        libs = sorted(Path(folder, "lib").glob("libscipy_openblas*.so*"))
        if libs:
            return str(libs[0])
    return None


# ---- the shim: compiled once per source, compiler and machine into a private cache directory ----


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _compiler_key(cc: str) -> str:
    """Changes when the compiler does (a failure marker then no longer applies)."""
    real = os.path.realpath(cc)
    st = os.stat(real)
    return hashlib.sha1(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trusted(so: Path) -> bool:
    """A regular file of ours that nobody else can write, with the digest recorded when it was built."""
    try:
        st = os.lstat(so)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False
        return Path(f"{so}.sha256").read_text().strip() == _digest(so)
    except OSError:
        return False


# A failed build is not retried at every import, but only for so long: the machine may have changed.
MARKER_SECONDS = 7 * 24 * 3600


def _failed_before(marker: Path) -> bool:
    """Whether `marker` records our own recent failure; another user's file, or an old one, is removed."""
    try:
        st = os.lstat(marker)
    except OSError:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and time.time() - st.st_mtime < MARKER_SECONDS:
        return True
    try:
        marker.unlink()
    except OSError:
        pass
    return False


def _open_shim(so: Path):
    """The shim loaded privately (promoted to global only once it has a BLAS), or None."""
    try:
        lib = ctypes.CDLL(str(so), mode=ctypes.RTLD_LOCAL)
    except OSError:
        return None
    try:
        lib.mlx_mqa_gemv_shim_init.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.mlx_mqa_gemv_shim_error.restype = ctypes.c_char_p
        lib.mlx_mqa_blas_info.restype = ctypes.c_char_p
    except AttributeError:  # some other library under our name: unload it, or a rebuild would reopen it
        import _ctypes

        _ctypes.dlclose(lib._handle)
        return None
    lib.path = str(so)
    return lib


def _compile(cc: str, folder: Path, so: Path) -> str | None:
    """Build the shim into `so` (atomically, with its digest beside it). Returns the compiler's error, or
    None; raises OSError when `folder` cannot be written."""
    tmp = tempfile.mkdtemp(prefix=".build-", dir=folder)
    sources = [p for p in SHIM_SOURCES if p.suffix == ".c"]
    try:
        out = Path(tmp) / "shim.so"
        try:
            r = subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", *map(str, sources), "-o", str(out), "-ldl", "-lpthread", "-lm"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"{cc}: {e}"
        if r.returncode != 0 or not out.is_file() or out.read_bytes()[:4] != b"\x7fELF":
            lines = (r.stderr or r.stdout).strip().splitlines()
            return f"{cc} exited with {r.returncode}" + (f": {lines[0]}" if lines else "")
        os.chmod(out, 0o700)  # whatever the umask: a group-writable shim would not be trusted
        Path(tmp, "shim.sha256").write_text(_digest(out) + "\n")
        os.replace(Path(tmp, "shim.sha256"), f"{so}.sha256")
        os.replace(out, so)  # atomic: concurrent imports never see a half-written library
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shim():
    """(the shim, loaded privately, None) or (None, why not)."""
    if not SHIM_SOURCE.is_file():
        return None, f"the shim's source {SHIM_SOURCE} is missing"
    key = hashlib.sha1(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in SHIM_SOURCES)).hexdigest()
    name = f"gemv_shim-{key[:12]}-{platform.machine()}"
    try:
        folder = private_dir(cache_dir())
    except (OSError, RuntimeError):  # not ours, not creatable, or no home directory
        folder = None
    so = folder / f"{name}.so" if folder is not None else None
    if so is not None and _trusted(so):
        lib = _open_shim(so)
        if lib is not None:
            return lib, None
    # Missing, corrupt or not trusted: (re)build it in place, once per compiler.
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc) to build the BLAS shim"
    if so is not None:
        marker = folder / f"{name}-cc{_compiler_key(cc)}.failed"
        if _failed_before(marker):
            return None, f"building the BLAS shim failed before with this compiler (delete {marker} to retry)"
        try:
            error = _compile(cc, folder, so)
        except OSError:
            pass  # the cache directory cannot be written: build a throwaway copy below
        else:
            if error is None:
                lib = _open_shim(so)
                if lib is not None:
                    return lib, None
                error = f"the shim built by {cc} does not load"
            try:
                marker.write_text(error + "\n")
            except OSError:
                pass
            return None, f"building the BLAS shim failed ({error}; {marker})"
    # No usable cache directory: build into a throwaway one (the loaded library outlives its file).
    try:
        with tempfile.TemporaryDirectory(prefix="mlx_mqa-") as tmp:
            error = _compile(cc, Path(tmp), Path(tmp) / f"{name}.so")
            lib = _open_shim(Path(tmp) / f"{name}.so") if error is None else None
    except OSError as e:
        return None, f"no writable directory to build the BLAS shim in ({e})"
    return (lib, None) if lib is not None else (None, f"building the BLAS shim failed ({error})")


# ---- choosing and loading the BLAS ----


def _coretype(path: str) -> str | None:
    """OpenBLAS 0.3.21 (Debian 12's) predates recent x86 CPUs and may fall back to a slow generic kernel on
    them; the scipy-openblas32 wheel's OpenBLAS (0.3.3x) is left to detect the CPU by itself."""
    if platform.machine() != "x86_64" or "OPENBLAS_CORETYPE" in os.environ or "scipy_openblas" in path:
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "SKYLAKEX" if "avx512f" in flags and "avx512bw" in flags else None


# OpenBLAS's idle threads spin for 2**n cycles before sleeping (default n = 28, ~0.1 s). After a threaded
# matmul, a spinning thread takes the core that CPU attention's second stream needs; 2**22 cycles (~2 ms)
# still span the gaps between a decode step's calls (docs/linux_cpu_engine.md).
THREAD_TIMEOUT = "22"


def _with_openblas_env(path: str, load):
    """Run load() (which opens `path`) with OpenBLAS's variables set for it: OPENBLAS_THREAD_TIMEOUT unless
    the user set it, and OPENBLAS_CORETYPE only if that library needs it. They are read when OpenBLAS
    initialises; left set, they would also steer numpy's OpenBLAS."""
    global coretype_override
    core = _coretype(path)
    extra = {"OPENBLAS_CORETYPE": core} if core else {}
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        extra["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    os.environ.update(extra)
    try:
        result = load()
    finally:
        for key in extra:
            del os.environ[key]
    if result and core:
        coretype_override = core
    return result


def _openblas_info(lib) -> str | None:
    for prefix in ("", "scipy_"):
        try:
            config, core = getattr(lib, prefix + "openblas_get_config"), getattr(lib, prefix + "openblas_get_corename")
        except AttributeError:
            continue
        config.restype = core.restype = ctypes.c_char_p
        return f"{config().decode()}; core {core().decode()}"
    return None


def _load_global(path: str) -> bool:
    """Without the shim: load a BLAS with plain CBLAS names globally (a prefixed one cannot serve MLX)."""
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        if not hasattr(lib, "cblas_sgemm"):
            return False
        ctypes.CDLL(path, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)  # promote the loaded library
    except OSError:
        return False
    global blas_config
    blas_config = _openblas_info(lib)
    return True


GENERAL_FIX = "pip install scipy-openblas32, or install a C compiler (cc)"
LATE = (
    "mlx.core was imported before mlx_mqa and its BLAS calls could not be redirected",
    "put `import mlx_mqa` before `import mlx.core` (and before anything that imports it, such as mlx_lm)",
)


def _rebind_mlx(shim) -> bool:
    """Point the already loaded libmlx's cblas_sgemm at the shim's."""
    path = rebind.loaded_path("libmlx")
    return path is not None and rebind.rebind(path, "cblas_sgemm", ctypes.cast(shim.cblas_sgemm, ctypes.c_void_p).value)


def _load_blas() -> tuple[str, str] | None:
    """Put an optimized BLAS under MLX; returns why not and the fix (for the warning), or None."""
    global loaded_blas, blas_scope, gemv_shim, blas_config, shim_library
    choice = os.environ.get("MLX_MQA_BLAS", "1")
    if platform.system() != "Linux" or choice == "0":
        return None
    late = "mlx.core" in sys.modules  # its BLAS calls are bound already: only rebinding them helps
    if late and "openblas" in os.environ.get("LD_PRELOAD", ""):
        loaded_blas, blas_scope = "LD_PRELOAD", "global"
        return None
    explicit = choice not in ("1", "")
    if explicit:
        fix = "point MLX_MQA_BLAS at an OpenBLAS library, or unset it"
        if not os.path.isfile(choice):
            return f"MLX_MQA_BLAS={choice} is not a file", fix
        paths = [choice]
    else:
        fix = GENERAL_FIX
        paths = [p for p in [scipy_openblas_library(), *CANDIDATES] if p and os.path.exists(p)]
        if not paths:
            return "no OpenBLAS found", "pip install scipy-openblas32" + (
                "" if _compiler() else " and install a C compiler (cc)"
            )
    route_gemv = os.environ.get("MLX_MQA_GEMV_SHIM", "1") != "0"
    shim, why = _shim()
    if shim is not None:
        errors = []
        for path in paths:
            if _with_openblas_env(path, lambda p=path: shim.mlx_mqa_gemv_shim_init(p.encode(), int(route_gemv)) == 0):
                # Promote the shim to global so that mlx.core's cblas_sgemm resolves to it.
                ctypes.CDLL(shim.path, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
                if late and not _rebind_mlx(shim):
                    return LATE
                loaded_blas, blas_scope = path, "private"
                gemv_shim = shim.path if route_gemv else None
                blas_config = shim.mlx_mqa_blas_info().decode() or None
                shim_library = shim
                return None
            errors.append(shim.mlx_mqa_gemv_shim_error().decode())
        return f"no usable BLAS ({'; '.join(errors)})", fix
    if late:
        return LATE
    for path in paths:
        if _with_openblas_env(path, lambda p=path: _load_global(p)):
            loaded_blas, blas_scope = path, "global"
            return None
    # Only the shim can serve the scipy_-prefixed symbols of scipy-openblas32 (or any OpenBLAS privately).
    return why, "install a working C compiler (cc)" + (f"; or {fix}" if explicit else "")


def _load_and_warn() -> None:
    try:
        problem = _load_blas()
    except Exception as e:  # noqa: BLE001  (the optional fast path must never break `import mlx_mqa`)
        problem = f"loading an optimized BLAS failed ({type(e).__name__}: {e})", GENERAL_FIX
    if problem is not None:
        why, fix = problem
        warnings.warn(
            f"mlx_mqa: {why}, so MLX keeps its reference BLAS: {COST}. Fix: {fix}. (MLX_MQA_BLAS=0 silences this.)",
            SlowBlasWarning,
            stacklevel=3,
        )


_load_and_warn()
