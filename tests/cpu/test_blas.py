"""The optimized-BLAS loading and the sgemm -> sgemv shim give correct matmuls in every layout."""

import json
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_mqa import paths
from mlx_mqa.cpu import blas as backend

SHAPES = [(1, 512, 2048), (1, 64, 7), (3, 64, 1), (1, 1, 5), (8, 512, 512), (1, 512, 4100), (5, 3, 1), (1, 7, 1)]
# A few rows (the small-batch kernel: 2 to 4 rows, K not a multiple of 8, an odd N) and rows past it.
SHAPES += [(2, 37, 9), (3, 512, 2049), (4, 100, 301), (5, 64, 33), (16, 100, 301), (2, 1, 2)]


def layouts(a, b):
    """Contiguous and transposed views of both operands (MLX passes transposes to BLAS as flags)."""
    yield mx.array(a), mx.array(b)
    yield mx.array(np.ascontiguousarray(a.T)).T, mx.array(b)
    yield mx.array(a), mx.array(np.ascontiguousarray(b.T)).T
    yield mx.array(np.ascontiguousarray(a.T)).T, mx.array(np.ascontiguousarray(b.T)).T


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_matmul_layouts_match_numpy(M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    ref = a.astype(np.float64) @ b
    tol = 1e-5 * (np.abs(ref).max() + 1)
    for x, y in layouts(a, b):
        np.testing.assert_allclose(np.array(x @ y), ref, atol=tol, rtol=0)
    c = rng.standard_normal((M, N)).astype(np.float32)
    out = mx.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=2.0, beta=0.5)
    np.testing.assert_allclose(np.array(out), 0.5 * c + 2.0 * ref, atol=3 * tol, rtol=0)


def test_batched_and_strided_single_rows():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 1, 16)).astype(np.float32)
    k = rng.standard_normal((2, 3, 16, 9)).astype(np.float32)
    np.testing.assert_allclose(np.array(mx.array(q) @ mx.array(k)), q @ k, atol=1e-4)
    big = rng.standard_normal((4, 10)).astype(np.float32)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    np.testing.assert_allclose(np.array(mx.array(big)[1:2] @ mx.array(w)), big[1:2] @ w, atol=1e-4)
    np.testing.assert_allclose(np.array(mx.array(w).T[2:3] @ mx.array(big).T), w.T[2:3] @ big.T, atol=1e-4)


@pytest.mark.skipif(platform.system() != "Linux", reason="OpenBLAS loading is Linux-only")
def test_a_few_rows_from_threads_and_a_forked_child_match_numpy():
    """The small-batch products share one pool of threads: calls from several threads at once, and from a child
    forked after the pool started (which has none of its threads), give numpy's results."""
    code = """
import os, threading, numpy as np, mlx_mqa, mlx.core as mx
rng = np.random.default_rng(0)
a, w = rng.standard_normal((4, 96)).astype(np.float32), rng.standard_normal((3001, 96)).astype(np.float32)
ref = a.astype(np.float64) @ w.T.astype(np.float64)
check = lambda: np.testing.assert_allclose(np.array(mx.array(a) @ mx.array(w).T), ref, atol=1e-3, rtol=0)
check()
errors = []
def run():
    try:
        [check() for _ in range(20)]
    except Exception as e:
        errors.append(e)
ts = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert not errors, errors
import ctypes
from mlx_mqa.cpu import blas
f = ctypes.POINTER(ctypes.c_float)
def shim_product():  # MLX itself is not fork-safe: the child calls the shim's sgemm directly
    c = np.zeros((4, 3001), np.float32)
    blas.shim_library.cblas_sgemm(101, 111, 112, 4, 3001, 96, ctypes.c_float(1.0), a.ctypes.data_as(f), 96,
                                  w.ctypes.data_as(f), 96, ctypes.c_float(0.0), c.ctypes.data_as(f), 3001)
    np.testing.assert_allclose(c, ref, atol=1e-3, rtol=0)
shim_product()
pid = os.fork()
if pid == 0:
    shim_product(); os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_shim_loaded_with_openblas_and_switches_work():
    if backend.loaded_blas is None:
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread)")
    assert "openblas" in backend.loaded_blas
    code = (
        "import ctypes, mlx_mqa, mlx.core as mx, numpy as np; from mlx_mqa.cpu import blas as backend; "
        "a = mx.array(np.arange(12, dtype=np.float32).reshape(1, 12)); b = mx.ones((12, 3)); "
        "exported = any(hasattr(ctypes.CDLL(None), n) for n in ('openblas_get_config', 'scipy_openblas_get_config')); "
        "print(backend.loaded_blas, backend.gemv_shim, backend.blas_scope, exported, (a @ b).tolist())"
    )
    outs = {}
    for env in ({}, {"MLX_MQA_GEMV_SHIM": "0"}, {"MLX_MQA_BLAS": "0"}):
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
        )
        outs[tuple(env.items())] = r.stdout.split(" ", 4)
    assert outs[()][1] != "None"  # the shim is on by default where a C compiler exists
    assert outs[(("MLX_MQA_GEMV_SHIM", "0"),)][1] == "None"
    assert outs[(("MLX_MQA_BLAS", "0"),)][0] == "None"
    # OpenBLAS stays private behind the shim, with or without the sgemv routing: a global one would
    # also take over PyTorch's sgemm_ in the same process.
    for env in ((), (("MLX_MQA_GEMV_SHIM", "0"),)):
        assert outs[env][2:4] == ["private", "False"], outs[env]
    assert len({v[4] for v in outs.values()}) == 1  # same product (66.0 x 3) whichever BLAS computed it


# ---- which BLAS is picked, and what happens when none can be (fresh processes, modified environments) ----

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="the BLAS loading is Linux-only")
SCIPY_LIB = backend.scipy_openblas_library()
needs_scipy = pytest.mark.skipif(SCIPY_LIB is None, reason="scipy-openblas32 is not installed")

PROBE = r"""
import ctypes, json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if "--mlx-first" in sys.argv:
        import mlx.core
    if "--no-rebind" in sys.argv:  # as where libmlx's jump slots cannot be rewritten
        import types
        stub = sys.modules["mlx_mqa.cpu.rebind"] = types.ModuleType("mlx_mqa.cpu.rebind")
        stub.loaded_path, stub.rebind = (lambda name: None), (lambda *a: False)
    if "--hide-blas" in sys.argv:  # as on a machine without any OpenBLAS
        import importlib.util, os.path
        find_spec, exists = importlib.util.find_spec, os.path.exists
        importlib.util.find_spec = lambda name, *a: None if name == "scipy_openblas32" else find_spec(name, *a)
        os.path.exists = lambda p: "openblas" not in str(p) and exists(p)
    import mlx_mqa
