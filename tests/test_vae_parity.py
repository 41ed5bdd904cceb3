"""Parity of the Flax AutoencoderKL port with diffusers' PyTorch AutoencoderKL (fp32)."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from reference import SD15_VAE_CONFIG, nchw, nhwc, randomize_, rel_err

from jaxvedit.models.loading import load_vae

TOL = 1e-4

TINY_CONFIGS = {
    "tiny-a": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                   latent_channels=4),
    "tiny-b": dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=4,
                   down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                   latent_channels=3, scaling_factor=0.5),
    "tiny-c": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                   latent_channels=4, use_quant_conv=False, use_post_quant_conv=False,
                   mid_block_add_attention=False, in_channels=1, out_channels=2),
}


def _check(tmp_path, config, seed, hw):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    ref_model = randomize_(AutoencoderKL(**config).eval(), seed)
    ref_model.save_pretrained(tmp_path / "vae")
    ours = load_vae(tmp_path)
    x = np.random.RandomState(seed).randn(2, ref_model.config.in_channels, *hw).astype(np.float32)
    with torch.no_grad():
        post = ref_model.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_std = post.mean.numpy(), post.std.numpy()
        ref_dec = ref_model.decode(post.mean).sample.numpy()
    ours_post = ours.encode(jnp.asarray(nhwc(x)))
    errs = {
        "mean": rel_err(nchw(ours_post.mean), ref_mean),
        "std": rel_err(nchw(ours_post.std), ref_std),
        "decode": rel_err(nchw(ours.decode(jnp.asarray(nhwc(ref_mean)))), ref_dec),
    }
    # scaled latents use the config's scaling factor
    lat = ours.encode_to_latents(jnp.asarray(nhwc(x)))
    np.testing.assert_allclose(np.asarray(lat), nhwc(ref_mean) * ref_model.config.scaling_factor,
                               atol=1e-4 * ref_mean.std() * ref_model.config.scaling_factor)
    # a posterior sample has the posterior's statistics
    s = ours_post.sample(jax.random.key(0))
    assert s.shape == ours_post.mean.shape
    return errs


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_vae_matches_diffusers(tmp_path, name):
    errs = _check(tmp_path, TINY_CONFIGS[name], seed=len(name) + ord(name[-1]), hw=(32, 24))
    print(f"VAE parity {name}: " + ", ".join(f"{k} {v:.3e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL


@pytest.mark.slow
def test_full_sd15_vae_matches_diffusers(tmp_path):
    errs = _check(tmp_path, SD15_VAE_CONFIG, seed=0, hw=(64, 64))
    print("VAE parity SD1.5 full config, 64x64 images: "
          + ", ".join(f"{k} {v:.3e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL
