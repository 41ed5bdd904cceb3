"""``JAXVEDIT_GROUPNORM=custom-vjp`` (``jaxvedit.models.groupnorm_kernels``, a speed lever of
issue 15): GroupNorm (+ fused SiLU) with a hand-written backward. Values and gradients (x, gamma,
beta) against a float64 definition (NumPy forward, float64 autodiff of the plain formula) and
against the plain path; its saved residuals; the tiny UNet under it; the default path unchanged."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jaxvedit.models import groupnorm_kernels as gk
from jaxvedit.models import layers
from jaxvedit.models.layers import GroupNorm, Precision, norm_statistics

GROUPS, EPS = 4, 1e-5


def _inputs(shape=(2, 6, 5, 24), offset=1.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0 + offset  # non-zero mean per group
    x += rng.standard_normal(shape[-1]) * 0.5      # and per channel
    c = shape[-1]
    return (x, 1.0 + 0.3 * rng.standard_normal(c), 0.2 * rng.standard_normal(c),
            rng.standard_normal(shape))


def _np_reference(x, gamma, beta, silu):  # the definition, float64 NumPy
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, GROUPS, c // GROUPS)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + EPS)).reshape(x.shape) * gamma + beta
    return y / (1.0 + np.exp(-y)) if silu else y


def _jnp_definition(x, gamma, beta, silu):  # the same definition, differentiated by JAX
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, GROUPS, c // GROUPS)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / jnp.sqrt(var + EPS)).reshape(x.shape) * gamma + beta
    return jax.nn.silu(y) if silu else y


def _reference_grads(x, gamma, beta, w, silu):
    with jax.enable_x64(True):
        loss = lambda x, g, b: jnp.sum(_jnp_definition(x, g, b, silu) * w)
        return [np.asarray(a) for a in jax.grad(loss, argnums=(0, 1, 2))(
            jnp.asarray(x, jnp.float64), jnp.asarray(gamma, jnp.float64),
            jnp.asarray(beta, jnp.float64))]


def _module(gamma, beta, dtype):
    gn = GroupNorm(GROUPS, gamma.shape[0], EPS, Precision(dtype, jnp.float32))
    gn.scale.value, gn.bias.value = jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32)
    return gn


def _run(gn, x, w, silu, impl):
    """Output and gradients (x, gamma, beta) of sum(y * w), jitted, under ``impl``."""
    graphdef, state = nnx.split(gn)

    def loss(x, state):
        y = nnx.merge(graphdef, state)(x, silu=silu)
        return jnp.sum(y.astype(jnp.float32) * w), y

    with gk.groupnorm_implementation(impl):
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), (dx, dstate) = f(x, state)
    return [np.asarray(a, np.float64) for a in (y, dx, dstate["scale"].value, dstate["bias"].value)]


def _err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("silu", [False, True])
def test_custom_vjp_matches_float64_and_plain(dtype, silu):
    x, gamma, beta, w = _inputs()
    xd = jnp.asarray(x, dtype)
    x_used = np.asarray(xd, np.float64)  # the reference sees the rounded input
    want = [_np_reference(x_used, gamma, beta, silu)] + _reference_grads(x_used, gamma, beta, w, silu)
    gn = _module(gamma, beta, dtype)
    wj = jnp.asarray(w, jnp.float32)
    plain = _run(gn, xd, wj, silu, "xla")
    custom = _run(gn, xd, wj, silu, "custom-vjp")
    tol = 2e-5 if dtype == jnp.float32 else 1e-2  # bf16 output / dx: a rounding of 2^-8
    for name, c, p, r in zip(("y", "dx", "dgamma", "dbeta"), custom, plain, want):
        assert _err(c, r) <= tol, (name, _err(c, r))
        # never worse than the plain path beyond the rounding of the compute dtype
        assert _err(c, r) <= 1.5 * _err(p, r) + (1e-6 if dtype == jnp.float32 else 4e-3), \
            (name, _err(c, r), _err(p, r))
    if dtype == jnp.float32:
        assert not np.array_equal(custom[1], plain[1])  # a different computation, not renamed


def test_gradients_with_one_pass_statistics(monkeypatch):
    x, gamma, beta, w = _inputs(offset=3.0, seed=1)
    xd = jnp.asarray(x, jnp.float32)
    want = _reference_grads(x, gamma, beta, w, True)
    gn = _module(gamma, beta, jnp.float32)
    with norm_statistics("two-pass"):
        two = _run(gn, xd, jnp.asarray(w, jnp.float32), True, "custom-vjp")
    monkeypatch.setenv("JAXVEDIT_NORM_STATS", "one-pass")  # read while tracing, as the plain path
    one = _run(gn, xd, jnp.asarray(w, jnp.float32), True, "custom-vjp")
    assert not np.array_equal(one[0], two[0])
    for got in (one, two):
        assert _err(got[0], _np_reference(x, gamma, beta, True)) <= 2e-5
        for g, r in zip(got[1:], want):
            assert _err(g, r) <= 2e-5


def _residuals(f, *args):
    _, vjp = jax.vjp(f, *args)
    return jax.tree.leaves(vjp)


def test_no_float32_residual_of_activation_size():
    x, gamma, beta, _ = _inputs(shape=(2, 16, 16, 32))
    xb = jnp.asarray(x, jnp.bfloat16)
    gn = _module(gamma, beta, jnp.bfloat16)
    g, b = gn.scale.value, gn.bias.value
    graphdef, state = nnx.split(gn)

    def big_f32(impl):
        def f(x, state):
            with gk.groupnorm_implementation(impl):
                return nnx.merge(graphdef, state)(x, silu=True)
        return [r.shape for r in _residuals(f, xb, state)
                if r.dtype == jnp.float32 and r.size >= xb.size]

    assert big_f32("xla")  # the plain path keeps float32 activations (what the lever removes)
    assert big_f32("custom-vjp") == []
    saved = _residuals(lambda x, g, b: gk.group_norm(x, g, b, 8, EPS, True, False, jnp.bfloat16),
                       xb, g, b)
    assert sorted(r.size for r in saved) == [2 * 8] * 2 + [32] * 2 + [xb.size]


def test_default_and_flag_paths(monkeypatch):
    x, gamma, beta, _ = _inputs()
    xd = jnp.asarray(x, jnp.float32)
    gn = _module(gamma, beta, jnp.float32)
    monkeypatch.delenv("JAXVEDIT_GROUPNORM", raising=False)
    old = gn(xd)
    np.testing.assert_array_equal(np.asarray(gn(xd, silu=True)), np.asarray(jax.nn.silu(old)))
    with gk.groupnorm_implementation("xla"):
        np.testing.assert_array_equal(np.asarray(gn(xd)), np.asarray(old))
    monkeypatch.setenv("JAXVEDIT_GROUPNORM", "custom-vjp")  # the environment sets the default
    assert gk.current_implementation() == "custom-vjp"
    np.testing.assert_allclose(np.asarray(gn(xd, silu=True)), np.asarray(jax.nn.silu(old)), atol=2e-6)
    with gk.groupnorm_implementation("xla"):  # the context wins over the environment
        np.testing.assert_array_equal(np.asarray(gn(xd)), np.asarray(old))


def test_tuned_norms_keep_the_plain_path(monkeypatch):
    """Under a DAPE norm context a norm with a path stays the plain one (the tuned affine)."""
    x, gamma, beta, _ = _inputs()
    xd = jnp.asarray(x, jnp.float32)
    gn = _module(gamma, beta, jnp.float32)
    gn.path = "down_blocks.0.resnets.0.norm1"
    tuned = lambda path, x, normalized: normalized * 2.0 - 1.0
    token = layers._NORM_ADAPTER.set(tuned)
    try:
        want = np.asarray(jax.nn.silu(gn(xd)))
        monkeypatch.setenv("JAXVEDIT_GROUPNORM", "custom-vjp")
        np.testing.assert_array_equal(np.asarray(gn(xd, silu=True)), want)
        xn = _np_reference(x, np.ones_like(gamma), np.zeros_like(beta), False)
        np.testing.assert_allclose(want, np.asarray(jax.nn.silu(2 * xn - 1)), atol=1e-5)
    finally:
        layers._NORM_ADAPTER.reset(token)


def test_bad_implementations_are_named(monkeypatch):
    with pytest.raises(ValueError, match="GroupNorm implementation 'triton'"):
        with gk.groupnorm_implementation("triton"):
            pass
    gn = _module(np.ones(24), np.zeros(24), jnp.float32)
    monkeypatch.setenv("JAXVEDIT_GROUPNORM", "fused")
    with pytest.raises(ValueError, match="JAXVEDIT_GROUPNORM='fused': choose from"):
        gn(jnp.zeros((1, 4, 4, 24)))
    monkeypatch.setenv("JAXVEDIT_GROUPNORM", "custom-vjp")
    monkeypatch.setenv("JAXVEDIT_NORM_STATS", "welford")  # still checked on the custom path
    with pytest.raises(ValueError, match="JAXVEDIT_NORM_STATS='welford'"):
        gn(jnp.zeros((1, 4, 4, 24)))


def test_tiny_unet_forward_and_grad_under_custom_vjp(monkeypatch):
    from jaxvedit.models.tiny import TINY_UNET_CONFIG
    from jaxvedit.models.unet import UNet2DConditionModel

    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(TINY_UNET_CONFIG,
                                                                              rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)) + 0.5, jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 7, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)

    def loss(s, x):
        out = nnx.merge(graphdef, s)(x, jnp.asarray(500), ctx)
        return jnp.sum(out * w), out

    results = {}
    for impl in ("xla", "custom-vjp"):
        monkeypatch.setenv("JAXVEDIT_GROUPNORM", impl)  # read at trace time: a fresh jit each
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, out), (ds, dx) = f(state, x)
        results[impl] = (np.asarray(out), np.asarray(dx), jax.tree.map(np.asarray, ds))
    (o0, dx0, ds0), (o1, dx1, ds1) = results["xla"], results["custom-vjp"]
    np.testing.assert_allclose(o1, o0, atol=1e-5 * np.abs(o0).max())
    np.testing.assert_allclose(dx1, dx0, atol=1e-4 * np.abs(dx0).max())
    flat0, flat1 = jax.tree.leaves(ds0), jax.tree.leaves(ds1)
    assert len(flat0) == len(flat1) > 50
    for a, b in zip(flat1, flat0):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max() + 1e-7)
    assert not np.array_equal(dx1, dx0)  # the custom backward really ran


def test_bench_tiny_mode(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import groupnorm_kernels

    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(groupnorm_kernels, "TINY_SHAPES", [(2, 8, 8, 64)])  # one shape: CI time
    assert groupnorm_kernels.main(["--tiny", "--variants", "xla-two-pass", "custom-vjp", "--warmup", "0",
                 "--repeats", "1", "--chain", "1"]) == 0
    rows = json.loads((tmp_path / "groupnorm_kernels_tiny.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["xla-two-pass", "custom-vjp"]
    for plain, custom in zip(rows[::2], rows[1::2]):
        assert custom["saved MiB"] < plain["saved MiB"] / 4  # only x (bf16) and per-group stats
        assert custom["y max err"] < 0.05 and custom["dx max err"] < 0.05
        assert custom["dgamma rel err"] < 1e-5 and custom["fwd us"] > 0
