"""Flax NNX port of diffusers' ``ControlNetModel`` (``models/controlnets/controlnet.py``, 0.42).

A ControlNet is a trainable copy of the UNet's encoder (``conv_in``, time embedding, down blocks,
mid block) that also sees a conditioning image (a depth map, edges, ...) through a small
convolutional *conditioning embedding*. Its outputs go through zero-initialised 1x1 *zero
convolutions* and are added to the UNet's skip connections and mid-block output
(``down_block_additional_residuals`` / ``mid_block_additional_residual`` of
:class:`~jaxvedit.models.unet.UNet2DConditionModel`).

Call: ``down, mid = controlnet(sample, timesteps, encoder_hidden_states, controlnet_cond,
conditioning_scale=1.0, guess_mode=False)`` with ``sample (B, h, w, C)`` latents (channels-last),
``controlnet_cond (B, H, W, 3)`` in ``[0, 1]`` at the pixel size (``H = 8 h`` for the SD1.5
conditioning embedding), ``conditioning_scale`` a scalar or ``(B,)`` (per sample). Returns a
:class:`ControlNetOutput` (a named tuple: the down residuals, one per UNet skip, and the mid
residual), in the compute dtype.

All parameters are :class:`ControlNetParam` (an ``nnx.Param`` subclass), so a filter selects
exactly them: an adapter optimiser (``AdapterParam``) never sees them, a ControlNet optimiser
(``ControlNetParam``) sees nothing else. Module paths start with ``controlnet.`` (feature hooks,
LoRA and cross-frame attention patterns written for the UNet never match them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.models.config import build_config, per_block, read_config
from jaxvedit.models.layers import Precision, TimestepEmbedding, conv, timestep_embedding
from jaxvedit.models.unet import DownBlock, MidBlock, UNetConfig

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
PATH_PREFIX = "controlnet."


class ControlNetParam(nnx.Param):
    """A ControlNet weight (trainable when a ControlNet is trained, frozen otherwise)."""


@dataclass(frozen=True)
class ControlNetConfig:
    """The diffusers ``ControlNetModel`` config keys this port implements (diffusers' defaults)."""

    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    only_cross_attention: bool | tuple = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple = 1
    attention_head_dim: int | tuple = 8
    num_attention_heads: int | tuple | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False  # float32 softmax is what we always do
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple = (16, 32, 96, 256)
    global_pool_conditions: bool = False

    ALLOWED = {
        "act_fn": ("silu",),
        "encoder_hid_dim": (None,),
        "encoder_hid_dim_type": (None,),
        "class_embed_type": (None,),
        "addition_embed_type": (None,),
        "addition_time_embed_dim": (None,),
        "num_class_embeds": (None,),
        "resnet_time_scale_shift": ("default",),
        "projection_class_embeddings_input_dim": (None,),
        "addition_embed_type_num_heads": (64,),
    }

    @classmethod
    def from_dict(cls, raw: dict) -> "ControlNetConfig":
        cfg = build_config(cls, raw, allowed=cls.ALLOWED, what="ControlNet")
        for name in cfg.down_block_types:
            if name not in DOWN_BLOCKS:
                raise ValueError(f"unsupported down block type {name!r} in ControlNet config "
                                 f"(supported: {', '.join(DOWN_BLOCKS)})")
        if cfg.mid_block_type != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"unsupported mid block type {cfg.mid_block_type!r} in ControlNet "
                             "config (supported: UNetMidBlock2DCrossAttn)")
        if len(cfg.block_out_channels) != len(cfg.down_block_types):
            raise ValueError("ControlNet config: block_out_channels must have one entry per down block")
        if not isinstance(cfg.layers_per_block, int):
            raise ValueError(f"ControlNet config layers_per_block={cfg.layers_per_block!r} must be "
                             "one integer (as diffusers' ControlNetModel)")
        if cfg.controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError("ControlNet config controlnet_conditioning_channel_order must be 'rgb' "
                             f"or 'bgr', got {cfg.controlnet_conditioning_channel_order!r}")
        if not cfg.conditioning_embedding_out_channels:
            raise ValueError("ControlNet config conditioning_embedding_out_channels is empty")
        return cfg

    def to_dict(self) -> dict:
        out = {"_class_name": "ControlNetModel"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @property
    def heads(self) -> tuple:
        """Attention heads per block: diffusers uses ``num_attention_heads or attention_head_dim``
        (the historical misnaming of ``attention_head_dim``)."""
        n = len(self.down_block_types)
        return per_block(self.num_attention_heads or self.attention_head_dim, n, "attention heads")

    @property
    def conditioning_downscale(self) -> int:
        """Pixel size / latent size the conditioning embedding maps between (8 for SD1.5)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)


def residual_channels(block_out_channels, layers) -> list[int]:
    """Channels of the skip connections of a UNet encoder (= of a ControlNet's down residuals):
    ``conv_in``, then per block ``layers[b]`` resnets and a downsampler except for the last."""
    boc = list(block_out_channels)
    out = [boc[0]]
    for b, c in enumerate(boc):
        out += [c] * layers[b]
        if b < len(boc) - 1:
            out.append(c)
    return out


def check_controlnet_fits_unet(controlnet: "ControlNetModel | ControlNetConfig", unet) -> None:
    """Raise ``ValueError`` naming the mismatch when ``controlnet``'s residuals cannot be added to
    ``unet``'s skip connections (other channels, block counts, latent channels or context width)."""
    c = controlnet.config if hasattr(controlnet, "config") else controlnet
    u = unet.config if isinstance(getattr(unet, "config", None), UNetConfig) else unet
    if not isinstance(u, UNetConfig):
        inner = getattr(unet, "unet", None)  # a LoRA-wrapped UNet
        if inner is None:
            raise ValueError(f"cannot check a ControlNet against {type(unet).__name__}: not a UNet")
        return check_controlnet_fits_unet(c, inner)
    n = len(u.down_block_types)
    u_layers = per_block(u.layers_per_block, n, "layers_per_block")
    c_layers = (c.layers_per_block,) * len(c.down_block_types)
    problems = []
    if c.in_channels != u.in_channels:
        problems.append(f"in_channels {c.in_channels} vs the UNet's {u.in_channels}")
    if tuple(c.block_out_channels) != tuple(u.block_out_channels):
        problems.append(f"block_out_channels {tuple(c.block_out_channels)} vs the UNet's "
                        f"{tuple(u.block_out_channels)}")
    if c_layers != tuple(u_layers):
        problems.append(f"layers_per_block {c.layers_per_block} vs the UNet's {u.layers_per_block}")
    u_ctx = per_block(u.cross_attention_dim, n, "cross_attention_dim")
    if any(d != c.cross_attention_dim for d in u_ctx):
        problems.append(f"cross_attention_dim {c.cross_attention_dim} vs the UNet's "
                        f"{u.cross_attention_dim} (they share the text context)")
    if not problems:
        rc = residual_channels(c.block_out_channels, c_layers)
        ru = residual_channels(u.block_out_channels, u_layers)
        if rc != ru:
            problems.append(f"residual channels {rc} vs the UNet's skip channels {ru}")
    if problems:
        raise ValueError("the ControlNet's config does not fit the UNet: " + "; ".join(problems))


class ControlNetOutput(NamedTuple):
    down_block_res_samples: tuple
    mid_block_res_sample: jax.Array


def _torch_default_init(module, seed: int) -> None:
    """``torch.nn.Conv2d`` / ``Linear`` default init (kaiming-uniform with a=sqrt(5): weights and
    biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))) for every conv/linear of ``module``."""
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_graph(module):
        if isinstance(m, (nnx.Conv, nnx.Linear)):
            shape = tuple(m.kernel.value.shape)
            bound = 1.0 / math.sqrt(int(np.prod(shape[:-1])))
            dt = m.kernel.value.dtype
            m.kernel.value = jnp.asarray(rng.uniform(-bound, bound, shape), dt)
            if m.bias is not None:
                m.bias.value = jnp.asarray(rng.uniform(-bound, bound, m.bias.value.shape), dt)


def _zero(module) -> None:
    for _, m in nnx.iter_graph(module):
        if isinstance(m, (nnx.Conv, nnx.Linear)):
            m.kernel.value = jnp.zeros_like(m.kernel.value)
            if m.bias is not None:
                m.bias.value = jnp.zeros_like(m.bias.value)


def _retype_params(module, cls) -> None:
    """Make every plain ``nnx.Param`` of ``module`` a ``cls`` (values unchanged)."""
    for _, m in list(nnx.iter_graph(module)):
        if not isinstance(m, nnx.Module):
            continue
        for name, value in list(vars(m).items()):
            if type(value) is nnx.Param:
                setattr(m, name, cls(value.value))


class ControlNetConditioningEmbedding(nnx.Module):
    """conv_in, SiLU, then (conv c->c, SiLU, strided conv c->c', SiLU) per channel step, conv_out
    (zero-initialised by diffusers): image-space condition -> the latent grid's ``conv_in`` width."""

    def __init__(self, embedding_channels: int, conditioning_channels: int, block_out_channels,
                 p: Precision, rngs: nnx.Rngs):
        boc = tuple(block_out_channels)
        self.conv_in = conv(conditioning_channels, boc[0], 3, p, rngs)
        blocks = []
        for i in range(len(boc) - 1):
            blocks.append(conv(boc[i], boc[i], 3, p, rngs))
            blocks.append(conv(boc[i], boc[i + 1], 3, p, rngs, stride=2, padding=1))
        self.blocks = nnx.List(blocks)
        self.conv_out = conv(boc[-1], embedding_channels, 3, p, rngs)

    def __call__(self, x):
        x = jax.nn.silu(self.conv_in(x))
        for block in self.blocks:
            x = jax.nn.silu(block(x))
        return self.conv_out(x)


class ControlNetModel(nnx.Module):
    def __init__(self, config: ControlNetConfig | dict, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str | None = None):
        cfg = (config if isinstance(config, ControlNetConfig)
               else ControlNetConfig.from_dict(read_config(config, "ControlNet config")))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        p = Precision(dtype, param_dtype, attention_implementation)
        self.config = cfg
        self.dtype = dtype
        n = len(cfg.down_block_types)
        boc = tuple(cfg.block_out_channels)
        heads = cfg.heads
        cross = per_block(cfg.cross_attention_dim, n, "cross_attention_dim")
        tlayers = per_block(cfg.transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = per_block(cfg.only_cross_attention, n, "only_cross_attention")
        temb_dim = boc[0] * 4

        self.conv_in = conv(cfg.in_channels, boc[0], 3, p, rngs)
        self.time_embedding = TimestepEmbedding(boc[0], temb_dim, p, rngs)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            boc[0], cfg.conditioning_channels, cfg.conditioning_embedding_out_channels, p, rngs)
        down, zero_convs = [], [conv(boc[0], boc[0], 1, p, rngs)]
        out_ch = boc[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            last = i == n - 1
            down.append(DownBlock(f"{PATH_PREFIX}down_blocks.{i}", in_ch, out_ch, temb_dim,
                                  cfg.layers_per_block, kind == "CrossAttnDownBlock2D", not last,
                                  heads[i], tlayers[i], cross[i], cfg, p, rngs, only_cross[i]))
            zero_convs += [conv(out_ch, out_ch, 1, p, rngs)
                           for _ in range(cfg.layers_per_block + (0 if last else 1))]
        self.down_blocks = nnx.List(down)
        self.controlnet_down_blocks = nnx.List(zero_convs)
        self.mid_block = MidBlock(boc[-1], temb_dim, heads[-1], tlayers[-1], cross[-1], cfg, p, rngs,
                                  path=f"{PATH_PREFIX}mid_block")
        self.controlnet_mid_block = conv(boc[-1], boc[-1], 1, p, rngs)
        _retype_params(self, ControlNetParam)

    @classmethod
    def from_config(cls, config, **kwargs) -> "ControlNetModel":
        return cls(config, **kwargs)

    @property
    def num_residuals(self) -> int:
        return len(self.controlnet_down_blocks)

    def __call__(self, sample: jax.Array, timesteps, encoder_hidden_states: jax.Array,
                 controlnet_cond: jax.Array, *, conditioning_scale=1.0,
                 guess_mode: bool = False) -> ControlNetOutput:
        cfg = self.config
        chex.assert_rank(sample, 4)
        chex.assert_rank(encoder_hidden_states, 3)
        b, h, w = sample.shape[:3]
        if sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"ControlNet expects channels-last samples with {cfg.in_channels} "
                             f"channels, got shape {sample.shape}")
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"batch of encoder_hidden_states {encoder_hidden_states.shape} does "
                             f"not match the sample batch {b}")
        if controlnet_cond is None:
            raise ValueError("the ControlNet needs a conditioning image (controlnet_cond), got None")
        cond = jnp.asarray(controlnet_cond)
        f = cfg.conditioning_downscale
        if cond.ndim != 4 or cond.shape[-1] != cfg.conditioning_channels:
            raise ValueError(f"conditioning image must be (B, H, W, {cfg.conditioning_channels}) "
                             f"channels-last, got shape {cond.shape}")
        if cond.shape[0] not in (1, b):
            raise ValueError(f"{cond.shape[0]} conditioning images for a batch of {b} samples")
        if tuple(cond.shape[1:3]) != (f * h, f * w):
            raise ValueError(f"conditioning image of size {tuple(cond.shape[1:3])} does not match "
                             f"latents of size {(h, w)} (expected {(f * h, f * w)}: {f}x the "
                             "latent size)")
        cond = jnp.broadcast_to(cond, (b,) + cond.shape[1:])
        if cfg.controlnet_conditioning_channel_order == "bgr":
            cond = cond[..., ::-1]
        dt = self.dtype
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
                                   cfg.freq_shift).astype(dt)
        emb = self.time_embedding(t_emb)
        context = encoder_hidden_states.astype(dt)
        x = self.conv_in(sample.astype(dt)) + self.controlnet_cond_embedding(cond.astype(dt))
        skips = [x]
        for block in self.down_blocks:
            x, outs = block(x, emb, context)
            skips.extend(outs)
        x = self.mid_block(x, emb, context)
        down = [zc(s) for s, zc in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(x)

        scale = jnp.asarray(conditioning_scale, jnp.float32)
        if scale.ndim == 1:  # per sample
            scale = scale.reshape(-1, 1, 1, 1)
        if guess_mode and not cfg.global_pool_conditions:
            # diffusers: torch.logspace(-1, 0, n + 1) * conditioning_scale, 0.1 (shallow) to 1 (mid)
            steps = jnp.asarray(np.logspace(-1, 0, len(down) + 1, dtype=np.float32))
            down = [d * (steps[i] * scale).astype(d.dtype) for i, d in enumerate(down)]
            mid = mid * (steps[-1] * scale).astype(mid.dtype)
        else:
            down = [d * scale.astype(d.dtype) for d in down]
            mid = mid * scale.astype(mid.dtype)
        if cfg.global_pool_conditions:
            down = [jnp.mean(d, axis=(1, 2), keepdims=True) for d in down]
            mid = jnp.mean(mid, axis=(1, 2), keepdims=True)
        return ControlNetOutput(tuple(down), mid)


# ----------------------------------------------------------------------------------------------
# from_unet


_FROM_UNET = ("conv_in", "time_embedding", "down_blocks", "mid_block")


def controlnet_config_from_unet(unet_config: UNetConfig, *, conditioning_channels: int = 3,
                                conditioning_embedding_out_channels=(16, 32, 96, 256),
                                controlnet_conditioning_channel_order: str = "rgb") -> ControlNetConfig:
    """The config diffusers' ``ControlNetModel.from_unet`` builds from a UNet's config."""
    u = unet_config
    if u.time_embedding_dim not in (None, u.block_out_channels[0] * 4) or u.conv_in_kernel != 3:
        raise ValueError("ControlNetModel.from_unet: the UNet has a non-default time_embedding_dim "
                         "or conv_in_kernel, which diffusers' ControlNetModel cannot copy")
    if u.center_input_sample:
        raise ValueError("ControlNetModel.from_unet: center_input_sample UNets are not supported")
    layers = u.layers_per_block
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            raise ValueError(f"ControlNetModel.from_unet: layers_per_block={layers!r} differs "
                             "between blocks; diffusers' ControlNetModel takes one integer")
        layers = layers[0]
    return ControlNetConfig(
        in_channels=u.in_channels, conditioning_channels=conditioning_channels,
        flip_sin_to_cos=u.flip_sin_to_cos, freq_shift=u.freq_shift,
        down_block_types=tuple(u.down_block_types), mid_block_type=u.mid_block_type,
        only_cross_attention=u.only_cross_attention, block_out_channels=tuple(u.block_out_channels),
        layers_per_block=layers, downsample_padding=u.downsample_padding,
        mid_block_scale_factor=u.mid_block_scale_factor, norm_num_groups=u.norm_num_groups,
        norm_eps=u.norm_eps, cross_attention_dim=u.cross_attention_dim,
        transformer_layers_per_block=u.transformer_layers_per_block,
        attention_head_dim=u.attention_head_dim, use_linear_projection=u.use_linear_projection,
        upcast_attention=u.upcast_attention,
        controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels))


