"""Diffusion core: noise schedules, DDIM steps, bilateral filters, compiled DDIM inversion /
sampling (SPEC §4; see docs/diffusion.md)."""

from jaxvedit.diffusion.bilateral import (
    bilateral_filter_frames,
    bilateral_filter_latent,
    gaussian_blur_latent,
)
from jaxvedit.diffusion.ddim import (
    add_noise,
    ddim_inversion_step,
    ddim_sample_step,
    ddim_step,
    ddim_step_from_alphas,
    ddim_variance,
    predict_x0_eps,
)
from jaxvedit.diffusion.inpaint import (
    encode_latents,
    inpaint_sample,
    prepare_mask_latents,
    preprocess_mask,
    resize_mask_nearest,
)
from jaxvedit.diffusion.inversion import (
    AUTHORS_FEATURE_PATHS,
    BilateralFilterConfig,
    FilterConfig,
    ddim_invert,
    ddim_sample,
    default_feature_paths,
)
from jaxvedit.diffusion.schedules import (
    SD15_SCHEDULER_CONFIG,
    NoiseSchedule,
    Schedule,
    cumprod_float32,
    ddim_inverse_timesteps,
    ddim_timesteps,
    linear_betas,
    load_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    sd15_schedule,
    squaredcos_cap_v2_betas,
    torch_linspace_float32,
)
from jaxvedit.diffusion.symmetric_bilateral import (
    apply_symmetric_bilateral,
    symmetric_bilateral_filter,
    symmetric_bilateral_weights,
)

__all__ = [
    "AUTHORS_FEATURE_PATHS",
    "BilateralFilterConfig",
    "FilterConfig",
    "NoiseSchedule",
    "SD15_SCHEDULER_CONFIG",
    "Schedule",
    "add_noise",
    "apply_symmetric_bilateral",
    "bilateral_filter_frames",
    "bilateral_filter_latent",
    "cumprod_float32",
    "ddim_inverse_timesteps",
    "ddim_invert",
    "ddim_inversion_step",
    "ddim_sample",
    "ddim_sample_step",
    "ddim_step",
    "ddim_step_from_alphas",
    "ddim_timesteps",
    "ddim_variance",
    "encode_latents",
    "inpaint_sample",
    "prepare_mask_latents",
    "preprocess_mask",
    "resize_mask_nearest",
    "default_feature_paths",
    "gaussian_blur_latent",
    "linear_betas",
    "load_schedule",
    "predict_x0_eps",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "sd15_schedule",
    "squaredcos_cap_v2_betas",
    "symmetric_bilateral_filter",
    "symmetric_bilateral_weights",
    "torch_linspace_float32",
]
