"""The SD1.5 inpainting UNet: a :class:`UNet2DConditionModel` with 9 input channels.

Input channel order, as diffusers' ``StableDiffusionInpaintPipeline`` concatenates them:
``[noisy latents (4), mask (1), masked-image latents (4)]``; the mask channel is diffusers'
convention, **1 = regenerate** (inpaint), 0 = keep. (LoRA-Edit's ``M_condition`` is the
opposite, 1 = keep: :mod:`jaxvedit.diffusion.inpaint` converts.)

The inpainting UNet builds and loads through the same code as the text-to-image one (its
``config.json`` just says ``in_channels: 9``; a single-file checkpoint's config is inferred from
the ``input_blocks.0.0.weight`` shape), so :func:`jaxvedit.models.load_unet` reads a diffusers
folder, a single-file LDM checkpoint or a hub id of it unchanged.

:func:`inpainting_unet_from_text_unet` makes an inpainting UNet from a text-to-image one as
SD-inpainting was made (model card of ``stable-diffusion-inpainting``: "the UNet has 5
additional input channels (4 for the encoded masked-image and 1 for the mask itself) whose
weights were zero-initialized after restoring the non-inpainting checkpoint").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.unet import UNet2DConditionModel


def latent_channels(unet) -> int:
    """The latent width the UNet denoises (its ``out_channels``)."""
    return int(unet.config.out_channels)


def is_inpainting_unet(unet) -> bool:
    """True for a UNet taking ``[latents, mask, masked-image latents]`` (``2 * out + 1`` inputs)."""
    return int(unet.config.in_channels) == 2 * latent_channels(unet) + 1


def check_inpainting_unet(unet, what: str = "this method") -> None:
    """ValueError naming the channel counts unless ``unet`` is an inpainting UNet."""
    if not is_inpainting_unet(unet):
        c = latent_channels(unet)
        raise ValueError(
            f"{what} needs an inpainting UNet (in_channels = {2 * c + 1}: {c} latent + 1 mask + "
            f"{c} masked-image latent channels, as stable-diffusion-inpainting), but the UNet has "
            f"in_channels={unet.config.in_channels}; use an SD1.5 inpainting model (or make one "
            "with jaxvedit.models.inpaint.inpainting_unet_from_text_unet and fine-tune it)")


def inpainting_input(latents, mask, masked_image_latents):
    """``concat([latents, mask, masked_image_latents], -1)`` (diffusers' order), channels-last."""
    if latents.shape[:-1] != mask.shape[:-1] or latents.shape[:-1] != masked_image_latents.shape[:-1]:
        raise ValueError(f"inpainting inputs differ in shape: latents {latents.shape}, mask "
                         f"{mask.shape}, masked-image latents {masked_image_latents.shape}")
    if mask.shape[-1] != 1:
        raise ValueError(f"the inpainting mask must have one channel, got shape {mask.shape}")
    dt = latents.dtype
    return jnp.concatenate([latents, mask.astype(dt), masked_image_latents.astype(dt)], axis=-1)


def inpainting_unet_from_text_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A new inpainting UNet from a text-to-image ``unet`` (``in_channels == out_channels``).

    Every weight array is shared with ``unet`` (no copy; the variables are the new model's own,
    so updating either model leaves the other unchanged) except ``conv_in.kernel``, which gains ``out_channels + 1`` zero input channels after the original ones (mask, then
    masked-image latents): the result computes exactly the text-to-image UNet on the first
    ``out_channels`` input channels, whatever the mask and masked-image inputs are, until it is
    fine-tuned. ``unet`` itself is left unchanged.
    """
    cfg = unet.config
    c = latent_channels(unet)
    if int(cfg.in_channels) != c:
        raise ValueError(f"inpainting_unet_from_text_unet needs a text-to-image UNet (in_channels == "
                         f"out_channels == {c}), got in_channels={cfg.in_channels}")
    graphdef, state = nnx.split(unet)
    # new Variable objects over the same (immutable) arrays: updating one model's weights
    # (fine-tuning) leaves the other's alone
    new = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    old = unet.conv_in
    k = old.kernel.value  # (kh, kw, in, out)
    conv = nnx.Conv(2 * c + 1, k.shape[-1], kernel_size=k.shape[:2], strides=old.strides,
                    padding=old.padding, dtype=old.dtype, param_dtype=old.param_dtype,
                    rngs=nnx.Rngs(0))
    zeros = jnp.zeros(k.shape[:2] + (c + 1, k.shape[-1]), k.dtype)
    conv.kernel.value = jnp.concatenate([k, zeros], axis=2)
    conv.bias.value = old.bias.value
    new.conv_in = conv
    new.config = dataclasses.replace(cfg, in_channels=2 * c + 1)
    return new


__all__ = ["check_inpainting_unet", "inpainting_input", "inpainting_unet_from_text_unet",
           "is_inpainting_unet", "latent_channels"]
