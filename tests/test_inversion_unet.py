"""End to end on the Flax UNet port with random tiny weights: invert a few frames and
reconstruct them by DDIM sampling (eta 0, no filter); the features filter through the UNet's
feature hooks."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.diffusion import (
    BilateralFilterConfig,
    ddim_invert,
    ddim_sample,
    default_feature_paths,
    sd15_schedule,
)
from jaxvedit.diffusion import inversion as inv_mod
from jaxvedit.models.hooks import FeatureHooks
from jaxvedit.models.unet import UNet2DConditionModel

TINY = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=32, attention_head_dim=4, sample_size=8)
SCHED = sd15_schedule()


def _unet(output_scale=1.0, seed=0):
    """The tiny UNet with random weights drawn in NumPy (kernels N(0, 1/fan_in), biases
    N(0, 0.1^2), norm scales 1 + N(0, 0.1^2)): building it through its initialisers compiles one
    XLA program per parameter shape (~20 s on the CI machine), this takes ~1 s."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel.from_config(TINY, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
        name = [n for n in names if n != "value"][-1]
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "kernel":
            w = z / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            w = 1 + 0.1 * z
        else:
            w = 0.1 * z
        if names[0] == "conv_out":  # a smoother predictor: the same random net, output scaled
            w = w * output_scale
        return jnp.asarray(w, leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


def _frames(seed=0, t=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(t, 8, 8, 4)).astype(np.float32),
            rng.normal(size=(t, 7, 32)).astype(np.float32))


def _rel_rms(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)) / jnp.std(b))


@pytest.fixture(scope="module")
def reconstruction_errors():
    x, ctx = _frames()
    errs = {}
    size = inv_mod._ddim_loop._cache_size()
    for scale in (1.0, 0.1):
        unet = _unet(scale)
        for n in (10, 50):
            xT, traj = ddim_invert(unet, x, ctx, SCHED, num_inference_steps=n, return_trajectory=True)
            assert traj.shape == (n + 1,) + x.shape and bool(jnp.all(jnp.isfinite(traj)))
            # (return_trajectory=True too: the inversion's compiled program is reused)
            rec, _ = ddim_sample(unet, xT, ctx, SCHED, num_inference_steps=n, return_trajectory=True)
            errs[scale, n] = _rel_rms(rec, x)
            if scale == 1.0 and n == 10:
                errs["plain_xT"] = xT
    # two programs (10 and 50 steps), shared by inversion and sampling and by both weight sets
    assert inv_mod._ddim_loop._cache_size() - size == 2
    return errs


def test_reconstruction_error_is_reported_and_bounded(reconstruction_errors):
    e = {k: v for k, v in reconstruction_errors.items() if k != "plain_xT"}
    for (scale, n), v in sorted(e.items()):
        print(f"[inversion/unet] tiny random UNet (output x{scale}), {n} steps, eta 0, no filter: "
              f"reconstruction rel. RMS error {v:.4f}")
    # DDIM inversion is exact only for an x-independent predictor; its error shrinks with the
    # step size and with the predictor's sensitivity to x (paper 004 Lemma C.8's constant C)
    assert e[1.0, 50] < e[1.0, 10] and e[0.1, 50] < e[0.1, 10]
    assert e[0.1, 50] < e[1.0, 50]
    assert e[1.0, 50] < 1.5   # raw random weights: eps std ~0.6, large Lipschitz constant
    assert e[0.1, 50] < 0.05  # smoother random predictor: close reconstruction


def test_features_filter_through_unet_hooks(reconstruction_errors):
    unet = _unet()
    x, ctx = _frames()
    n = 10
    paths = default_feature_paths(unet)
    assert paths == ("up_blocks.1.attentions.*.transformer_blocks.*.attn1",)
    flt = BilateralFilterConfig.features(kernel_size=3, sigma_spatial=1.0, sigma_range=0.5)
    ours = ddim_invert(unet, x, ctx, SCHED, num_inference_steps=n, filter=flt)
    plain = reconstruction_errors["plain_xT"]  # the same inversion without the filter
    d = float(jnp.max(jnp.abs(ours - plain)))
    print(f"[inversion/unet] features filter (k=3, sr=0.5) moves x_T by max {d:.3f}")
    assert d > 1e-4
    # a vanishing range sigma leaves every frame alone: the hooked program (same compiled
    # program, new sigma values) reproduces plain inversion
    ident = BilateralFilterConfig.features(kernel_size=3, sigma_spatial=1.0, sigma_range=1e-30)
    same = ddim_invert(unet, x, ctx, SCHED, num_inference_steps=n, filter=ident)
    np.testing.assert_allclose(np.asarray(same), np.asarray(plain), atol=1e-5)

    # which modules the default pattern taps (tracing only, nothing compiled)
    hooks = FeatureHooks(capture=paths)
    jax.eval_shape(lambda a, c: unet(a, 1, c, hooks=hooks), jnp.asarray(x), jnp.asarray(ctx))
    assert sorted(hooks.captured) == ["up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                                      "up_blocks.1.attentions.1.transformer_blocks.0.attn1"]
    assert hooks.captured[sorted(hooks.captured)[0]].shape == (3, 8 * 8, 32)  # (frames, H*W, C)


@pytest.mark.slow
def test_default_feature_paths_on_full_sd15_architecture():
    """SD1.5: the default features-filter pattern taps the three attn1 outputs of up_blocks.3,
    (frames, 64*64, 320) at 64x64 latents (abstract evaluation only: no weights, no compile)."""
    from reference import SD15_UNET_CONFIG

    unet = nnx.eval_shape(lambda: UNet2DConditionModel.from_config(SD15_UNET_CONFIG, rngs=nnx.Rngs(0)))
    paths = default_feature_paths(unet)
    assert paths == ("up_blocks.3.attentions.*.transformer_blocks.*.attn1",)
    hooks = FeatureHooks(capture=paths)
    graphdef, state = nnx.split(unet)
    jax.eval_shape(lambda s, a, c: nnx.merge(graphdef, s)(a, 1, c, hooks=hooks), state,
                   jax.ShapeDtypeStruct((2, 64, 64, 4), jnp.float32),
                   jax.ShapeDtypeStruct((2, 77, 768), jnp.float32))
    assert sorted(hooks.captured) == [f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)]
    assert all(v.shape == (2, 64 * 64, 320) for v in hooks.captured.values())
