"""The Flax ControlNet against diffusers' ``ControlNetModel`` (random weights saved by diffusers,
loaded by our loader, fp32): residuals on tiny configs and the full SD1.5 config, one UNet +
ControlNet denoising step, ``from_unet``, export, and the named errors."""

import functools

import numpy as np
import pytest
import torch
from flax import nnx

import jax
import jax.numpy as jnp
from reference import SD15_UNET_CONFIG, nchw, nhwc, randomize_, rel_err

from diffusers import ControlNetModel as TorchControlNet
from diffusers import UNet2DConditionModel as TorchUNet

from jaxvedit.models.config import UnsupportedConfigError
from jaxvedit.models.controlnet import (ControlNetConfig, ControlNetModel, ControlNetParam,
                                        check_controlnet_fits_unet, controlnet_from_unet)
from jaxvedit.models.controlnet_io import load_controlnet, save_controlnet
from jaxvedit.models.loading import load_unet
from jaxvedit.models.weights import module_to_torch_state_dict

TOL = 1e-4


@functools.partial(nnx.jit, static_argnames=("guess_mode",))
def jit_call(model, *args, guess_mode=False, **kwargs):
    """One compiled forward (eager op-by-op execution compiles every primitive: slower here)."""
    if guess_mode:
        kwargs["guess_mode"] = True
    return model(*args, **kwargs)
CA, D = "CrossAttnDownBlock2D", "DownBlock2D"
TINY = {
    # SD1.5-like: two levels, two layers, conv projections, a 2x conditioning embedding, a BGR
    # condition; plain scale and guess mode
    "a": (dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
               down_block_types=(CA, D), cross_attention_dim=32, attention_head_dim=4,
               controlnet_conditioning_channel_order="bgr",
               conditioning_embedding_out_channels=(8, 16)), (4, 4), [(False, 1.0), (True, 0.7)]),
    # everything else at once: attention below the top level only, 2 transformer layers,
    # per-block num_attention_heads, linear projections, shifted sinusoids, 3 latent channels,
    # odd latent size, a one-channel condition, global pooling (shuffle ControlNets)
    "b": (dict(block_out_channels=(16, 32), layers_per_block=2, norm_num_groups=4,
               down_block_types=(D, CA), transformer_layers_per_block=2,
               num_attention_heads=(2, 4), cross_attention_dim=12, in_channels=3,
               use_linear_projection=True, flip_sin_to_cos=False, freq_shift=1,
               conditioning_channels=1, global_pool_conditions=True,
               conditioning_embedding_out_channels=(4, 8, 8)), (5, 6), [(False, 0.5), (True, 1.3)]),
}


def _inputs(ref, latent_hw, batch=2, ctx_len=7, seed=0):
    rng = np.random.RandomState(seed)
    c = ref.config
    f = 2 ** (len(c.conditioning_embedding_out_channels) - 1)
    x = rng.randn(batch, c.in_channels, *latent_hw).astype(np.float32)
    ctx = rng.randn(batch, ctx_len, c.cross_attention_dim).astype(np.float32)
    cond = rng.rand(batch, c.conditioning_channels, f * latent_hw[0], f * latent_hw[1]).astype(np.float32)
    t = np.array([1, 981][:batch], np.int64)
    return x, t, ctx, cond


def _compare(ref, ours, latent_hw, cases, batch=2, ctx_len=7):
    x, t, ctx, cond = _inputs(ref, latent_hw, batch, ctx_len)
    errs = []
    for guess, scale in cases:
        with torch.no_grad():
            d_ref, m_ref = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                               torch.from_numpy(cond), conditioning_scale=scale, guess_mode=guess,
                               return_dict=False)
        d, m = jit_call(ours, jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx),
                        jnp.asarray(nhwc(cond)), conditioning_scale=scale, guess_mode=guess)
        assert len(d) == len(d_ref)
        errs += [rel_err(nchw(a), b.numpy()) for a, b in zip(d, d_ref)]
        errs.append(rel_err(nchw(m), m_ref.numpy()))
    return max(errs)


@pytest.mark.parametrize("name", ["b"])  # "a"'s features: the step test below
def test_tiny_controlnet_residuals_match_diffusers(tmp_path, name):
    config, hw, cases = TINY[name]
    torch.manual_seed(0)
    ref = randomize_(TorchControlNet(**config).eval(), seed=ord(name))
    ref.save_pretrained(tmp_path / "cn")
    ours = load_controlnet(tmp_path / "cn")
    err = _compare(ref, ours, hw, cases)
    print(f"ControlNet parity {name}: max|diff|/std over all residuals = {err:.3e}")
    assert err <= TOL


