"""Temporal consistency loss (paper 004 eq. 21-22) against a direct NumPy float64 version."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxvedit.losses import cross_timestep_loss, frame_similarities, temporal_consistency_loss


def np_loss(F):
    """Direct float64 implementation of eq. 21-22 and its analytic gradient (eq. 24, 33)."""
    F = np.asarray(F, np.float64)
    T = F.shape[0]
    f = F.reshape(T, -1)
    n = np.linalg.norm(f, axis=1)
    s = np.array([f[t] @ f[t + 1] / (n[t] * n[t + 1]) for t in range(T - 1)])
    loss = sum((s[t] - s[t - 1]) ** 2 for t in range(1, T - 1)) / (T - 1)
    # dL/ds
    gs = np.zeros(T - 1)
    for t in range(1, T - 1):
        d = s[t] - s[t - 1]
        gs[t] += 2 * d / (T - 1)
        gs[t - 1] -= 2 * d / (T - 1)
    g = np.zeros_like(f)
    for t in range(T - 1):  # eq. 24 for both arguments
        a, b = f[t], f[t + 1]
        g[t] += gs[t] * (b / (n[t] * n[t + 1]) - s[t] * a / n[t] ** 2)
        g[t + 1] += gs[t] * (a / (n[t] * n[t + 1]) - s[t] * b / n[t + 1] ** 2)
    return loss, g.reshape(F.shape)


@pytest.mark.parametrize("T", [3, 4, 7])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)])
def test_matches_numpy_float64(T, shape):
    rng = np.random.default_rng(T)
    F = rng.normal(size=(T, *shape))
    ref_loss, ref_grad = np_loss(F)
    with jax.enable_x64(True):
        x = jnp.asarray(F)
        assert x.dtype == jnp.float64
        loss, grad = jax.value_and_grad(temporal_consistency_loss)(x)
        assert loss.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-10, atol=1e-12)


def test_float32_default_dtype():
    F = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    loss = temporal_consistency_loss(jnp.asarray(F))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), np_loss(F)[0], rtol=1e-4, atol=1e-6)
    assert temporal_consistency_loss(jnp.asarray(F, jnp.bfloat16)).dtype == jnp.float32


def test_check_grads():
    F = np.random.default_rng(1).normal(size=(5, 3, 2))
    with jax.enable_x64(True):
        check_grads(temporal_consistency_loss, (jnp.asarray(F),), order=2, modes=("rev", "fwd"))
        check_grads(lambda x: temporal_consistency_loss(x, mode="token"), (jnp.asarray(F),),
                    order=1)


@pytest.mark.parametrize("T", [0, 1, 2])
def test_too_few_frames_raises(T):
    with pytest.raises(ValueError, match="at least 3 frames"):
        temporal_consistency_loss(jnp.ones((T, 4)))


def test_token_mode():
    rng = np.random.default_rng(2)
    F = rng.normal(size=(3, 4, 5))  # T, tokens, C
    s = np.asarray(frame_similarities(jnp.asarray(F, jnp.float32), mode="token"))
    ref = [np.mean([F[t, n] @ F[t + 1, n] / np.linalg.norm(F[t, n]) / np.linalg.norm(F[t + 1, n])
                    for n in range(4)]) for t in range(2)]
    np.testing.assert_allclose(s, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown mode"):
        frame_similarities(jnp.asarray(F), mode="pixel")


def test_constant_and_known_values():
    # identical frames: all s_t = 1, loss 0; alternating sign pattern: s = (1, -1) -> loss 4/2
    x = jnp.ones((4, 3))
    assert float(temporal_consistency_loss(x)) == 0.0
    F = jnp.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(float(temporal_consistency_loss(F)), 2.0, rtol=1e-6)


def test_cross_timestep_loss():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 4, 4, 3))
    b = rng.normal(size=(2, 4, 4, 3))
    with jax.enable_x64(True):
        got = float(cross_timestep_loss(jnp.asarray(a), jnp.asarray(b)))
    ca = a[0].ravel() @ a[1].ravel() / np.linalg.norm(a[0]) / np.linalg.norm(a[1])
    cb = b[0].ravel() @ b[1].ravel() / np.linalg.norm(b[0]) / np.linalg.norm(b[1])
    np.testing.assert_allclose(got, (ca - cb) ** 2, rtol=1e-12)
    assert abs(ca) < 0.99  # a real cosine, not the authors' size-1-axis +-1
    with pytest.raises(ValueError, match=r"shape \(2, \.\.\.\)"):
        cross_timestep_loss(jnp.ones((3, 4)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        cross_timestep_loss(jnp.ones((2, 4)), jnp.ones((2, 5)))
