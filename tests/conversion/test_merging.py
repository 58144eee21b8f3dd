"""Calibrated merging: exact where it must be, never worse than the mean on its objective."""

import numpy as np
import pytest

from mlx_mqa.conversion import merging as mg

RNG = np.random.default_rng(0)
H, d, D = 4, 3, 10


def random_module(H=H, d=d, D=D, rng=RNG):
    q, k, v = (rng.standard_normal((H, d, D)) for _ in range(3))
    o = rng.standard_normal((H, D, d))
    a, b = rng.standard_normal((D, 3 * D)), rng.standard_normal((D, 3 * D))
    s_x, s_y = a @ a.T / D, b @ b.T / D
    c_y = s_y - np.outer(b.mean(1), b.mean(1))
    return q, k, v, o, s_x, s_y, c_y


@pytest.mark.parametrize("method", mg.PLAN_METHODS)
def test_one_head_per_group_keeps_the_weights(method):
    q, k, v, o, *stats = random_module()
    mo = mg.moments(q, k, v, o, *stats)
    for h in range(H):
        new_k, new_v, new_q, new_o = mg.apply_plan(mg.plan(method, mo, (h,)), q, k, v, o)
        np.testing.assert_array_equal(new_k, k[h])
        np.testing.assert_array_equal(new_q[0], q[h])
        np.testing.assert_array_equal(new_o[0], o[h])


@pytest.mark.parametrize("method", mg.PLAN_METHODS)
def test_identical_heads_merge_to_that_head(method):
    q, k, v, o, *stats = random_module()
    k[1], v[1] = k[0], v[0]
    mo = mg.moments(q, k, v, o, *stats)
    p = mg.plan(method, mo, (0, 1))
    new_k, new_v, new_q, new_o = mg.apply_plan(p, q, k, v, o)
    if method in ("mean", "first", "fit"):
        np.testing.assert_allclose(new_k, k[0], atol=1e-12)
        np.testing.assert_allclose(new_v, v[0], atol=1e-12)
    # Every method computes what the heads computed: logits q^T k and outputs o v, per head.
    for a, h in enumerate((0, 1)):
        np.testing.assert_allclose(new_q[a].T @ new_k, q[h].T @ k[h], atol=1e-9)
        np.testing.assert_allclose(new_o[a] @ new_v, o[h] @ v[h], atol=1e-9)
    assert mg.plan_error(mo, p) < 1e-20


def test_fit_is_never_worse_than_mean_on_its_objective():
    for seed in range(20):
        q, k, v, o, *stats = random_module(rng=np.random.default_rng(seed))
        mo = mg.moments(q, k, v, o, *stats)
        for group in [(0, 1), (1, 2, 3), (0, 1, 2, 3)]:
            fit, mean = mg.plan_error(mo, mg.plan("fit", mo, group)), mg.plan_error(mo, mg.plan("mean", mo, group))
            assert fit <= mean * (1 + 1e-9), (seed, group, fit, mean)
            # svd-q minimises the same objective over a larger family (shared head + folded maps)
            assert mg.plan_error(mo, mg.plan("svd-q", mo, group)) <= mean * (1 + 1e-9)


def test_svd_is_exact_when_the_stacked_heads_have_rank_d():
    q, k, v, o, *stats = random_module()
    for h in (1, 3):  # head h is an invertible map of head h-1: pairs span d directions
        k[h] = RNG.standard_normal((d, d)) @ k[h - 1]
        v[h] = RNG.standard_normal((d, d)) @ v[h - 1]
    mo = mg.moments(q, k, v, o, *stats)
    for method in ("svd", "svd-q"):
        for group in [(0, 1), (2, 3)]:
            p = mg.plan(method, mo, group)
            new_k, new_v, new_q, new_o = mg.apply_plan(p, q, k, v, o)
            for a, h in enumerate(group):
                np.testing.assert_allclose(new_q[a].T @ new_k, q[h].T @ k[h], rtol=1e-8, atol=1e-8)
                np.testing.assert_allclose(new_o[a] @ new_v, o[h] @ v[h], rtol=1e-8, atol=1e-8)
            assert mg.plan_error(mo, p) < 1e-12
    assert mg.plan_error(mo, mg.plan("mean", mo, (0, 1))) > 0.1


def test_a_singular_system_is_regularised_and_noted():
    q, k, v, o, s_x, s_y, c_y = random_module()
    q[:2] = 0  # two heads that never attend: no query energy in their group
    mo = mg.moments(q, k, v, o, s_x, s_y, c_y)
    p = mg.plan("fit", mo, (0, 1))
    assert p.regularized == ["keys"]
    assert np.isfinite(p.tk).all()