def test_unet_with_controlnet_step_matches_diffusers(tmp_path):
    """One denoising step: diffusers' UNet fed diffusers' residuals vs ours fed ours (an
    SD1.5-shaped from_unet ControlNet with random weights, a BGR condition); the residuals too."""
    ucfg = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                down_block_types=(CA, D), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=4)
    torch.manual_seed(0)
    tu = randomize_(TorchUNet(**ucfg).eval(), 1)
    tcn = randomize_(TorchControlNet.from_unet(tu, conditioning_embedding_out_channels=(8, 16),
                                               controlnet_conditioning_channel_order="bgr").eval(), 2)
    tu.save_pretrained(tmp_path / "unet")
    tcn.save_pretrained(tmp_path / "cn")
    unet, cn = load_unet(tmp_path), load_controlnet(tmp_path / "cn")
    check_controlnet_fits_unet(cn, unet)
    x, t, ctx, cond = _inputs(tcn, (8, 8))
    with torch.no_grad():
        d, m = tcn(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                   torch.from_numpy(cond), conditioning_scale=0.9, return_dict=False)
        ref = tu(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                 down_block_additional_residuals=d, mid_block_additional_residual=m).sample.numpy()
        plain = tu(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    xs, cs = jnp.asarray(nhwc(x)), jnp.asarray(nhwc(cond))

    @jax.jit
    def step(cn_state, unet_state, xs, t, ctx, cs):
        down, mid = nnx.merge(cn_def, cn_state)(xs, t, ctx, cs, conditioning_scale=0.9)
        eps = nnx.merge(unet_def, unet_state)(xs, t, ctx, down_block_additional_residuals=down,
                                               mid_block_additional_residual=mid)
        return down, mid, eps

    (cn_def, cn_state), (unet_def, unet_state) = nnx.split(cn), nnx.split(unet)
    down, mid, eps = step(cn_state, unet_state, xs, jnp.asarray(t), jnp.asarray(ctx), cs)
    res_err = max([rel_err(nchw(a), b.numpy()) for a, b in zip(down, d)] + [rel_err(nchw(mid), m.numpy())])
    err = rel_err(nchw(eps), ref)
    print(f"ControlNet residuals (from_unet, BGR): {res_err:.3e}; UNet + ControlNet step: "
          f"max|diff|/std = {err:.3e} (residuals move eps by {rel_err(plain, ref):.3f} std)")
    assert res_err <= TOL and err <= TOL
    assert rel_err(plain, ref) > 100 * TOL  # the residuals matter: the comparison can fail


def test_from_unet_as_diffusers(tmp_path):
    ucfg = dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
                down_block_types=(CA, D), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=4, in_channels=4)
    tu = randomize_(TorchUNet(**ucfg).eval(), 3)
    tu.save_pretrained(tmp_path / "unet")
    unet = load_unet(tmp_path)
    ref = TorchControlNet.from_unet(tu, conditioning_embedding_out_channels=(8, 16, 32))
    ours = controlnet_from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    for key in ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim",
                "attention_head_dim", "conditioning_embedding_out_channels", "in_channels",
                "use_linear_projection", "norm_num_groups"):
        a, b = getattr(ours.config, key), ref.config[key]
        assert (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b), key
    sd_ref = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    sd = module_to_torch_state_dict(ours)
    assert set(sd) == set(sd_ref)
    for k, v in sd.items():
        assert v.shape == sd_ref[k].shape, k
        if k.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")):
            np.testing.assert_array_equal(v, sd_ref[k], err_msg=k)  # copied from the UNet
        elif k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.",
                           "controlnet_cond_embedding.conv_out.")):
            assert not v.any() and not sd_ref[k].any(), k  # zero convolutions
        else:  # torch's default init of the conditioning embedding
            bound = 1 / np.sqrt(np.prod(v.shape[1:]) if v.ndim == 4 else
                                np.prod(sd[k.replace("bias", "weight")].shape[1:]))
            assert np.abs(v).max() <= bound + 1e-7 and np.abs(v).max() > 0.3 * bound, k
    # (zero convolutions: a fresh ControlNet's residuals are zero, the UNet's output unchanged)
    # the copies are independent buffers (the ControlNet is trained with donated state)
    assert ours.conv_in.kernel.value is not unet.conv_in.kernel.value
    assert isinstance(ours.conv_in.kernel, ControlNetParam)


