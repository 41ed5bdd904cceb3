"""Flax NNX port of diffusers' ``AutoencoderKL`` (``DownEncoderBlock2D`` / ``UpDecoderBlock2D``).

Images are channels-last ``(B, H, W, 3)`` in [-1, 1]; latents ``(B, H/f, W/f, latent_channels)``.
``encode`` returns a :class:`DiagonalGaussian`; multiply a sample (or the mode) by
``config.scaling_factor`` (0.18215 for SD1.5) to get diffusion latents, and divide before
``decode`` (:meth:`AutoencoderKL.encode_to_latents` / :meth:`decode_latents` do both).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import build_config, read_config
from jaxvedit.models.layers import (Attention, Downsample2D, GroupNorm, Precision, ResnetBlock2D,
                                    Upsample2D, conv)


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple | None = None
    latents_std: tuple | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    ALLOWED = {"act_fn": ("silu",)}

    @classmethod
    def from_dict(cls, raw: dict) -> "VAEConfig":
        cfg = build_config(cls, raw, allowed=cls.ALLOWED, what="VAE")
        for name in cfg.down_block_types:
            if name != "DownEncoderBlock2D":
                raise ValueError(f"unsupported down block type {name!r} in VAE config "
                                 "(supported: DownEncoderBlock2D)")
        for name in cfg.up_block_types:
            if name != "UpDecoderBlock2D":
                raise ValueError(f"unsupported up block type {name!r} in VAE config "
                                 "(supported: UpDecoderBlock2D)")
        return cfg

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


class DiagonalGaussian:
    """Posterior ``N(mean, exp(logvar))`` with logvar clipped to [-30, 20] (as diffusers)."""

    def __init__(self, moments: jax.Array):
        self.mean, logvar = jnp.split(moments, 2, axis=-1)
        self.logvar = jnp.clip(logvar, -30.0, 20.0)
        self.std = jnp.exp(0.5 * self.logvar)
        self.var = jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2, 3))


class MidBlock2D(nnx.Module):
    """``UNetMidBlock2D`` without time embedding: resnet, self-attention, resnet."""

    def __init__(self, path, channels, groups, add_attention, p, rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, None, groups, 1e-6, 1.0, p, rngs,
                          path=f"{path}.resnets.{i}") for i in range(2)])
        self.attentions = nnx.List([
            Attention(channels, 1, channels, p, rngs, bias=True, norm_num_groups=groups, eps=1e-6,
                      residual_connection=True, path=f"{path}.attentions.0")]) if add_attention else None

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class EncoderBlock(nnx.Module):
    def __init__(self, path, in_ch, out_ch, layers, groups, add_downsample, p, rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, 1e-6, 1.0, p, rngs,
                          path=f"{path}.resnets.{i}") for i in range(layers)])
        self.downsamplers = nnx.List([Downsample2D(out_ch, out_ch, 0, p, rngs)]) if add_downsample else None

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class DecoderBlock(nnx.Module):
    def __init__(self, path, in_ch, out_ch, layers, groups, add_upsample, p, rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, 1e-6, 1.0, p, rngs,
                          path=f"{path}.resnets.{i}") for i in range(layers)])
        self.upsamplers = nnx.List([Upsample2D(out_ch, p, rngs)]) if add_upsample else None

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, p, rngs):
        boc, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = conv(cfg.in_channels, boc[0], 3, p, rngs)
        blocks, out_ch = [], boc[0]
        for i in range(len(cfg.down_block_types)):
            in_ch, out_ch = out_ch, boc[i]
            blocks.append(EncoderBlock(f"encoder.down_blocks.{i}", in_ch, out_ch, cfg.layers_per_block,
                                       g, i < len(boc) - 1, p, rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock2D("encoder.mid_block", boc[-1], g, cfg.mid_block_add_attention, p, rngs)
        self.conv_norm_out = GroupNorm(g, boc[-1], 1e-6, p)
        self.conv_out = conv(boc[-1], 2 * cfg.latent_channels, 3, p, rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x, silu=True))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, p, rngs):
        boc, g = cfg.block_out_channels, cfg.norm_num_groups
        rboc = list(reversed(boc))
        self.conv_in = conv(cfg.latent_channels, boc[-1], 3, p, rngs)
        self.mid_block = MidBlock2D("decoder.mid_block", boc[-1], g, cfg.mid_block_add_attention, p, rngs)
        blocks, out_ch = [], rboc[0]
        for i in range(len(cfg.up_block_types)):
            prev, out_ch = out_ch, rboc[i]
            blocks.append(DecoderBlock(f"decoder.up_blocks.{i}", prev, out_ch, cfg.layers_per_block + 1,
                                       g, i < len(boc) - 1, p, rngs))
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(g, boc[0], 1e-6, p)
        self.conv_out = conv(boc[0], cfg.out_channels, 3, p, rngs)

    def __call__(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x, silu=True))


class AutoencoderKL(nnx.Module):
    def __init__(self, config: VAEConfig | dict, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str | None = None):
        cfg = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(read_config(config))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        p = Precision(dtype, param_dtype, attention_implementation)
        self.config, self.dtype = cfg, dtype
        lc = cfg.latent_channels
        self.encoder = Encoder(cfg, p, rngs)
        self.decoder = Decoder(cfg, p, rngs)
        self.quant_conv = conv(2 * lc, 2 * lc, 1, p, rngs) if cfg.use_quant_conv else None
        self.post_quant_conv = conv(lc, lc, 1, p, rngs) if cfg.use_post_quant_conv else None

    @classmethod
    def from_config(cls, config, **kwargs) -> "AutoencoderKL":
        return cls(config, **kwargs)

    @property
    def downscale_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        chex.assert_rank(images, 4)
        if images.shape[-1] != self.config.in_channels:
            raise ValueError(f"VAE expects channels-last images with {self.config.in_channels} "
                             f"channels, got shape {images.shape}")
        h = self.encoder(images.astype(self.dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussian(h.astype(jnp.float32))

    def decode(self, z: jax.Array) -> jax.Array:
        chex.assert_rank(z, 4)
        if z.shape[-1] != self.config.latent_channels:
            raise ValueError(f"VAE expects latents with {self.config.latent_channels} channels, "
                             f"got shape {z.shape}")
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def encode_to_latents(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Images in [-1, 1] -> scaled diffusion latents (posterior sample, or mode without key)."""
        post = self.encode(images)
        z = post.mode() if key is None else post.sample(key)
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        shift = self.config.shift_factor or 0.0
        return self.decode(latents / self.config.scaling_factor + shift)

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        post = self.encode(images)
        return self.decode(post.mode() if key is None else post.sample(key))