import mlx.core as mx, numpy as np
from mlx_mqa.cpu import blas as backend
rng = np.random.default_rng(1)
a, b = rng.standard_normal((3, 40)).astype(np.float32), rng.standard_normal((40, 9)).astype(np.float32)
ok = all(np.allclose(np.array(mx.array(x) @ mx.array(b)), x @ b, atol=1e-4) for x in (a, a[:1]))
exported = [n for n in ("openblas_get_config", "scipy_openblas_get_config", "sgemm_", "scipy_sgemm_")
            if hasattr(ctypes.CDLL(None), n)]


class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


def mlx_sgemm():  # the library libmlx's cblas_sgemm calls go to (its jump slot's target)
    import importlib
    sys.modules.pop("mlx_mqa.cpu.rebind", None)  # the real module, not a stub
    rebind = importlib.import_module("mlx_mqa.cpu.rebind")
    path = rebind.loaded_path("libmlx")
    data = open(path, "rb").read()
    target = ctypes.c_void_p.from_address(rebind._base(path, data) + rebind._slots(data, "cblas_sgemm")[0]).value
    info = DlInfo()
    return ctypes.CDLL(None).dladdr(ctypes.c_void_p(target), ctypes.byref(info)) and info.fname.decode()


print(json.dumps(dict(loaded=backend.loaded_blas, scope=backend.blas_scope, shim=backend.gemv_shim,
                      mlx_sgemm=mlx_sgemm(),
                      config=backend.blas_config, coretype=backend.coretype_override, ok=bool(ok), exported=exported,
                      warnings=[str(w.message) for w in caught if issubclass(w.category, backend.SlowBlasWarning)])))
"""


def probe(*args, **env):
    """Import mlx_mqa in a fresh process with MLX_MQA_* taken from `env` only; what it loaded and warned."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLX_MQA_") and k != "OPENBLAS_CORETYPE"}
    full.update({k: str(v) for k, v in env.items()})
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def cached_shims(cache: Path) -> list[Path]:
    return sorted(cache.glob("gemv_shim-*.so"))


@linux_only
@needs_scipy
def test_scipy_openblas_is_the_default_and_stays_private(tmp_path):
    out = probe(MLX_MQA_CACHE=tmp_path / "cache")
    assert out["loaded"] == SCIPY_LIB and "scipy_openblas32" in out["loaded"]
    assert out["scope"] == "private" and out["shim"] == str(cached_shims(tmp_path / "cache")[0])
    assert out["config"].startswith("OpenBLAS 0.3.") and "; core " in out["config"]
    assert out["coretype"] is None  # its OpenBLAS detects the CPU by itself
    assert out["exported"] == [] and out["warnings"] == [] and out["ok"]
    # The wheel's package is never imported (its __init__ would load the library globally).
    assert probe(MLX_MQA_CACHE=tmp_path / "cache", MLX_MQA_GEMV_SHIM=0)["exported"] == []