def test_save_controlnet_loads_in_diffusers(tmp_path):
    config = TINY["a"][0]
    ref = randomize_(TorchControlNet(**config).eval(), seed=5)
    ref.save_pretrained(tmp_path / "a")
    ours = load_controlnet(tmp_path / "a")
    save_controlnet(ours, tmp_path / "b")
    back = TorchControlNet.from_pretrained(tmp_path / "b").eval()
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    diff = {k: (back.config[k], v) for k, v in ref.config.items()
            if not k.startswith("_") and norm(back.config[k]) != norm(v)}
    assert not diff, diff
    sd_back, sd_ref = back.state_dict(), ref.state_dict()
    assert set(sd_back) == set(sd_ref)
    for k, v in sd_ref.items():
        np.testing.assert_array_equal(sd_back[k].numpy(), v.numpy(), err_msg=k)


def test_errors_are_named(tmp_path):
    cfg_a = ControlNetConfig.from_dict(TINY["a"][0])
    unet_cfg = {k: v for k, v in SD15_UNET_CONFIG.items()}
    from jaxvedit.models.unet import UNetConfig

    with pytest.raises(ValueError, match="does not fit the UNet.*block_out_channels"):
        check_controlnet_fits_unet(cfg_a, UNetConfig.from_dict(unet_cfg))
    with pytest.raises(ValueError, match="does not fit the UNet.*cross_attention_dim"):
        check_controlnet_fits_unet(ControlNetConfig(cross_attention_dim=1024),
                                   UNetConfig.from_dict(unet_cfg))
    with pytest.raises(UnsupportedConfigError, match="class_embed_type"):
        ControlNetConfig.from_dict({**TINY["a"][0], "class_embed_type": "timestep"})
    # shape checks run while tracing: abstract models (nnx.eval_shape), no computation
    cn = nnx.eval_shape(lambda: ControlNetModel(cfg_a))
    cn_def, cn_state = nnx.split(cn)
    x, ctx = jnp.zeros((2, 4, 4, 4)), jnp.zeros((2, 3, 32))

    def trace(cond):
        return jax.eval_shape(lambda s: nnx.merge(cn_def, s)(x, 1, ctx, cond), cn_state)

    with pytest.raises(ValueError, match="needs a conditioning image"):
        trace(None)
    with pytest.raises(ValueError, match=r"must be \(B, H, W, 3\)"):
        trace(jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"conditioning image of size \(4, 4\) does not match latents"):
        trace(jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="3 conditioning images for a batch of 2"):
        trace(jnp.zeros((3, 8, 8, 3)))
    from jaxvedit.models.tiny import TINY_UNET_CONFIG
    from jaxvedit.models.unet import UNet2DConditionModel

    down, mid = trace(jnp.zeros((2, 8, 8, 3)))  # made for another UNet
    u_def, u_state = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(TINY_UNET_CONFIG)))
    xu, cu = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2, 3, 32))

    def unet(**kw):
        return jax.eval_shape(lambda s: nnx.merge(u_def, s)(xu, 1, cu, **kw), u_state)

    with pytest.raises(ValueError, match="expected 4 down-block residuals, got 6"):
        unet(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    with pytest.raises(ValueError, match="need both"):
        unet(down_block_additional_residuals=down)
    bad = [jnp.zeros((2, 8, 8, 32))] * 2 + [jnp.zeros((2, 4, 4, 32))] * 2  # the last needs 64
    with pytest.raises(ValueError, match=r"down-block residual 3 has shape \(2, 4, 4, 32\)"):
        unet(down_block_additional_residuals=bad, mid_block_additional_residual=jnp.zeros((2, 4, 4, 64)))
    with pytest.raises(FileNotFoundError, match="no ControlNet in"):
        load_controlnet(tmp_path)


@pytest.mark.slow
def test_full_sd15_controlnet_matches_diffusers(tmp_path):
    """The SD1.5 depth ControlNet's config (lllyasviel/sd-controlnet-depth), random weights."""
    torch.manual_seed(0)
    ref = randomize_(TorchControlNet(cross_attention_dim=768).eval(), seed=0)
    ref.save_pretrained(tmp_path / "cn")
    ours = load_controlnet(tmp_path / "cn")
    err = _compare(ref, ours, (16, 16), [(False, 1.0)], batch=1, ctx_len=77)  # guess mode: tiny
    print(f"ControlNet parity SD1.5 full config, 16x16 latents: max|diff|/std = {err:.3e}")
    assert err <= TOL
