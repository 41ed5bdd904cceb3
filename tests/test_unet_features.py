"""Feature hooks (tap / transform intermediate outputs in the same forward pass), jit over split
state, and the bfloat16 compute option."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from flax import nnx
from reference import nchw, nhwc, randomize_, rel_err

from jaxvedit.models import FeatureHooks, load_unet

CONFIG = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
              attention_head_dim=4)
TAPS = ["up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "down_blocks.0.attentions.0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("unet")
    torch.manual_seed(3)
    ref = randomize_(UNet2DConditionModel(**CONFIG).eval(), 3)
    ref.save_pretrained(root / "unet")
    rng = np.random.RandomState(0)
    x = rng.randn(3, 4, 16, 16).astype(np.float32)
    ctx = rng.randn(3, 5, 32).astype(np.float32)
    t = np.array([5, 400, 900])
    return ref, load_unet(root), (x, ctx, t)


def _torch_with_hooks(ref, inputs, zero_path=None):
    x, ctx, t = inputs
    captured, handles = {}, []
    for name, module in ref.named_modules():
        if name in TAPS or name == zero_path:
            def hook(mod, args, out, name=name):
                tensor = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
                if name == zero_path:
                    tensor = torch.zeros_like(tensor)
                captured[name] = tensor.detach().numpy()
                return (tensor,) + tuple(out[1:]) if isinstance(out, tuple) else tensor
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        out = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    for h in handles:
        h.remove()
    return out, captured


def _jitted_forward(unet, transform=None):
    graphdef, state = nnx.split(unet)

    @jax.jit
    def forward(state, x, t, ctx):
        model = nnx.merge(graphdef, state)
        hooks = FeatureHooks(capture=TAPS, transform=transform)
        out = model(x, t, ctx, hooks=hooks)
        hooks.check_all_matched()
        return out, hooks.captured

    return lambda x, t, ctx: forward(state, x, t, ctx)


def test_captured_features_match_torch_forward_hooks_under_jit(models):
    ref, ours, inputs = models
    x, ctx, t = inputs
    ref_out, ref_feats = _torch_with_hooks(ref, inputs)
    out, feats = _jitted_forward(ours)(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    assert rel_err(nchw(out), ref_out) <= 1e-4
    assert set(feats) == set(TAPS)
    for name in TAPS[:2]:  # attention outputs: (B, H*W, C) token order identical to diffusers'
        assert feats[name].shape == ref_feats[name].shape
        assert rel_err(feats[name], ref_feats[name]) <= 1e-4, name
    # the Transformer2D output is an image: channels-last here, NCHW in torch
    assert rel_err(nchw(feats[TAPS[2]]), ref_feats[TAPS[2]]) <= 1e-4
    # the jitted (split/merge) forward equals the eager one
    eager = ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), atol=1e-5)


def test_transform_hook_replaces_features_inside_the_network(models):
    ref, ours, inputs = models
    x, ctx, t = inputs
    path = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    ref_out, _ = _torch_with_hooks(ref, inputs, zero_path=path)
    out, feats = _jitted_forward(ours, transform={path: jnp.zeros_like})(
        jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    assert rel_err(nchw(out), ref_out) <= 1e-4
    assert float(jnp.abs(feats[path]).max()) == 0.0
    plain, _ = _jitted_forward(ours)(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    assert float(jnp.abs(plain - out).max()) > 1e-3  # the transform really changed the output


def test_unmatched_hook_path_is_an_error(models):
    _, ours, (x, ctx, t) = models
    hooks = FeatureHooks(capture=["up_blocks.1.attentions.0.transformer_blocks.0.atn1"])
    ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx), hooks=hooks)
    with pytest.raises(KeyError, match="matched no module"):
        hooks.check_all_matched()


def test_bad_input_shapes_are_named(models):
    _, ours, (x, ctx, t) = models
    with pytest.raises(ValueError, match="channels-last samples with 4 channels"):
        ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))  # NCHW by mistake
    with pytest.raises(ValueError, match="does not match the sample batch"):
        ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx[:2]))


def test_bfloat16_compute_keeps_float32_params(models, tmp_path):
    ref, ours, (x, ctx, t) = models
    ref.save_pretrained(tmp_path / "unet")
    bf16 = load_unet(tmp_path, dtype=jnp.bfloat16)
    kinds = {v.value.dtype for _, v in nnx.to_flat_state(nnx.state(bf16, nnx.Param))}
    assert kinds == {jnp.dtype(jnp.float32)}
    graphdef, state = nnx.split(bf16)
    out = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, jnp.asarray(nhwc(x)), jnp.asarray(t),
                                                           jnp.asarray(ctx))
    full = ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    assert out.dtype == jnp.float32
    err = rel_err(out, full)
    print(f"bf16 compute vs fp32: max|diff|/std = {err:.3e}")
    assert err < 0.1
