"""Flax NNX ports of the SD1.5 components, and their loaders."""

from jaxvedit.models.controlnet import (ControlNetConfig, ControlNetModel, ControlNetParam,
                                        check_controlnet_fits_unet, controlnet_from_unet)
from jaxvedit.models.controlnet_io import load_controlnet, save_controlnet
from jaxvedit.models.hooks import FeatureHooks
from jaxvedit.models.inpaint import (check_inpainting_unet, inpainting_unet_from_text_unet,
                                     is_inpainting_unet)
from jaxvedit.models.loading import load_components, load_text_encoder, load_unet, load_vae
from jaxvedit.models.unet import UNet2DConditionModel, UNetConfig
from jaxvedit.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from jaxvedit.models.weights import WeightLoadError

__all__ = [
    "ControlNetConfig", "ControlNetModel", "ControlNetParam", "check_controlnet_fits_unet",
    "controlnet_from_unet", "load_controlnet", "save_controlnet",
    "AutoencoderKL", "DiagonalGaussian", "FeatureHooks", "UNet2DConditionModel", "UNetConfig",
    "VAEConfig", "WeightLoadError", "load_components", "load_text_encoder", "load_unet", "load_vae",
    "check_inpainting_unet", "inpainting_unet_from_text_unet", "is_inpainting_unet",
]