@linux_only
@pytest.mark.parametrize("kind", ["text file", "missing path", "directory"])
def test_bad_blas_path_warns_once_and_keeps_mlx_blas(tmp_path, kind):
    bad = {"text file": tmp_path / "notes.txt", "missing path": tmp_path / "nope.so", "directory": tmp_path}[kind]
    if kind == "text file":
        bad.write_text("not a library\n")
    out = probe(MLX_MQA_BLAS=bad, MLX_MQA_CACHE=tmp_path / "cache")
    assert out["loaded"] is None and out["ok"]
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "MLX_MQA_BLAS" in out["warnings"][0] and "~10x slower" in out["warnings"][0]


@linux_only
def test_blas_off_is_silent(tmp_path):
    out = probe(MLX_MQA_BLAS=0, MLX_MQA_CACHE=tmp_path / "cache")
    assert out["loaded"] is None and out["warnings"] == [] and out["ok"]
    assert not (tmp_path / "cache").exists()  # nothing built either
    assert probe("--mlx-first", MLX_MQA_BLAS=0)["warnings"] == []


@linux_only
def test_no_blas_at_all_warns_once_with_the_fix(tmp_path):
    out = probe("--hide-blas", MLX_MQA_CACHE=tmp_path / "cache")
    assert out["loaded"] is None and out["ok"]
    assert len(out["warnings"]) == 1, out["warnings"]
    message = out["warnings"][0]
    assert "no OpenBLAS found" in message and "pip install scipy-openblas32" in message
    assert "~10x slower" in message and "201 s" in message and "MLX_MQA_BLAS=0" in message
    assert probe("--hide-blas", MLX_MQA_BLAS=0)["warnings"] == []


@linux_only
def test_importing_mlx_first_still_gets_the_fast_blas():
    """Python binds libmlx's cblas_sgemm when mlx.core is imported; the shim then rewrites that one jump slot, so
    the import order does not matter. Either way MLX's sgemm calls land in the shim."""
    first, usual = probe("--mlx-first"), probe()
    assert usual["mlx_sgemm"] == usual["shim"] and usual["warnings"] == []
    assert first["loaded"] == usual["loaded"] is not None and first["scope"] == "private" and first["ok"]
    assert first["mlx_sgemm"] == first["shim"] and first["warnings"] == []


@linux_only
def test_importing_mlx_first_where_it_cannot_be_rebound_warns_with_the_fix():
    out = probe("--mlx-first", "--no-rebind")
    assert out["loaded"] is None and out["ok"] and "libblas" in out["mlx_sgemm"]
    assert len(out["warnings"]) == 1, out["warnings"]
    message = out["warnings"][0]
    assert "before mlx_mqa" in message and "put `import mlx_mqa` before `import mlx.core`" in message