def controlnet_from_unet(unet, *, conditioning_channels: int = 3,
                         conditioning_embedding_out_channels=(16, 32, 96, 256),
                         controlnet_conditioning_channel_order: str = "rgb",
                         load_weights_from_unet: bool = True, seed: int = 0, dtype=None,
                         param_dtype=None, attention_implementation: str | None = None) -> ControlNetModel:
    """A new ControlNet initialised from ``unet`` as diffusers' ``ControlNetModel.from_unet``.

    The config is copied from the UNet's; ``conv_in``, the time embedding, the down blocks and
    the mid block get (copies of) the UNet's weights (``load_weights_from_unet``); the
    conditioning embedding's convolutions get PyTorch's default initialisation (seeded by
    ``seed``) except its ``conv_out``, which like every zero convolution
    (``controlnet_down_blocks``, ``controlnet_mid_block``) starts at zero -- so a fresh
    ControlNet leaves the UNet's output unchanged. ``unet`` may be LoRA-wrapped (``.unet``).
    """
    base = getattr(unet, "unet", unet)
    if not isinstance(getattr(base, "config", None), UNetConfig):
        raise ValueError(f"controlnet_from_unet needs a UNet2DConditionModel, got {type(unet).__name__}")
    cfg = controlnet_config_from_unet(
        base.config, conditioning_channels=conditioning_channels,
        conditioning_embedding_out_channels=conditioning_embedding_out_channels,
        controlnet_conditioning_channel_order=controlnet_conditioning_channel_order)
    kernel = base.conv_in.kernel.value
    dtype = dtype or base.dtype
    param_dtype = param_dtype or kernel.dtype
    if attention_implementation is None:
        attention_implementation = next(
            (m.attention_implementation for _, m in nnx.iter_graph(base)
             if hasattr(m, "attention_implementation")), None)
    cn = nnx.eval_shape(lambda: ControlNetModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                attention_implementation=attention_implementation))
    # materialise (norm scales one, everything else zero), then fill as diffusers does
    src = dict(nnx.to_flat_state(nnx.state(base, nnx.Param))) if load_weights_from_unet else {}
    flat = dict(nnx.to_flat_state(nnx.state(cn, nnx.Param)))
    for path, var in flat.items():
        fill = jnp.ones if str(path[-1]) == "scale" else jnp.zeros
        var.value = fill(var.value.shape, var.value.dtype)
    nnx.update(cn, nnx.from_flat_state(flat))
    _torch_default_init(cn, seed)
    if load_weights_from_unet:
        flat = dict(nnx.to_flat_state(nnx.state(cn, nnx.Param)))
        for path, var in flat.items():
            if path[0] in _FROM_UNET:
                # a copy: the ControlNet may be trained with donated buffers, the UNet stays frozen
                var.value = jnp.array(src[path].value, dtype=var.value.dtype, copy=True)
        nnx.update(cn, nnx.from_flat_state(flat))
    _zero(cn.controlnet_cond_embedding.conv_out)
    _zero(cn.controlnet_down_blocks)
    _zero(cn.controlnet_mid_block)
    return cn
