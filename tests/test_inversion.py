"""ddim_invert / ddim_sample as one compiled program: compile counts, filters on/off, CFG,
features filter through hooks, NNX modules as predictors (analytic predictors only; the tiny
UNet end-to-end test is tests/test_inversion_unet.py)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax import monitoring

from jaxvedit.diffusion import (
    BilateralFilterConfig,
    bilateral_filter_frames,
    bilateral_filter_latent,
    ddim_inversion_step,
    ddim_invert,
    ddim_sample,
    sd15_schedule,
)
from jaxvedit.diffusion import inversion as inv_mod
from jaxvedit.models.hooks import emit, hooks_active

SCHED = sd15_schedule()
N = 10
FEAT = "up_blocks.3.attentions.0.transformer_blocks.0.attn1"


def eps_fn(x, t, ctx):
    c = jnp.mean(ctx, axis=(1, 2)).reshape(-1, 1, 1, 1)
    a = jnp.asarray(SCHED.alphas_cumprod)[t]
    return (1 - a) ** 0.5 * x + 0.1 * jnp.tanh(x + c)


def eps_hooked(x, t, ctx, hooks=None):
    """An analytic predictor with one hookable 'self-attention output' (B, H*W, C)."""
    B, H, W, C = x.shape
    with hooks_active(hooks):
        h = emit(FEAT, jnp.tanh(x).reshape(B, H * W, C))
    return eps_fn(x, t, ctx) + 0.2 * h.reshape(x.shape)


def _data(seed, b=3, h=6, w=5, c=4, l=4, d=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, h, w, c)).astype(np.float32), rng.normal(size=(b, l, d)).astype(np.float32))


class _CompileCounter:
    def __init__(self):
        self.n = 0

    def __call__(self, event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            self.n += 1


_COUNTER = _CompileCounter()
monitoring.register_event_duration_secs_listener(_COUNTER)


def test_inversion_compiles_once_per_shape():
    flt = BilateralFilterConfig.latent(radius=1, sigma_range=0.3)
    x1, c1 = _data(0)
    x2, c2 = _data(1)
    size0, traces0 = inv_mod._ddim_loop._cache_size(), inv_mod._Trace.count
    a = ddim_invert(eps_fn, x1, c1, SCHED, num_inference_steps=N, filter=flt, guidance_scale=2.0,
                    uncond_context=np.zeros_like(c1))
    compiles_before = _COUNTER.n
    # new values everywhere: latents, contexts, guidance scale, filter sigmas -> no new compilation
    b = ddim_invert(eps_fn, x2, c2, SCHED, num_inference_steps=N, guidance_scale=5.0, uncond_context=c1,
                    filter=BilateralFilterConfig.latent(radius=1, sigma_range=0.7, sigma_spatial=2.0))
    jax.block_until_ready(b)
    assert _COUNTER.n == compiles_before, "second call with new values recompiled"
    assert inv_mod._ddim_loop._cache_size() - size0 == 1
    assert inv_mod._Trace.count - traces0 == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # a new shape compiles once more
    x3, c3 = _data(2, b=2, h=4, w=4)
    ddim_invert(eps_fn, x3, c3, SCHED, num_inference_steps=N, filter=flt, guidance_scale=2.0,
                uncond_context=c3)
    assert inv_mod._ddim_loop._cache_size() - size0 == 2
    print(f"[inversion] compilations of the inversion program over 3 calls (2 shapes): "
          f"{inv_mod._Trace.count - traces0}")


def test_filter_off_is_plain_ddim_inversion():
    x, c = _data(3)
    plain = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N)
    off1 = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N, filter="none")
    off2 = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N, filter=BilateralFilterConfig.none())
    np.testing.assert_array_equal(np.asarray(off1), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(off2), np.asarray(plain))
    # the same as stepping by hand with the per-step function
    xs = jnp.asarray(x)
    for t in SCHED.inverse_timesteps(N):
        xs = ddim_inversion_step(SCHED, xs, eps_fn(xs, t, jnp.asarray(c)), t, N)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(xs), atol=1e-5)
    on = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N, filter="latent")
    assert float(jnp.max(jnp.abs(on - plain))) > 1e-3


@pytest.mark.parametrize("range_mode", ["absolute", "relative"])
def test_latent_filter_is_eq_12(range_mode):
    """x'_t = B(x_t) before each step; the UNet and the update both see x'_t (eq. 12)."""
    x, c = _data(4)
    flt = BilateralFilterConfig.latent(radius=2, sigma_spatial=1.2, sigma_range=0.5, range_mode=range_mode)
    xT, traj = ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N, filter=flt, return_trajectory=True)
    xs = jnp.asarray(x)
    for i, t in enumerate(SCHED.inverse_timesteps(N)):
        xs = bilateral_filter_latent(xs, radius=2, sigma_spatial=1.2, sigma_range=0.5, range_mode=range_mode)
        xs = ddim_inversion_step(SCHED, xs, eps_fn(xs, t, jnp.asarray(c)), t, N)
        np.testing.assert_allclose(np.asarray(traj[i + 1]), np.asarray(xs), atol=1e-5)
    assert traj.shape == (N + 1,) + x.shape
    np.testing.assert_array_equal(np.asarray(traj[0]), x)
    np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(xT))


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_features_filter_runs_along_frames_per_cfg_branch(cfg_scale):
    x, c = _data(5, b=4)
    u = np.zeros_like(c)
    flt = BilateralFilterConfig.features(feature_paths=(FEAT,), kernel_size=3, sigma_range=0.8)
    out = ddim_invert(eps_hooked, x, c, SCHED, num_inference_steps=N, filter=flt, guidance_scale=cfg_scale,
                      uncond_context=u)

    def filtered_pred(xs, t, ctx):
        B, H, W, C = xs.shape
        h = bilateral_filter_frames(jnp.tanh(xs).reshape(B, H * W, C), kernel_size=3, sigma_range=0.8)
        return eps_fn(xs, t, ctx) + 0.2 * h.reshape(xs.shape)

    xs = jnp.asarray(x)
    for t in SCHED.inverse_timesteps(N):
        e = filtered_pred(xs, t, jnp.asarray(c))
        if cfg_scale != 1.0:  # each branch filtered over its own frames
            e_u = filtered_pred(xs, t, jnp.asarray(u))
            e = e_u + cfg_scale * (e - e_u)
        xs = ddim_inversion_step(SCHED, xs, e, t, N)
    np.testing.assert_allclose(np.asarray(out), np.asarray(xs), atol=1e-5)
    plain = ddim_invert(eps_hooked, x, c, SCHED, num_inference_steps=N, guidance_scale=cfg_scale, uncond_context=u)
    assert float(jnp.max(jnp.abs(out - plain))) > 1e-4


def test_features_filter_errors():
    x, c = _data(6)
    with pytest.raises(KeyError, match="matched no module"):
        ddim_invert(eps_hooked, x, c, SCHED, num_inference_steps=2,
                    filter=BilateralFilterConfig.features(feature_paths=("up_blocks.9.*",)))
    with pytest.raises(ValueError, match="hooks"):
        ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=2, filter="features")


def test_reconstruction_with_exact_predictor():
    """For an x-independent predictor DDIM inversion followed by sampling is exact."""
    x, c = _data(7)

    def eps_const(xs, t, ctx):
        return jnp.broadcast_to(jnp.sin(jnp.mean(ctx, axis=(1, 2)) + 0.001 * t).reshape(-1, 1, 1, 1), xs.shape)

    for spacing in ("leading", "trailing"):
        s = SCHED.replace(timestep_spacing=spacing)
        xT = ddim_invert(eps_const, x, c, s, num_inference_steps=N)
        rec = ddim_sample(eps_const, xT, c, s, num_inference_steps=N)
        assert float(jnp.max(jnp.abs(rec - x))) < 1e-4


class _TinyPredictor(nnx.Module):
    def __init__(self, c, d, rngs):
        self.lin = nnx.Linear(c, c, rngs=rngs)
        self.ctx = nnx.Linear(d, c, rngs=rngs)

    def __call__(self, x, t, ctx, hooks=None):
        return 0.1 * self.lin(x) + 0.1 * self.ctx(ctx.mean(1))[:, None, None, :] + 1e-4 * t


def test_nnx_module_weights_are_arguments():
    x, c = _data(8)
    m1 = _TinyPredictor(4, 8, nnx.Rngs(0))
    m2 = _TinyPredictor(4, 8, nnx.Rngs(1))
    a = ddim_invert(m1, x, c, SCHED, num_inference_steps=N)
    size = inv_mod._ddim_loop._cache_size()
    compiles = _COUNTER.n
    b = ddim_invert(m2, x, c, SCHED, num_inference_steps=N)  # same structure, new weights
    jax.block_until_ready(b)
    assert inv_mod._ddim_loop._cache_size() == size and _COUNTER.n == compiles
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    # and the result is that of the module called directly
    ref = ddim_invert(lambda xs, t, ctx: m2(xs, t, ctx), x, c, SCHED, num_inference_steps=N)
    np.testing.assert_allclose(np.asarray(b), np.asarray(ref), atol=1e-6)


class _UnhashablePredictor:
    __hash__ = None

    def __call__(self, x, t, ctx):
        return eps_fn(x, t, ctx)


def test_unhashable_callable_predictor():
    x, c = _data(10)
    f = _UnhashablePredictor()
    a = ddim_invert(f, x, c, SCHED, num_inference_steps=N)
    size = inv_mod._ddim_loop._cache_size()
    b = ddim_invert(f, x + 1, c, SCHED, num_inference_steps=N)  # same object: no recompilation
    assert inv_mod._ddim_loop._cache_size() == size
    np.testing.assert_allclose(np.asarray(a), np.asarray(ddim_invert(eps_fn, x, c, SCHED, num_inference_steps=N)),
                               atol=1e-6)
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_input_errors():
    x, c = _data(9)
    with pytest.raises(ValueError, match="latents"):
        ddim_invert(eps_fn, x[0], c, SCHED)
    with pytest.raises(ValueError, match="batch"):
        ddim_invert(eps_fn, x, c[:2], SCHED)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(eps_fn, x, c, SCHED, eta=-1.0)
    with pytest.raises(ValueError, match="filter mode"):
        ddim_invert(eps_fn, x, c, SCHED, filter="gaussian")
    with pytest.raises(ValueError, match="radius"):
        BilateralFilterConfig.latent(radius=0)
    with pytest.raises(ValueError, match="kernel_size"):
        BilateralFilterConfig.features(kernel_size=4)
    # context (L, D) / (1, L, D) broadcasts over the frames
    a = ddim_invert(eps_fn, x, c[:1], SCHED, num_inference_steps=3)
    b = ddim_invert(eps_fn, x, np.broadcast_to(c[:1], c.shape), SCHED, num_inference_steps=3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
