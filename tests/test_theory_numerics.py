"""Numeric machinery: Hessian norms by power iteration / Lanczos vs exact eigvalsh, Lipschitz
ascent, and structural facts the corrected proofs use."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import numerics
from theory.claims import ddim, loss


def test_hessian_norm_methods_agree():
    with jax.enable_x64(True):
        F = jax.random.normal(jax.random.PRNGKey(0), (5, loss.N))
        exact = float(numerics.hessian_exact_norm(loss.loss, F))
        power = float(numerics.hessian_power_norm(loss.loss, F, iters=300))
        lo, hi = numerics.hessian_lanczos_extremes(loss.loss, F, k=F.size)
        assert max(abs(lo), abs(hi)) == pytest.approx(exact, rel=1e-8)
        assert power == pytest.approx(exact, rel=1e-3)


def test_lipschitz_ascent_linear_map():
    with jax.enable_x64(True):
        A = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
        r, _, _ = numerics.lipschitz_ascent(lambda x: A @ x, jnp.ones(4),
                                            jax.random.normal(jax.random.PRNGKey(2), (4,)),
                                            steps=400, lr=0.05)
        assert r == pytest.approx(float(jnp.linalg.norm(A, 2)), rel=1e-3)


def test_gradient_orthogonal_to_frames_and_norms_grow():
    """<grad_{F_t} L, F_t> = 0 (L is scale invariant per frame): GD never shrinks a frame, so
    the iterates stay in S_m (used by the corrected Thm C.4)."""
    with jax.enable_x64(True):
        F = jax.random.normal(jax.random.PRNGKey(3), (6, loss.N))
        g = jax.grad(loss.loss)(F)
        assert np.max(np.abs(np.sum(np.asarray(g * F), axis=1))) < 1e-14
        n0 = jnp.linalg.norm(F, axis=1)
        n1 = jnp.linalg.norm(F - 10.0 * g, axis=1)
        assert bool(jnp.all(n1 >= n0))


def test_constants():
    assert loss.grad_const(3) == 4.0
    assert loss.cmax(4) == 6.0 and loss.cmax(7) == 8.0
    assert loss.lam_D(3) == pytest.approx(2.0)
    assert loss.hess_const(3) == pytest.approx(8 + 4 * (1 + 2 / math.sqrt(3)))


def test_bilateral_scale_equivariance_and_bound():
    """B(lam x; lam sigma_r) = lam B(x; sigma_r): the Lipschitz constant cannot depend on
    sigma_r, as the corrected Lemma C.7 states."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(4), ddim.SHAPE)
        s1 = {"radius": 2, "ss": 1.0, "sr": 0.25}
        s2 = {"radius": 2, "ss": 1.0, "sr": 2.5}
        np.testing.assert_allclose(np.asarray(ddim.bil(10 * x, s2)),
                                   10 * np.asarray(ddim.bil(x, s1)), rtol=1e-5, atol=1e-6)
        # exact Jacobian norm at random points is below the certified bound
        J = jax.jacobian(lambda z: ddim.bil(z.reshape(ddim.SHAPE), s1).ravel())(x.ravel())
        assert float(jnp.linalg.norm(J, 2)) <= ddim.bilateral_lipschitz_bound(2, 1.0)
    assert ddim.bilateral_lipschitz_bound(2, 1.0) > 1.0


def test_lanczos_hessian_at_larger_size_below_corrected_bound():
    r = loss.c1_hvp_custom(None)
    assert r["hvp_ok"], r


@pytest.mark.parametrize("radius,ss", [(1, 1.0), (2, 1.0), (2, 0.5)])
def test_bilateral_column_weight_worst_case_is_the_corner_of_a_large_image(radius, ss):
    """G_col (used in Lambda) is computed on a (4r+3)^2 image; no image size reads a pixel with
    more spatial weight (small images merge more offsets into a pixel, but never more)."""
    offs = ddim._offsets(radius)
    g = {o: math.exp(-(o[0] ** 2 + o[1] ** 2) / (2 * ss ** 2)) for o in offs}

    def gcol(h, w):
        G = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                for (dy, dx), v in g.items():
                    G[min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)] += v
        return G.max()

    ref = gcol(4 * radius + 3, 4 * radius + 3)
    for h in range(1, 10):
        for w in (1, 2, 3, 7):
            assert gcol(h, w) <= ref + 1e-12


def test_hessian_scales_like_inverse_square_norm():
    """L(lam F) = L(F), so Hess L(lam F) = Hess L(F) / lam^2: on {||F_t|| <= M} the Hessian is
    unbounded as lam -> 0 -- no Lipschitz constant exists (Thm C.1 refuted for every constant,
    not only for 16/M)."""
    with jax.enable_x64(True):
        F = jax.random.normal(jax.random.PRNGKey(5), (4, loss.N))
        F = F / jnp.max(jnp.linalg.norm(F, axis=1))          # all norms <= M = 1
        h1 = float(numerics.hessian_exact_norm(loss.loss, F))
        for lam in (1e-1, 1e-2, 1e-3):
            h = float(numerics.hessian_exact_norm(loss.loss, lam * F))
            assert h == pytest.approx(h1 / lam ** 2, rel=1e-6)
        assert h > 1e5 * 16.0       # 16/M is exceeded by five orders of magnitude at lam = 1e-3
