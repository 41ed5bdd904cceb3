"""Diffusion MSE and the gated total loss (SPEC §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvedit.losses.diffusion import diffusion_loss
from jaxvedit.losses.temporal import cross_timestep_loss, temporal_consistency_loss
from jaxvedit.losses.total import LossConfig, temporal_gate, temporal_term, total_loss


def _r(*shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


def test_diffusion_mse():
    a, b = _r(4, 8, 8, 4), _r(4, 8, 8, 4, seed=1)
    ref = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    assert abs(float(diffusion_loss(a, b)) - ref) < 1e-6 * ref
    per = diffusion_loss(a, b, per_sample=True)
    assert per.shape == (4,)
    np.testing.assert_allclose(per.mean(), ref, rtol=1e-5)
    mask = jnp.zeros((4, 8, 8, 1)).at[:, :4].set(1.0)
    ref_m = np.mean((np.asarray(a) - np.asarray(b))[:, :4] ** 2)
    np.testing.assert_allclose(diffusion_loss(a, b, mask=mask), ref_m, rtol=1e-5)
    assert diffusion_loss(a.astype(jnp.bfloat16), b).dtype == jnp.float32
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(a, b[:2])


def test_total_loss_gate_and_weights():
    eps, noise = _r(4, 8, 8, 4), _r(4, 8, 8, 4, seed=1)
    feats = {"up.1": _r(4, 64, 16, seed=2), "up.2": _r(4, 16, 32, seed=3)}
    l_diff = float(diffusion_loss(eps, noise))
    l_temp = np.mean([float(temporal_consistency_loss(f)) for f in feats.values()])
    cfg = LossConfig()
    assert (cfg.w_diff, cfg.lambda_temporal, cfg.tau) == (1.0, 0.01, 0.5)

    f = jax.jit(lambda t: total_loss(eps, noise, feats, t, cfg))
    hi, parts = f(jnp.asarray(500))  # t >= tau * T: temporal term on
    lo, parts_lo = f(jnp.asarray(499))  # below: off
    assert f._cache_size() == 1
    np.testing.assert_allclose(float(hi), l_diff + 0.01 * l_temp, rtol=1e-5)
    np.testing.assert_allclose(float(lo), l_diff, rtol=1e-6)
    assert float(parts["gate"]) == 1.0 and float(parts_lo["gate"]) == 0.0
    np.testing.assert_allclose(float(parts["temporal"]), l_temp, rtol=1e-5)

    p4 = LossConfig.paper004()  # eq. 6 weighting
    val, _ = total_loss(eps, noise, feats, 900, p4)
    np.testing.assert_allclose(float(val), 0.01 * l_diff + l_temp, rtol=1e-5)
    tok, _ = total_loss(eps, noise, feats, 900, LossConfig(temporal_mode="token"))
    l_tok = np.mean([float(temporal_consistency_loss(v, mode="token")) for v in feats.values()])
    np.testing.assert_allclose(float(tok), l_diff + 0.01 * l_tok, rtol=1e-5)
    np.testing.assert_array_equal(temporal_gate(jnp.array([0, 499, 500, 999])), [0, 0, 1, 1])


def test_gradient_flows_only_when_gated_on():
    noise = _r(4, 2, 2, 1)
    feats = _r(4, 6, 5, seed=4)

    def loss(fe, t):
        return total_loss(noise, noise, fe, t)[0]

    g_on = jax.grad(loss)(feats, 800)
    g_off = jax.grad(loss)(feats, 100)
    assert float(jnp.abs(g_on).max()) > 0 and float(jnp.abs(g_off).max()) == 0.0


def test_frames_per_clip_and_errors():
    eps = _r(8, 4, 4, 4)
    feats = _r(8, 10, 6, seed=5)  # two clips of 4 frames
    t = jnp.array([900] * 4 + [100] * 4)
    val, parts = total_loss(eps, eps, feats, t, frames_per_clip=4)
    clip0 = float(temporal_consistency_loss(feats[:4]))
    np.testing.assert_allclose(float(val), 0.01 * clip0 / 2, rtol=1e-5)  # second clip gated off
    assert float(parts["gate"]) == 0.5
    with pytest.raises(ValueError, match="at least 3 frames"):
        total_loss(eps[:2], eps[:2], feats[:2], 900)
    with pytest.raises(ValueError, match="at least 3 frames"):  # gated off: still an error
        total_loss(eps[:2], eps[:2], feats[:2], 10)
    with pytest.raises(ValueError, match="whole number of clips"):
        total_loss(eps, eps, feats[:7], t, frames_per_clip=4)
    with pytest.raises(ValueError, match="unknown temporal_form"):
        LossConfig(temporal_form="pairs")


def test_cross_timestep_form():
    eps = _r(2, 4, 4, 4)
    a, b = _r(2, 16, 8, seed=6), _r(2, 16, 8, seed=7)
    cfg = LossConfig(temporal_form="cross_timestep")
    val, parts = total_loss(eps, eps, {"layer": (a, b)}, 700, cfg)
    ref = float(cross_timestep_loss(a, b))
    assert ref > 0  # a real cosine, not +-1 over a size-1 axis
    np.testing.assert_allclose(float(val), 0.01 * ref, rtol=1e-5)
    np.testing.assert_allclose(float(temporal_term((a, b), form="cross_timestep")), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="pair"):
        temporal_term([a], form="cross_timestep")
