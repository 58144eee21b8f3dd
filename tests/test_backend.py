"""The optimized-BLAS loading and the sgemm -> sgemv shim give correct matmuls in every layout."""

import os
import platform
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import mlx_mqa
from mlx_mqa import backend

SHAPES = [(1, 512, 2048), (1, 64, 7), (3, 64, 1), (1, 1, 5), (8, 512, 512), (1, 512, 4100), (5, 3, 1), (1, 7, 1)]


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
def test_shim_loaded_with_openblas_and_switches_work():
    if backend.loaded_blas is None:
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread)")
    assert "openblas" in backend.loaded_blas
    code = ("import ctypes, mlx_mqa, mlx.core as mx, numpy as np; from mlx_mqa import backend; "
            "a = mx.array(np.arange(12, dtype=np.float32).reshape(1, 12)); b = mx.ones((12, 3)); "
            "exported = hasattr(ctypes.CDLL(None), 'openblas_get_config'); "
            "print(backend.loaded_blas, backend.gemv_shim, backend.blas_scope, exported, (a @ b).tolist())")
    outs = {}
    for env in ({}, {"MLX_MQA_GEMV_SHIM": "0"}, {"MLX_MQA_BLAS": "0"}):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, **env}, check=True)
        outs[tuple(env.items())] = r.stdout.split(" ", 4)
    assert outs[()][1] != "None"  # the shim is on by default where a C compiler exists
    assert outs[(("MLX_MQA_GEMV_SHIM", "0"),)][1] == "None"
    assert outs[(("MLX_MQA_BLAS", "0"),)][0] == "None"
    # OpenBLAS stays private behind the shim, with or without the sgemv routing: a global one would
    # also take over PyTorch's sgemm_ in the same process.
    for env in ((), (("MLX_MQA_GEMV_SHIM", "0"),)):
        assert outs[env][2:4] == ["private", "False"], outs[env]
    assert len({v[4] for v in outs.values()}) == 1  # same product (66.0 x 3) whichever BLAS computed it
