"""Flax NNX port of diffusers' ``UNet2DConditionModel`` (the SD1.x block types).

Supported blocks: down ``CrossAttnDownBlock2D`` / ``DownBlock2D``; mid
``UNetMidBlock2DCrossAttn``; up ``UpBlock2D`` / ``CrossAttnUpBlock2D``. Any config made of these
(tiny test configs included) builds; other variants are refused by name.

Call: ``eps = unet(sample, timesteps, encoder_hidden_states, hooks=None)`` with
``sample (B, H, W, C)`` channels-last, ``timesteps`` scalar or ``(B,)``,
``encoder_hidden_states (B, L, cross_attention_dim)``. Output is float32 ``(B, H, W, out)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import build_config, per_block, read_config
from jaxvedit.models.hooks import FeatureHooks, emit, hooks_active
from jaxvedit.models.remat import call_block
from jaxvedit.models.layers import (Downsample2D, GroupNorm, Precision, ResnetBlock2D,
                                    TimestepEmbedding, Transformer2DModel, Upsample2D, conv,
                                    timestep_embedding)

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)


@dataclass(frozen=True)
class UNetConfig:
    """The diffusers ``UNet2DConditionModel`` config keys this port implements."""

    sample_size: int | tuple | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int | tuple = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple = 1280
    transformer_layers_per_block: int | tuple = 1
    attention_head_dim: int | tuple = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False  # float32 softmax is what we always do
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    time_embedding_dim: int | None = None

    # keys diffusers writes that we accept only at these values
    ALLOWED = {
        "act_fn": ("silu",),
        "num_attention_heads": (None,),
        "encoder_hid_dim": (None,),
        "encoder_hid_dim_type": (None,),
        "dual_cross_attention": (False,),
        "class_embed_type": (None,),
        "addition_embed_type": (None,),
        "addition_time_embed_dim": (None,),
        "num_class_embeds": (None,),
        "resnet_time_scale_shift": ("default",),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1.0, 1),
        "time_embedding_type": ("positional",),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "time_cond_proj_dim": (None,),
        "projection_class_embeddings_input_dim": (None,),
        "attention_type": ("default",),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
        "cross_attention_norm": (None,),
        "addition_embed_type_num_heads": (64,),
        "reverse_transformer_layers_per_block": (None,),
    }

    @classmethod
    def from_dict(cls, raw: dict) -> "UNetConfig":
        cfg = build_config(cls, raw, allowed=cls.ALLOWED, what="UNet")
        for kind, names, ok in (("down", cfg.down_block_types, DOWN_BLOCKS),
                                ("up", cfg.up_block_types, UP_BLOCKS),
                                ("mid", (cfg.mid_block_type,), MID_BLOCKS)):
            for name in names:
                if name not in ok:
                    raise ValueError(f"unsupported {kind} block type {name!r} in UNet config "
                                     f"(supported: {', '.join(ok)})")
        if len(cfg.down_block_types) != len(cfg.up_block_types):
            raise ValueError("UNet config: down_block_types and up_block_types differ in length")
        if len(cfg.block_out_channels) != len(cfg.down_block_types):
            raise ValueError("UNet config: block_out_channels must have one entry per down block")
        return cfg

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


class DownBlock(nnx.Module):
    """``CrossAttnDownBlock2D`` (with attentions) or ``DownBlock2D`` (without)."""

    def __init__(self, path, in_ch, out_ch, temb, layers, with_attention, add_downsample, heads,
                 transformer_layers, cross_dim, cfg: UNetConfig, p, rngs, only_cross):
        self.path = path
        self.resnets = nnx.List([
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb, cfg.norm_num_groups,
                          cfg.norm_eps, 1.0, p, rngs, path=f"{path}.resnets.{i}")
            for i in range(layers)])
        self.attentions = nnx.List([
            Transformer2DModel(heads, out_ch // heads, out_ch, transformer_layers, cross_dim,
                               cfg.norm_num_groups, cfg.use_linear_projection, p, rngs,
                               path=f"{path}.attentions.{i}", only_cross_attention=only_cross)
            for i in range(layers)]) if with_attention else None
        self.downsamplers = nnx.List([
            Downsample2D(out_ch, out_ch, cfg.downsample_padding, p, rngs)]) if add_downsample else None

    def __call__(self, x, temb, context):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outputs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return emit(self.path, x), outputs


class UpBlock(nnx.Module):
    """``CrossAttnUpBlock2D`` (with attentions) or ``UpBlock2D`` (without)."""

    def __init__(self, path, in_ch, out_ch, prev_ch, temb, layers, with_attention, add_upsample,
                 heads, transformer_layers, cross_dim, cfg: UNetConfig, p, rngs, only_cross):
        self.path = path
        resnets = []
        for i in range(layers):
            skip = in_ch if i == layers - 1 else out_ch
            res_in = prev_ch if i == 0 else out_ch
            resnets.append(ResnetBlock2D(res_in + skip, out_ch, temb, cfg.norm_num_groups,
                                         cfg.norm_eps, 1.0, p, rngs, path=f"{path}.resnets.{i}"))
        self.resnets = nnx.List(resnets)
        self.attentions = nnx.List([
            Transformer2DModel(heads, out_ch // heads, out_ch, transformer_layers, cross_dim,
                               cfg.norm_num_groups, cfg.use_linear_projection, p, rngs,
                               path=f"{path}.attentions.{i}", only_cross_attention=only_cross)
            for i in range(layers)]) if with_attention else None
        self.upsamplers = nnx.List([Upsample2D(out_ch, p, rngs)]) if add_upsample else None

    def __call__(self, x, skips, temb, context, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return emit(self.path, x)


class MidBlock(nnx.Module):
    """``UNetMidBlock2DCrossAttn``: resnet, (attention, resnet) x transformer stacks."""

    def __init__(self, channels, temb, heads, transformer_layers, cross_dim, cfg: UNetConfig,
                 p, rngs, path: str = "mid_block"):
        self.path = path
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb, cfg.norm_num_groups, cfg.norm_eps,
                          cfg.mid_block_scale_factor, p, rngs, path=f"{path}.resnets.{i}")
            for i in range(2)])
        self.attentions = nnx.List([
            Transformer2DModel(heads, channels // heads, channels, transformer_layers, cross_dim,
                               cfg.norm_num_groups, cfg.use_linear_projection, p, rngs,
                               path=f"{path}.attentions.0")])

    def __call__(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        x = self.resnets[1](x, temb)
        return emit(self.path, x)


class UNet2DConditionModel(nnx.Module):
    def __init__(self, config: UNetConfig | dict, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str | None = None):
        cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(read_config(config))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        p = Precision(dtype, param_dtype, attention_implementation)
        self.config = cfg
        self.dtype = dtype
        n = len(cfg.down_block_types)
        boc = tuple(cfg.block_out_channels)
        heads = per_block(cfg.attention_head_dim, n, "attention_head_dim")
        layers = per_block(cfg.layers_per_block, n, "layers_per_block")
        cross = per_block(cfg.cross_attention_dim, n, "cross_attention_dim")
        tlayers = per_block(cfg.transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = per_block(cfg.only_cross_attention, n, "only_cross_attention")
        temb_dim = cfg.time_embedding_dim or boc[0] * 4

        self.conv_in = conv(cfg.in_channels, boc[0], cfg.conv_in_kernel, p, rngs)
        self.time_embedding = TimestepEmbedding(boc[0], temb_dim, p, rngs)

        down = []
        out_ch = boc[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            down.append(DownBlock(f"down_blocks.{i}", in_ch, out_ch, temb_dim, layers[i],
                                  kind == "CrossAttnDownBlock2D", i < n - 1, heads[i], tlayers[i],
                                  cross[i], cfg, p, rngs, only_cross[i]))
        self.down_blocks = nnx.List(down)
        self.mid_block = MidBlock(boc[-1], temb_dim, heads[-1], tlayers[-1], cross[-1], cfg, p, rngs)

        rboc = list(reversed(boc))
        rheads, rlayers = list(reversed(heads)), list(reversed(layers))
        rcross, rtlayers = list(reversed(cross)), list(reversed(tlayers))
        ronly = list(reversed(only_cross))
        up = []
        out_ch = rboc[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch = out_ch, rboc[i]
            in_ch = rboc[min(i + 1, n - 1)]
            up.append(UpBlock(f"up_blocks.{i}", in_ch, out_ch, prev_ch, temb_dim, rlayers[i] + 1,
                              kind == "CrossAttnUpBlock2D", i < n - 1, rheads[i], rtlayers[i],
                              rcross[i], cfg, p, rngs, ronly[i]))
        self.up_blocks = nnx.List(up)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, boc[0], cfg.norm_eps, p,
                                       path="conv_norm_out")
        self.conv_out = conv(boc[0], cfg.out_channels, cfg.conv_out_kernel, p, rngs)

    @classmethod
    def from_config(cls, config, **kwargs) -> "UNet2DConditionModel":
        return cls(config, **kwargs)

    def __call__(self, sample: jax.Array, timesteps, encoder_hidden_states: jax.Array, *,
                 hooks: FeatureHooks | None = None,
                 down_block_additional_residuals: list | None = None,
                 mid_block_additional_residual: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        chex.assert_rank(sample, 4)
        chex.assert_rank(encoder_hidden_states, 3)
        b = sample.shape[0]
        if sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet expects channels-last samples with {cfg.in_channels} channels, "
                             f"got shape {sample.shape}")
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"batch of encoder_hidden_states {encoder_hidden_states.shape} "
                             f"does not match the sample batch {b}")
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            # diffusers adds ControlNet residuals only when both are given (down residuals alone
            # are T2I-Adapter residuals there, a mid residual alone is ignored)
            raise ValueError("ControlNet residuals need both down_block_additional_residuals and "
                             "mid_block_additional_residual (got only one); T2I-Adapter "
                             "residuals are not implemented")
        with hooks_active(hooks):
            return self._forward(sample, timesteps, encoder_hidden_states,
                                 down_block_additional_residuals, mid_block_additional_residual)

    def _forward(self, sample, timesteps, context, down_residuals, mid_residual):
        cfg = self.config
        b = sample.shape[0]
        dt = self.dtype
        n_up = len(self.up_blocks) - 1
        # like diffusers: forward explicit sizes when the sample is not a multiple of 2**n_up
        forward_size = any(s % (2 ** n_up) for s in sample.shape[1:3])
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
                                   cfg.freq_shift).astype(dt)
        emb = self.time_embedding(t_emb)
        x = sample.astype(dt)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        context = context.astype(dt)
        x = self.conv_in(x)
        skips = [x]
        remat = bool(getattr(self, "remat", False))  # activation checkpointing (models/remat.py)
        for block in self.down_blocks:
            x, outs = call_block(block, x, emb, context, remat=remat)
            skips.extend(outs)
        if down_residuals is not None:  # diffusers: ControlNet residuals, added to the skips
            skips = [s + r.astype(dt) for s, r in zip(skips, _checked_residuals(down_residuals, skips))]
        x = call_block(self.mid_block, x, emb, context, remat=remat)
        if mid_residual is not None:
            x = x + _checked_residuals([mid_residual], [x], "mid-block")[0].astype(dt)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[1:3]) if (forward_size and i < n_up) else None
            x = call_block(block, x, block_skips, emb, context, remat=remat, upsample_size=size)
        x = self.conv_out(self.conv_norm_out(x, silu=True))
        return x.astype(jnp.float32)


def _checked_residuals(residuals, skips, what: str = "down-block"):
    """ControlNet residuals must match the UNet's skip connections one to one in channels and
    size (a (1, 1) size broadcasts: global-pooled ControlNets)."""
    residuals = list(residuals)
    if len(residuals) != len(skips):
        raise ValueError(f"expected {len(skips)} {what} residuals, got {len(residuals)} (a "
                         "ControlNet made for another UNet?)")
    for i, (s, r) in enumerate(zip(skips, residuals)):
        if r.ndim != 4 or r.shape[0] not in (1, s.shape[0]) or r.shape[-1] != s.shape[-1] or \
                tuple(r.shape[1:3]) not in (tuple(s.shape[1:3]), (1, 1)):
            raise ValueError(f"{what} residual {i} has shape {tuple(r.shape)}, the UNet's feature "
                             f"there has {tuple(s.shape)} (a ControlNet made for another UNet, or "
                             "a conditioning image of another size?)")
    return residuals
