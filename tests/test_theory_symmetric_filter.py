"""The symmetric doubly stochastic fixed-guide bilateral filter
(jaxvedit/diffusion/symmetric_bilateral.py): the matrix properties Lemma C.7 needs, its use as an
inversion filter (mode "symmetric", same call shape as "latent"), and input errors."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxvedit.diffusion import (
    BilateralFilterConfig,
    apply_symmetric_bilateral,
    ddim_inversion_step,
    ddim_invert,
    sd15_schedule,
    symmetric_bilateral_filter,
    symmetric_bilateral_weights,
)
from jaxvedit.diffusion.symmetric_bilateral import dense_matrix

SCHED = sd15_schedule()


def _dense(g, **kw):
    P = symmetric_bilateral_weights(g, **kw)
    return [[dense_matrix(P[b, :, :, c], radius=kw.get("radius", 2), window=kw.get("window", "square"))
             for c in range(g.shape[-1])] for b in range(g.shape[0])]


@pytest.mark.parametrize("radius,ss,sr,mode,window,iters", [
    (1, 1.0, 0.3, "absolute", "square", 30), (2, 1.5, 0.1, "absolute", "disk", 5),
    (2, 1.0, np.inf, "relative", "square", 0)])
def test_matrix_is_symmetric_doubly_stochastic_and_nonexpansive(radius, ss, sr, mode, window, iters):
    rng = np.random.default_rng(radius)
    with jax.enable_x64(True):
        g = rng.normal(size=(2, 6, 5, 2))
        for row in _dense(g, radius=radius, sigma_spatial=ss, sigma_range=sr, range_mode=mode,
                          window=window, sinkhorn_iters=iters):
            for M in row:
                np.testing.assert_array_equal(M - np.diag(np.diag(M)), (M - np.diag(np.diag(M))).T)
                assert M.min() >= 0
                np.testing.assert_allclose(M.sum(1), 1.0, atol=1e-13)
                np.testing.assert_allclose(M.sum(0), 1.0, atol=1e-13)
                assert np.linalg.norm(M, 2) <= 1 + 1e-12


def test_filter_is_linear_nonexpansive_and_keeps_constants_and_means():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        g = rng.normal(size=(6, 8, 3))
        x, y = rng.normal(size=g.shape), rng.normal(size=g.shape)
        f = lambda z: np.asarray(symmetric_bilateral_filter(z, g, radius=2, sigma_range=0.4))
        np.testing.assert_allclose(f(2 * x - 3 * y), 2 * f(x) - 3 * f(y), atol=1e-12)
        assert np.linalg.norm(f(x) - f(y)) <= np.linalg.norm(x - y)
        np.testing.assert_allclose(f(np.full(g.shape, 1.7)), 1.7, atol=1e-13)
        np.testing.assert_allclose(f(x).mean(axis=(0, 1)), x.mean(axis=(0, 1)), atol=1e-13)
        # a constant difference is kept exactly: the lemma's equality case
        d = f(x + 0.5) - f(x)
        np.testing.assert_allclose(d, 0.5, atol=1e-13)
        # weights once, applied many times, equals the one-call filter
        P = symmetric_bilateral_weights(g, radius=2, sigma_range=0.4)
        np.testing.assert_allclose(np.asarray(apply_symmetric_bilateral(x, P, radius=2)), f(x),
                                   atol=1e-13)


def test_edges_of_the_guide_are_kept_apart():
    """Two flat regions with a step of 10 sigma_r: almost no weight crosses the step."""
    with jax.enable_x64(True):
        g = np.zeros((6, 6, 1))
        g[:, 3:] = 1.0
        x = g.copy()
        out = np.asarray(symmetric_bilateral_filter(x, g, radius=2, sigma_range=0.1))
        assert np.abs(out - x).max() < 1e-10


def test_symmetric_mode_in_the_inversion_loop():
    """mode 'symmetric': x_t <- P x_t before every step, P from the loop's input latents (the
    clean latents for ddim_invert), same call shape as 'latent'."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    c = rng.normal(size=(2, 4, 8)).astype(np.float32)

    def eps_fn(z, t, ctx):
        a = jnp.asarray(SCHED.alphas_cumprod)[t]
        return (1 - a) ** 0.5 * z + 0.1 * jnp.tanh(z + jnp.mean(ctx))

    flt = BilateralFilterConfig.symmetric(radius=1, sigma_spatial=1.2, sigma_range=0.5,
                                          sinkhorn_iters=10)
    n = 6
    xT, traj = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=n, filter=flt,
                           return_trajectory=True)
    P = symmetric_bilateral_weights(x, radius=1, sigma_spatial=1.2, sigma_range=0.5,
                                    sinkhorn_iters=10)
    xs = jnp.asarray(x)
    for i, t in enumerate(SCHED.inverse_timesteps(n)):
        xs = apply_symmetric_bilateral(xs, P, radius=1)
        xs = ddim_inversion_step(SCHED, xs, eps_fn(xs, t, jnp.asarray(c)), t, n)
        np.testing.assert_allclose(np.asarray(traj[i + 1]), np.asarray(xs), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(xT))
    # also by name and as a dict
    a = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=n, filter="symmetric")
    b = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=n,
                    filter={"mode": "symmetric", "radius": 2, "sigma_range": 0.1})
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_edit_config_selects_it():
    from jaxvedit.editing.config import EditConfig
    from jaxvedit.editing.pipeline import filter_config
    cfg = EditConfig(filter="symmetric", filter_radius=1, filter_sigma_range=0.2)
    flt = filter_config(cfg)
    assert flt.mode == "symmetric" and flt.radius == 1 and flt.resolved_sigma_range == 0.2


def test_input_errors():
    g = np.zeros((4, 4, 1))
    with pytest.raises(ValueError, match="radius must be an integer >= 1"):
        symmetric_bilateral_weights(g, radius=0)
    with pytest.raises(ValueError, match="sigma_range must be > 0"):
        symmetric_bilateral_weights(g, sigma_range=0.0)
    with pytest.raises(ValueError, match="sinkhorn_iters must be an integer >= 0"):
        symmetric_bilateral_weights(g, sinkhorn_iters=-1)
    with pytest.raises(ValueError, match="range_mode must be one of"):
        symmetric_bilateral_weights(g, range_mode="local")
    with pytest.raises(ValueError, match="guide contains non-finite"):
        symmetric_bilateral_weights(np.full((4, 4, 1), np.nan))
    with pytest.raises(ValueError, match="guide shape"):
        symmetric_bilateral_filter(np.zeros((4, 4, 1)), np.zeros((4, 5, 1)))
    P = symmetric_bilateral_weights(g, radius=1)
    with pytest.raises(ValueError, match="do not fit x"):
        apply_symmetric_bilateral(np.zeros((4, 4, 1)), P, radius=2)
    with pytest.raises(ValueError, match="sinkhorn_iters must be an integer >= 0"):
        BilateralFilterConfig.symmetric(sinkhorn_iters=-2)
    with pytest.raises(ValueError, match="window must be"):
        BilateralFilterConfig.symmetric(window="round")
