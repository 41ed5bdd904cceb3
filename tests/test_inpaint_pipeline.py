"""Inpainting inputs and sampling against diffusers' ``StableDiffusionInpaintPipeline`` (0.42) on
tiny random models: mask processing, nearest mask resizing, masked-image latents and the whole
denoising loop (9-channel UNet: concatenated inputs; 4-channel UNet: known region blended back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import jax.numpy as jnp
from reference import nchw, nhwc, randomize_, rel_err

from jaxvedit.diffusion.inpaint import (encode_latents, inpaint_sample, masked_image,
                                        prepare_mask_latents, preprocess_mask, resize_mask_nearest)
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.loading import load_unet, load_vae
from jaxvedit.models.tiny import SD15_SCHEDULER_CONFIG, TINY_VAE_CONFIG

UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, out_channels=4, sample_size=8)
SIZE, B, STEPS = 64, 2, 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = tmp_path_factory.mktemp("inpaint")
    torch.manual_seed(0)
    vae = randomize_(AutoencoderKL(**{k: v for k, v in TINY_VAE_CONFIG.items()
                                      if not k.startswith("_")}).eval(), 1)
    vae.save_pretrained(root / "vae")
    unets = {}
    for cin in (9, 4):
        u = randomize_(UNet2DConditionModel(**UNET, in_channels=cin).eval(), cin)
        u.save_pretrained(root / f"unet{cin}")
        unets[cin] = (u, load_unet(root, subfolder=f"unet{cin}"))
    return vae, load_vae(root), unets


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (B, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((B, SIZE, SIZE), np.uint8)
    masks[0, 10:43, 21:60] = 255
    masks[1, 30:64, 0:27] = 200  # grey >= 0.5: regenerate
    masks[1, 0:9, 0:9] = 100  # grey < 0.5: keep
    return frames, masks


def _pipeline(vae, unet):
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_mask_processing_matches_vae_image_processor(inputs):
    from diffusers.image_processor import VaeImageProcessor

    frames, masks = inputs
    proc = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True,
                             do_convert_grayscale=True)
    ref = proc.preprocess([Image.fromarray(m) for m in masks], height=SIZE, width=SIZE).numpy()
    ours = preprocess_mask(masks)
    np.testing.assert_array_equal(nchw(ours), ref)
    # an RGB mask video frame goes through PIL's "L" as diffusers' conversion does
    rgb = np.repeat(masks[..., None], 3, axis=-1)
    rgb[0, 12, 30] = (255, 0, 0)  # luma 76 -> keep
    ref_rgb = proc.preprocess([Image.fromarray(m) for m in rgb], height=SIZE, width=SIZE).numpy()
    np.testing.assert_array_equal(nchw(preprocess_mask(rgb)), ref_rgb)
    assert preprocess_mask(rgb)[0, 12, 30, 0] == 0
    # masked image: init_image * (mask < 0.5) of the normalized image
    img_proc = VaeImageProcessor(vae_scale_factor=8)
    init = img_proc.preprocess([Image.fromarray(f) for f in frames], height=SIZE, width=SIZE)
    ref_masked = (init * (torch.from_numpy(ref) < 0.5)).numpy()
    ours_masked = masked_image(frames.astype(np.float32) / 127.5 - 1.0, ours)
    np.testing.assert_allclose(nchw(ours_masked), ref_masked, atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (13, 3)])
def test_nearest_resize_matches_torch_interpolate(size):
    rng = np.random.default_rng(1)
    m = (rng.random((2, 37, 29, 1)) > 0.5).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(nchw(m)), size=size).numpy()
    np.testing.assert_array_equal(nchw(resize_mask_nearest(m, size)), ref)


def test_masked_latents_match_pipeline_prepare_mask_latents(models, inputs):
    ref_vae, vae, unets = models
    frames, masks = inputs
    pipe = _pipeline(ref_vae, unets[9][0])
    init = torch.from_numpy(nchw(frames.astype(np.float32) / 127.5 - 1.0))
    mask_t = torch.from_numpy(nchw(preprocess_mask(masks)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref_mask, ref_lat = pipe.prepare_mask_latents(mask_t, init * (mask_t < 0.5), B, SIZE, SIZE,
                                                      torch.float32, "cpu", g, False)
    from diffusers.utils.torch_utils import randn_tensor

    eps = randn_tensor((B, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(3))
    mask_lat, lat = prepare_mask_latents(vae, nhwc(init.numpy()), preprocess_mask(masks),
                                         noise=nhwc(eps.numpy()))
    np.testing.assert_array_equal(nchw(mask_lat), ref_mask.numpy())
    err = rel_err(nchw(lat), ref_lat.numpy())
    print(f"masked-image latents vs diffusers prepare_mask_latents: {err:.2e}")
    assert err <= 1e-4
    # the posterior mean (sample=False) is the pipeline's sample_mode="argmax"
    with torch.no_grad():
        ref_mean = ref_vae.encode(init).latent_dist.mode().numpy() * ref_vae.config.scaling_factor
    assert rel_err(nchw(encode_latents(vae, nhwc(init.numpy()), sample=False)), ref_mean) <= 1e-4


@pytest.mark.parametrize("cin", [9, 4])
def test_inpaint_sampling_matches_pipeline(models, inputs, cin):
    ref_vae, vae, unets = models
    ref_unet, unet = unets[cin]
    frames, masks = inputs
    pipe = _pipeline(ref_vae, ref_unet)
    rng = np.random.default_rng(2)
    cond = rng.standard_normal((B, 7, 32)).astype(np.float32)
    uncond = rng.standard_normal((1, 7, 32)).astype(np.float32)
    x_T = rng.standard_normal((B, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    with torch.no_grad():
        ref = pipe(prompt_embeds=torch.from_numpy(cond),
                   negative_prompt_embeds=torch.from_numpy(np.repeat(uncond, B, 0)),
                   image=[Image.fromarray(f) for f in frames],
                   mask_image=[Image.fromarray(m) for m in masks], height=SIZE, width=SIZE,
                   num_inference_steps=STEPS, guidance_scale=6.0, latents=torch.from_numpy(x_T),
                   generator=torch.Generator().manual_seed(5), output_type="latent").images.numpy()
    # the pipeline's draws from its generator: the image latents (4-channel UNet only), then
    # the masked-image latents
    from diffusers.utils.torch_utils import randn_tensor

    g = torch.Generator().manual_seed(5)
    shape = (B, 4, SIZE // 8, SIZE // 8)
    eps_image = randn_tensor(shape, generator=g) if cin == 4 else None
    eps_masked = randn_tensor(shape, generator=g)
    init = frames.astype(np.float32) / 127.5 - 1.0
    mask = preprocess_mask(masks)
    mask_lat, masked_lat = prepare_mask_latents(vae, init, mask, noise=nhwc(eps_masked.numpy()))
    image_lat = (encode_latents(vae, init, noise=nhwc(eps_image.numpy())) if cin == 4 else None)
    ours = inpaint_sample(unet, nhwc(x_T), cond, mask_lat, masked_lat,
                          NoiseSchedule.from_config(SD15_SCHEDULER_CONFIG),
                          num_inference_steps=STEPS, guidance_scale=6.0, uncond_context=uncond,
                          image_latents=image_lat)
    err = rel_err(nchw(ours), ref)
    print(f"inpainting sampling, {cin}-channel UNet, {STEPS} DDIM steps, CFG 6 vs diffusers: {err:.2e}")
    assert err <= 1e-4


def test_blend_needs_image_latents(models):
    unet = models[2][9][1]
    x, mask = np.zeros((2, 8, 8, 4), np.float32), np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="needs image_latents"):
        inpaint_sample(unet, x, np.zeros((2, 5, 32)), mask, x,
                       NoiseSchedule.from_config(SD15_SCHEDULER_CONFIG), blend=True)
