"""Parity of the Flax UNet port with diffusers' PyTorch UNet2DConditionModel on random weights,
saved to safetensors by diffusers and loaded by our loader (fp32)."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from reference import SD15_UNET_CONFIG, nchw, nhwc, randomize_, rel_err

from jaxvedit.models.loading import load_unet

TOL = 1e-4

TINY_CONFIGS = {
    # two levels, cross-attention first, small channels, 4 heads
    "tiny-a": dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=32, attention_head_dim=4),
    # three levels, one layer per block, per-block heads, wider context, linear projections
    "tiny-b": dict(block_out_channels=(16, 32, 48), layers_per_block=1, norm_num_groups=8,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=24, attention_head_dim=(2, 4, 8), use_linear_projection=True,
                   flip_sin_to_cos=False, freq_shift=1),
    # SD1.x block pattern with 4 levels, two transformer layers per block, 8 heads
    "tiny-c": dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=16,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=40, attention_head_dim=8, transformer_layers_per_block=2),
    # only down-blocks without attention plus the cross-attention mid block, odd latent size
    "tiny-d": dict(block_out_channels=(16, 32), layers_per_block=(1, 2), norm_num_groups=4,
                   down_block_types=("DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D"), cross_attention_dim=12,
                   attention_head_dim=2, in_channels=3, out_channels=5),
}


def _reference_and_ours(tmp_path, config, seed, latent_hw, batch=2, ctx_len=7):
    torch.manual_seed(seed)
    from diffusers import UNet2DConditionModel

    ref_model = randomize_(UNet2DConditionModel(**config).eval(), seed)
    ref_model.save_pretrained(tmp_path / "unet")  # safetensors, as users have it
    ours = load_unet(tmp_path)
    rng = np.random.RandomState(seed)
    cin = ref_model.config.in_channels
    x = rng.randn(batch, cin, *latent_hw).astype(np.float32)
    ctx = rng.randn(batch, ctx_len, ref_model.config.cross_attention_dim).astype(np.float32)
    t = np.array([1, 981][:batch] + [500] * max(0, batch - 2), np.int64)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    out = ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    return nchw(out), ref


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_unet_matches_diffusers(tmp_path, name):
    hw = (15, 13) if name == "tiny-d" else (16, 16)
    out, ref = _reference_and_ours(tmp_path, TINY_CONFIGS[name], seed=hash(name) % 1000, latent_hw=hw)
    err = rel_err(out, ref)
    print(f"UNet parity {name}: max|diff|/std = {err:.3e}")
    assert err <= TOL


@pytest.mark.slow
def test_full_sd15_unet_matches_diffusers(tmp_path):
    out, ref = _reference_and_ours(tmp_path, SD15_UNET_CONFIG, seed=0, latent_hw=(16, 16), batch=2,
                                   ctx_len=77)
    err = rel_err(out, ref)
    print(f"UNet parity SD1.5 full config, 16x16 latents: max|diff|/std = {err:.3e}")
    assert err <= TOL