@linux_only
@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "group-writable", "foreign owner"])
def test_damaged_or_untrusted_cached_shim_is_rebuilt(tmp_path, damage):
    cache = tmp_path / "cache"
    first = probe(MLX_MQA_CACHE=cache)
    if first["shim"] is None:
        pytest.skip("no OpenBLAS or no C compiler here")
    (so,) = cached_shims(cache)
    good = so.read_bytes()
    if damage == "empty":
        so.write_bytes(b"")
    elif damage == "garbage":
        so.write_bytes(os.urandom(20000))
    elif damage == "truncated":  # a valid ELF header: dlopen alone might crash on it, the digest catches it
        so.write_bytes(good[: len(good) // 2])
    elif damage == "group-writable":
        so.chmod(0o775)
    else:
        if os.geteuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(so, 65534, 65534)
    again = probe(MLX_MQA_CACHE=cache)
    assert again["shim"] == str(so) and again["loaded"] == first["loaded"] and again["scope"] == "private"
    assert again["warnings"] == [] and again["ok"]
    st = so.stat()
    assert so.read_bytes()[:4] == b"\x7fELF" and st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert backend._trusted(so)
    assert sorted(p.name for p in cache.iterdir()) == [so.name, so.name + ".sha256"]


@linux_only
@pytest.mark.parametrize("problem", ["not creatable", "owned by another user"])
def test_unusable_cache_dir_builds_a_throwaway_shim(tmp_path, problem):
    if problem == "not creatable":
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "cache"
    else:
        if os.geteuid() != 0:
            pytest.skip("changing a folder's owner needs root")
        cache = tmp_path / "theirs"
        cache.mkdir()
        os.chown(cache, 65534, 65534)
    out = probe(MLX_MQA_CACHE=cache)
    if out["loaded"] is None:
        pytest.skip("no OpenBLAS here")
    assert out["scope"] == "private" and out["warnings"] == [] and out["ok"]
    assert out["shim"] is not None and not Path(out["shim"]).exists()  # loaded, then deleted
    assert not cache.exists() or list(cache.iterdir()) == []


@linux_only
def test_cache_dir_is_private(tmp_path):
    cache = tmp_path / "a" / "b"
    probe(MLX_MQA_CACHE=cache)
    assert cache.is_dir() and stat.S_IMODE(cache.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    probe(MLX_MQA_CACHE=loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_cache_dir_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("MLX_MQA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "mlx_mqa"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "mlx_mqa"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "mlx_mqa"
    monkeypatch.setenv("MLX_MQA_CACHE", str(tmp_path / "explicit"))
    assert paths.cache_dir() == tmp_path / "explicit"
    assert not (tmp_path / "explicit").exists()  # cache_dir() only names it; private_dir() creates it
    assert paths.private_dir(paths.cache_dir()) == tmp_path / "explicit"
    assert stat.S_IMODE((tmp_path / "explicit").stat().st_mode) == 0o700


@linux_only
@needs_scipy
def test_broken_compiler_runs_once_and_leaves_no_files(tmp_path):
    count = tmp_path / "count"
    cc = tmp_path / "cc"
    # Leaves an empty output file behind and fails, as a compiler killed half-way would.
    cc.write_text(
        f'#!/bin/sh\necho run >> "{count}"\nwhile [ $# -gt 1 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n'
        'echo "cc: internal error" >&2\nexit 1\n'
    )
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    # scipy-openblas32's library needs the shim (prefixed symbols): no fallback hides the failure.
    env = {"CC": cc, "MLX_MQA_BLAS": SCIPY_LIB, "MLX_MQA_CACHE": cache}
    for _ in range(2):
        out = probe(**env)
        assert out["loaded"] is None and out["ok"]
        assert len(out["warnings"]) == 1 and "C compiler" in out["warnings"][0]
    assert count.read_text().count("run") == 1  # the failure marker kept the second import from retrying
    (marker,) = cache.iterdir()  # no empty .so, no temporary build folder
    assert marker.name.endswith(".failed") and "internal error" in marker.read_text()
    os.utime(marker, (0, 0))  # a failure of long ago is retried (and recorded again)
    probe(**env)
    assert count.read_text().count("run") == 2
    (marker,) = cache.iterdir()
    if os.geteuid() == 0:  # another user's marker (a shared cache) is not ours to obey
        os.chown(marker, 12345, 12345)
        probe(**env)
        assert count.read_text().count("run") == 3
        (marker,) = cache.iterdir()
    os.utime(cc, ns=(0, 10**18))  # another compiler (a changed one) gets a fresh try
    probe(**env)
    assert count.read_text().count("run") == 4 if os.geteuid() == 0 else 3


@linux_only
@needs_scipy
def test_torch_in_the_same_process_keeps_its_blas(tmp_path):
    pytest.importorskip("torch")
    code = r"""
import ctypes, json, mlx_mqa, mlx.core as mx, torch
from mlx_mqa.cpu import blas as backend
class Info(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
glob = ctypes.CDLL(None)
def owner(name):
    if not hasattr(glob, name):
        return None
    info = Info()
    glob.dladdr(ctypes.cast(getattr(glob, name), ctypes.c_void_p), ctypes.byref(info))
    return info.fname.decode()
x = torch.randn(64, 64)
print(json.dumps(dict(loaded=backend.loaded_blas, shim=backend.gemv_shim, sgemm_=owner("sgemm_"),
                      cblas_sgemm=owner("cblas_sgemm"), torch_ok=bool(torch.allclose(x @ torch.eye(64), x)),
                      mkl=torch.backends.mkl.is_available())))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_MQA_")}
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "MLX_MQA_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == SCIPY_LIB and out["torch_ok"]
    assert out["cblas_sgemm"] == out["shim"]  # MLX's sgemm goes through the shim...
    assert out["sgemm_"] is None or "openblas" not in out["sgemm_"]  # ...and no OpenBLAS sgemm_ is global


def test_shim_source_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["mlx_mqa"]
    pkg = Path(backend.__file__).parent.parent
    shipped = {p for pat in patterns for p in pkg.glob(pat)}
    assert backend.SHIM_SOURCE in shipped and set(backend.SHIM_SOURCES) <= shipped  # the kernel and header too
    assert any(d.startswith("scipy-openblas32") and "linux" in d for d in cfg["project"]["dependencies"])
