"""Single-file SD1.x checkpoints (original LDM / CompVis key layout) -> diffusers layout, no torch.

A "single file" is what the original Stable Diffusion code base and most UIs save: one state
dict holding the UNet (``model.diffusion_model.*``), the VAE (``first_stage_model.*``), the CLIP
text encoder (``cond_stage_model.transformer.*``), and often EMA copies and the noise schedule.
This module reads such a ``.safetensors`` file into numpy and renames (and, where the layouts
differ, reshapes) each component's tensors into the key layout of diffusers'
``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers' ``CLIPTextModel``, so that
:func:`jaxvedit.models.weights.load_torch_state_dict` can load them into our Flax modules.

The conversion is written from the component's *config*: for a given config we enumerate every
diffusers key the model has and the LDM key it comes from. A key the config expects but the
file lacks, or a key under a component's prefix that the config does not explain, raises
:class:`~jaxvedit.models.weights.WeightLoadError` naming it -- nothing is dropped silently.

Layout rules (as diffusers 0.42.1's ``single_file_utils.convert_ldm_*`` apply them):

========================================  =================================================
LDM (``model.diffusion_model.``)          diffusers ``UNet2DConditionModel``
========================================  =================================================
``time_embed.0`` / ``time_embed.2``       ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                      ``conv_in``
``input_blocks.{1+b(L+1)+l}.0``           ``down_blocks.{b}.resnets.{l}``
``input_blocks.{1+b(L+1)+l}.1``           ``down_blocks.{b}.attentions.{l}``
``input_blocks.{(b+1)(L+1)}.0.op``        ``down_blocks.{b}.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``      ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.{u(L+1)+l}.0``            ``up_blocks.{u}.resnets.{l}``   (L+1 resnets per up block)
``output_blocks.{..}.1``                  ``up_blocks.{u}.attentions.{l}``
``output_blocks.{u(L+1)+L}.{1|2}.conv``   ``up_blocks.{u}.upsamplers.0.conv`` (2 if the block has attention)
``out.0`` / ``out.2``                     ``conv_norm_out`` / ``conv_out``
resnet ``in_layers.0/.2``, ``emb_layers.1``, ``out_layers.0/.3``, ``skip_connection``
  -> ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``
========================================  =================================================

(L = ``layers_per_block``.) Spatial transformers have the same leaf names in both layouts.
``proj_in``/``proj_out`` follow the config: 1x1 convolutions (4-D) when
``use_linear_projection`` is false (SD1.x), linear (2-D) when true.

The VAE (``first_stage_model.``) maps ``encoder.down.{i}.block.{j}`` -> ``encoder.down_blocks.{i}.resnets.{j}``,
``decoder.up.{k}`` -> ``decoder.up_blocks.{n-1-k}`` (LDM numbers decoder levels by resolution,
highest first; diffusers in execution order),
``mid.block_1/attn_1/block_2`` -> ``mid_block.resnets.0/attentions.0/resnets.1``,
``nin_shortcut`` -> ``conv_shortcut``, ``norm_out`` -> ``conv_norm_out``, and the mid attention's
``norm, q, k, v, proj_out`` (1x1 convolutions) -> ``group_norm, to_q, to_k, to_v, to_out.0``
(linear: the 1x1 is squeezed to ``(C, C)``).

The text encoder is a transformers ``CLIPTextModel`` under ``cond_stage_model.transformer.``;
only the prefix changes, giving ``text_model.*`` keys -- the layout of SD1.5's
``text_encoder/model.safetensors`` (transformers >= 5 saves a bare ``CLIPTextModel`` without the
``text_model.`` level and reads both; so does :mod:`jaxvedit.models.clip`). Very old files lack
the ``text_model.`` level inside the prefix: it is added.

Loading pickled ``.ckpt`` files is refused: it needs torch and can execute arbitrary code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jaxvedit.models.single_file_config import (SD15_TEXT_ENCODER_CONFIG, SD15_UNET_CONFIG,  # noqa: F401 (re-exported)
                                               SD15_VAE_CONFIG, SD15_VAE_SCALING_FACTOR,
                                               TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX,
                                               _VAE_PREFIXES, _count_indices, _need,
                                               _strip_prefix, infer_text_encoder_config,
                                               infer_unet_config, infer_vae_config)
from jaxvedit.models.weights import WeightLoadError, _listing, read_safetensors

__all__ = [
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SD15_VAE_SCALING_FACTOR",
    "SD15_TEXT_ENCODER_CONFIG",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "TEXT_ENCODER_PREFIX",
    "read_single_file",
    "convert_ldm_unet",
    "convert_ldm_vae",
    "convert_ldm_text_encoder",
    "infer_unet_config",
    "infer_vae_config",
    "infer_text_encoder_config",
    "load_single_file_components",
    "ldm_unet_key_map",
    "ldm_vae_key_map",
]


# Keys single files carry that belong to no inference component: known, reported, not errors.
_IGNORED_PREFIXES = (
    "model_ema.",  # EMA copy of the UNet (flattened names) + decay/num_updates
    "first_stage_model.loss.",  # VAE training losses (LPIPS, discriminator, logvar)
)
_IGNORED_NAMES = frozenset({
    # DDPM noise schedule buffers of ldm.models.diffusion.ddpm.LatentDiffusion
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "scale_factor",
    # a buffer (persistent in old transformers versions, not a weight)
    TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids",
    TEXT_ENCODER_PREFIX + "embeddings.position_ids",
})

# diffusers defaults of the config keys the UNet key layout depends on
_UNET_DEFAULTS = {
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "use_linear_projection": False,
    "attention_bias": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
# config keys that add modules (and so keys) this converter does not map: must stay at default
_UNET_UNSUPPORTED = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "dual_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "class_embeddings_concat": False,
}
_VAE_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": (64,),
    "latent_channels": 4,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

_UNET_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UNET_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


def _get(config: Mapping, key: str, defaults: Mapping):
    return config.get(key, defaults[key])


# ----------------------------------------------------------------------------------------------
# reading


def read_single_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a single-file checkpoint (``.safetensors``) into numpy arrays.

    A pickled ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` file is refused with instructions to
    convert it once; a missing file raises ``FileNotFoundError``, an unreadable one
    :class:`WeightLoadError` (a ``ValueError``) -- both name the path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"single-file checkpoint not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"single-file checkpoint is not a file: {path}")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ValueError(_pickle_refusal(path))
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte header length, then the JSON header's "{"; torch.save writes a zip
    # ("PK\x03\x04"), older torch a raw pickle ("\x80" + protocol)
    if head[8:9] != b"{" and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise ValueError(f"{path} is not a safetensors file but a PyTorch pickle: "
                         + _pickle_refusal(path))
    try:
        return read_safetensors(path)
    except WeightLoadError as err:
        detail = str(err).removeprefix(f"cannot read {path}: ")
        raise WeightLoadError(f"corrupt or unreadable safetensors checkpoint {path}: {detail}") from err


def _pickle_refusal(path: Path) -> str:
    out = path.with_suffix(".safetensors")
    return (
        f"refusing to load {path}: pickled PyTorch checkpoints (.ckpt/.pt/.bin) need torch to read "
        f"and unpickling can execute arbitrary code. Convert it once to safetensors on a machine "
        f"with torch, e.g.\n"
        f"  python -c \"import torch, safetensors.torch as st; "
        f"sd = torch.load('{path}', map_location='cpu', weights_only=True); "
        f"sd = sd.get('state_dict', sd); "
        f"st.save_file({{k: v.detach().clone().contiguous() for k, v in sd.items() "
        f"if isinstance(v, torch.Tensor)}}, '{out}')\"\n"
        f"then load {out.name}. (weights_only=True refuses files that also pickle training "
        f"objects; use weights_only=False only for a file you trust.)"
    )


# ----------------------------------------------------------------------------------------------
# key maps: for a config, every diffusers key and the LDM key it comes from

# (diffusers leaf, LDM leaf) of one UNet resnet, one VAE resnet
_UNET_RESNET_LEAVES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"),
                       ("time_emb_proj", "emb_layers.1"), ("norm2", "out_layers.0"),
                       ("conv2", "out_layers.3"))
_VAE_RESNET_LEAVES = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_VAE_ATTN_LEAVES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                    ("to_out.0", "proj_out"))

# transforms applied to an LDM tensor on its way to the diffusers layout
_AS_IS = "as_is"
_LINEAR = "linear"  # a weight used as Linear (out, in): squeeze a 1x1 conv
_CONV1X1 = "conv1x1"  # a weight used as a 1x1 Conv (out, in, 1, 1): unsqueeze a linear


def _wb(pairs: list, diff: str, ldm: str, transform: str = _AS_IS, bias: bool = True):
    pairs.append((diff + ".weight", ldm + ".weight", transform))
    if bias:
        pairs.append((diff + ".bias", ldm + ".bias", _AS_IS))


def _unet_resnet(pairs, diff, ldm, c_in, c_out):
    for d, l in _UNET_RESNET_LEAVES:
        _wb(pairs, f"{diff}.{d}", f"{ldm}.{l}")
    if c_in != c_out:
        _wb(pairs, f"{diff}.conv_shortcut", f"{ldm}.skip_connection")


def _unet_transformer(pairs, diff, ldm, depth, linear_proj, attn_bias):
    proj = _LINEAR if linear_proj else _CONV1X1
    _wb(pairs, f"{diff}.norm", f"{ldm}.norm")
    _wb(pairs, f"{diff}.proj_in", f"{ldm}.proj_in", proj)
    for j in range(depth):
        d, l = f"{diff}.transformer_blocks.{j}", f"{ldm}.transformer_blocks.{j}"
        for attn in ("attn1", "attn2"):
            for qkv in ("to_q", "to_k", "to_v"):
                _wb(pairs, f"{d}.{attn}.{qkv}", f"{l}.{attn}.{qkv}", bias=attn_bias)
            _wb(pairs, f"{d}.{attn}.to_out.0", f"{l}.{attn}.to_out.0")
        for n in ("norm1", "norm2", "norm3"):
            _wb(pairs, f"{d}.{n}", f"{l}.{n}")
        _wb(pairs, f"{d}.ff.net.0.proj", f"{l}.ff.net.0.proj")
        _wb(pairs, f"{d}.ff.net.2", f"{l}.ff.net.2")
    _wb(pairs, f"{diff}.proj_out", f"{ldm}.proj_out", proj)


def _per_block(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet config {name} has {len(value)} entries for {n} blocks")
        return list(value)
    return [value] * n


def ldm_unet_key_map(config: Mapping) -> list[tuple[str, str, str]]:
    """``[(diffusers_key, ldm_key_without_prefix, transform), ...]`` for a UNet config.

    The complete key set of ``UNet2DConditionModel(**config)`` for the SD1.x block types.
    """
    for key, default in _UNET_UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise ValueError(f"UNet config {key}={config[key]!r} is not supported by the LDM "
                             f"single-file conversion (SD1.x layout only)")
    channels = list(_get(config, "block_out_channels", _UNET_DEFAULTS))
    down_types = list(_get(config, "down_block_types", _UNET_DEFAULTS))
    up_types = list(_get(config, "up_block_types", _UNET_DEFAULTS))
    mid_type = _get(config, "mid_block_type", _UNET_DEFAULTS)
    n = len(channels)
    if len(down_types) != n or len(up_types) != n:
        raise ValueError(f"UNet config has {n} block_out_channels but {len(down_types)} down and "
                         f"{len(up_types)} up block types")
    for t in down_types:
        if t not in _UNET_DOWN_TYPES:
            raise ValueError(f"UNet down block type {t!r} is not supported (SD1.x: {_UNET_DOWN_TYPES})")
    for t in up_types:
        if t not in _UNET_UP_TYPES:
            raise ValueError(f"UNet up block type {t!r} is not supported (SD1.x: {_UNET_UP_TYPES})")
    if mid_type not in ("UNetMidBlock2DCrossAttn", None):
        raise ValueError(f"UNet mid block type {mid_type!r} is not supported "
                         f"(SD1.x: 'UNetMidBlock2DCrossAttn')")
    layers = _get(config, "layers_per_block", _UNET_DEFAULTS)
    if not isinstance(layers, int):
        raise ValueError(f"UNet config layers_per_block={layers!r}: the LDM layout needs one "
                         f"integer for all blocks")
    depth = _per_block(_get(config, "transformer_layers_per_block", _UNET_DEFAULTS), n,
                       "transformer_layers_per_block")
    rev_depth = config.get("reverse_transformer_layers_per_block")
    rev_depth = ([_per_block(d, layers + 1, "reverse_transformer_layers_per_block")
                  for d in rev_depth] if rev_depth is not None
                 else [[d] * (layers + 1) for d in reversed(depth)])
    linear = bool(_get(config, "use_linear_projection", _UNET_DEFAULTS))
    attn_bias = bool(_get(config, "attention_bias", _UNET_DEFAULTS))

    pairs: list = []
    _wb(pairs, "time_embedding.linear_1", "time_embed.0")
    _wb(pairs, "time_embedding.linear_2", "time_embed.2")
    _wb(pairs, "conv_in", "input_blocks.0.0")

    # down: input_blocks.0 is conv_in, then per block L x (resnet[, attention]) [+ downsampler]
    out_ch = channels[0]
    for b, block_type in enumerate(down_types):
        in_ch, out_ch = out_ch, channels[b]
        for l in range(layers):
            i = 1 + b * (layers + 1) + l
            _unet_resnet(pairs, f"down_blocks.{b}.resnets.{l}", f"input_blocks.{i}.0",
                         in_ch if l == 0 else out_ch, out_ch)
            if block_type == "CrossAttnDownBlock2D":
                _unet_transformer(pairs, f"down_blocks.{b}.attentions.{l}", f"input_blocks.{i}.1",
                                  depth[b], linear, attn_bias)
        if b < n - 1:
            _wb(pairs, f"down_blocks.{b}.downsamplers.0.conv",
                f"input_blocks.{(b + 1) * (layers + 1)}.0.op")

    if mid_type is not None:
        c = channels[-1]
        _unet_resnet(pairs, "mid_block.resnets.0", "middle_block.0", c, c)
        _unet_transformer(pairs, "mid_block.attentions.0", "middle_block.1", depth[-1], linear,
                          attn_bias)
        _unet_resnet(pairs, "mid_block.resnets.1", "middle_block.2", c, c)

    # up: per block L+1 x (resnet[, attention]), the last one followed by the upsampler
    rev = list(reversed(channels))
    prev_out = rev[0]
    for u, block_type in enumerate(up_types):
        out_ch = rev[u]
        skip_in = rev[min(u + 1, n - 1)]
        for l in range(layers + 1):
            i = u * (layers + 1) + l
            res_skip = skip_in if l == layers else out_ch
            res_in = prev_out if l == 0 else out_ch
            _unet_resnet(pairs, f"up_blocks.{u}.resnets.{l}", f"output_blocks.{i}.0",
                         res_in + res_skip, out_ch)
            if block_type == "CrossAttnUpBlock2D":
                _unet_transformer(pairs, f"up_blocks.{u}.attentions.{l}", f"output_blocks.{i}.1",
                                  rev_depth[u][l], linear, attn_bias)
        if u < n - 1:
            slot = 2 if block_type == "CrossAttnUpBlock2D" else 1
            _wb(pairs, f"up_blocks.{u}.upsamplers.0.conv",
                f"output_blocks.{u * (layers + 1) + layers}.{slot}.conv")
        prev_out = out_ch

    _wb(pairs, "conv_norm_out", "out.0")
    _wb(pairs, "conv_out", "out.2")
    return pairs


def ldm_vae_key_map(config: Mapping) -> list[tuple[str, str, str]]:
    """``[(diffusers_key, ldm_key_without_prefix, transform), ...]`` for an AutoencoderKL config."""
    channels = list(_get(config, "block_out_channels", _VAE_DEFAULTS))
    n = len(channels)
    for name, allowed in (("down_block_types", "DownEncoderBlock2D"),
                          ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(name, [allowed] * n))
        if types != [allowed] * n:
            raise ValueError(f"VAE config {name}={types!r} is not supported "
                             f"(expected {n} x {allowed!r})")
    layers = _get(config, "layers_per_block", _VAE_DEFAULTS)
    mid_attn = bool(_get(config, "mid_block_add_attention", _VAE_DEFAULTS))
    pairs: list = []

    def resnet(diff, ldm, c_in, c_out):
        for d, l in _VAE_RESNET_LEAVES:
            _wb(pairs, f"{diff}.{d}", f"{ldm}.{l}")
        if c_in != c_out:
            _wb(pairs, f"{diff}.conv_shortcut", f"{ldm}.nin_shortcut")

    def mid(side):
        c = channels[-1]
        resnet(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", c, c)
        if mid_attn:
            for d, l in _VAE_ATTN_LEAVES:
                _wb(pairs, f"{side}.mid_block.attentions.0.{d}", f"{side}.mid.attn_1.{l}",
                    _AS_IS if d == "group_norm" else _LINEAR)
        resnet(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", c, c)

    _wb(pairs, "encoder.conv_in", "encoder.conv_in")
    out_ch = channels[0]
    for i in range(n):
        in_ch, out_ch = out_ch, channels[i]
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}",
                   in_ch if j == 0 else out_ch, out_ch)
        if i < n - 1:
            _wb(pairs, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    mid("encoder")
    _wb(pairs, "encoder.conv_norm_out", "encoder.norm_out")
    _wb(pairs, "encoder.conv_out", "encoder.conv_out")
    if _get(config, "use_quant_conv", _VAE_DEFAULTS):
        _wb(pairs, "quant_conv", "quant_conv")
    if _get(config, "use_post_quant_conv", _VAE_DEFAULTS):
        _wb(pairs, "post_quant_conv", "post_quant_conv")

    _wb(pairs, "decoder.conv_in", "decoder.conv_in")
    mid("decoder")
    rev = list(reversed(channels))
    prev_out = rev[0]
    for i in range(n):
        out_ch = rev[i]
        k = n - 1 - i  # LDM numbers the decoder levels from the highest resolution
        for j in range(layers + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{k}.block.{j}",
                   prev_out if j == 0 else out_ch, out_ch)
        if i < n - 1:
            _wb(pairs, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{k}.upsample.conv")
        prev_out = out_ch
    _wb(pairs, "decoder.conv_norm_out", "decoder.norm_out")
    _wb(pairs, "decoder.conv_out", "decoder.conv_out")
    return pairs


# ----------------------------------------------------------------------------------------------
# conversion


def _apply(transform: str, array: np.ndarray, key: str) -> np.ndarray:
    if transform == _AS_IS:
        return array
    if transform == _LINEAR:
        if array.ndim == 2:
            return array
        if array.ndim == 4 and array.shape[2:] == (1, 1):
            return array[:, :, 0, 0]
        if array.ndim == 3 and array.shape[2] == 1:  # conv1d, as old checkpoints store proj_attn
            return array[:, :, 0]
    if transform == _CONV1X1:
        if array.ndim == 4 and array.shape[2:] == (1, 1):
            return array
        if array.ndim == 2:
            return array[:, :, None, None]
    raise WeightLoadError(f"{key}: shape {tuple(array.shape)} is neither a linear nor a 1x1 "
                          f"convolution weight")



def _convert(state: Mapping[str, np.ndarray], pairs, prefix: str, what: str) -> dict:
    out, missing = {}, []
    for diff_key, ldm_key, transform in pairs:
        if ldm_key not in state:
            missing.append(f"{prefix}{ldm_key} (-> {diff_key})")
            continue
        out[diff_key] = _apply(transform, np.asarray(state[ldm_key]), prefix + ldm_key)
    used = {ldm for _, ldm, _ in pairs}
    unexpected = sorted(prefix + k for k in state if k not in used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} expected key(s) missing from the checkpoint: "
                        f"{_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the config does not account for "
                        f"(wrong config?): {_listing(unexpected)}")
    if problems:
        raise WeightLoadError(f"cannot convert the {what}: " + "; ".join(problems))
    return out


def convert_ldm_unet(state: Mapping[str, np.ndarray], unet_config: Mapping) -> dict[str, np.ndarray]:
    """LDM ``model.diffusion_model.*`` tensors -> diffusers ``UNet2DConditionModel`` state dict.

    ``state`` may be the whole single file (other components are skipped) or just the UNet's
    tensors, with or without the ``model.diffusion_model.`` prefix. Arrays are not copied
    (1x1 squeezes/unsqueezes are views).
    """
    prefix, unet = _strip_prefix(state, (UNET_PREFIX,))
    if prefix is None:
        prefix, unet = "", dict(state)
    if "time_embed.0.weight" not in unet and not any(k.startswith("input_blocks.") for k in unet):
        raise WeightLoadError(f"no UNet tensors ({UNET_PREFIX}*) in the checkpoint")
    return _convert(unet, ldm_unet_key_map(unet_config), prefix, "UNet")


def convert_ldm_vae(state: Mapping[str, np.ndarray], vae_config: Mapping) -> dict[str, np.ndarray]:
    """LDM ``first_stage_model.*`` tensors -> diffusers ``AutoencoderKL`` state dict.

    Also accepts a standalone LDM VAE file (keys ``encoder.*``/``decoder.*`` without prefix).
    The mid-block attention's 1x1-conv q/k/v/proj_out become (C, C) linear weights.
    """
    prefix, vae = _strip_prefix(state, _VAE_PREFIXES)
    if prefix is None:
        prefix = ""
        vae = {k: v for k, v in state.items()
               if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")}
    if not vae:
        raise WeightLoadError(f"no VAE tensors ({VAE_PREFIX}*) in the checkpoint")
    vae = {k: v for k, v in vae.items() if not k.startswith("loss.")}
    return _convert(vae, ldm_vae_key_map(vae_config), prefix, "VAE")


_CLIP_LAYER_LEAVES = tuple(
    f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.out_proj", "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2")
    for p in ("weight", "bias"))


def convert_ldm_text_encoder(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``cond_stage_model.transformer.*`` -> transformers ``CLIPTextModel`` keys ``text_model.*``.

    The ``position_ids`` buffer is dropped (transformers does not persist it). Every tensor of
    a CLIP text tower with the file's number of layers must be present, and nothing else.
    """
    prefix, clip = _strip_prefix(state, (TEXT_ENCODER_PREFIX,))
    if prefix is None:
        raise WeightLoadError(f"no text encoder tensors ({TEXT_ENCODER_PREFIX}*) in the checkpoint")
    out = {}
    for key, value in clip.items():
        new = key if key.startswith("text_model.") else "text_model." + key
        if new == "text_model.embeddings.position_ids":
            continue
        if new in out:
            raise WeightLoadError(f"text encoder key {new} appears twice in the checkpoint "
                                  f"(with and without the 'text_model.' level)")
        out[new] = np.asarray(value)
    n_layers = _count_indices(out, "text_model.encoder.layers.")
    expected = ["text_model.embeddings.token_embedding.weight",
                "text_model.embeddings.position_embedding.weight",
                "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"]
    expected += [f"text_model.encoder.layers.{i}.{leaf}" for i in range(n_layers)
                 for leaf in _CLIP_LAYER_LEAVES]
    missing = [TEXT_ENCODER_PREFIX + k for k in expected if k not in out]
    unexpected = sorted(TEXT_ENCODER_PREFIX + k for k in set(out) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} expected key(s) missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown key(s): {_listing(unexpected)}")
    if problems:
        raise WeightLoadError("cannot convert the text encoder: " + "; ".join(problems))
    return out


# ----------------------------------------------------------------------------------------------
# whole file


def _classify_leftovers(state: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    component = (UNET_PREFIX, TEXT_ENCODER_PREFIX) + _VAE_PREFIXES
    ignored, unknown = [], []
    for key in sorted(state):
        if key in _IGNORED_NAMES or key.startswith(_IGNORED_PREFIXES):
            ignored.append(key)
        elif not key.startswith(component):
            unknown.append(key)
    return ignored, unknown


def load_single_file_components(
    path_or_state: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    unet_config: Mapping | None = None,
    vae_config: Mapping | None = None,
    text_encoder_config: Mapping | None = None,
    use_ema: bool = False,
) -> dict:
    """Read an SD1.x single file and convert each component to the diffusers layout.

    Returns ``{"unet": {"config", "state_dict"}, "vae": {...}, "text_encoder": {...} (when the
    file has one), "ignored": [...], "unknown": [...]}``. Configs are inferred from the tensor
    shapes (see :func:`infer_unet_config`); a given config replaces the inferred one entirely
    (pass ``infer_unet_config(state, override={...})`` to change single keys).
    ``ignored`` lists keys known not to be needed (EMA weights, noise schedule buffers, VAE
    training losses); ``unknown`` lists keys of no known component, for the caller to report.
    ``use_ema``: take the UNet from the EMA copy (``model_ema.*``, LitEma's dot-less names) that
    full training checkpoints carry instead of ``model.diffusion_model.*`` (the default, as
    diffusers does); ``unet_source`` in the result says which was used.
    """
    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
        source = "state dict"
    else:
        state = read_single_file(path_or_state)
        source = str(path_or_state)
    for marker, what in (("cond_stage_model.model.", "an SD2.x checkpoint (OpenCLIP text encoder)"),
                         ("conditioner.embedders.", "an SDXL checkpoint"),
                         ("model.diffusion_model.label_emb.", "a class-conditioned UNet (SDXL/upscaler)")):
        if any(k.startswith(marker) for k in state):
            raise ValueError(f"{source} looks like {what} ({marker}* keys): only SD1.x single-file "
                             f"checkpoints are supported")
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise WeightLoadError(f"{source} has no UNet tensors ({UNET_PREFIX}*): not an SD1.x "
                              f"single-file checkpoint")
    if not any(k.startswith(_VAE_PREFIXES) for k in state):
        raise WeightLoadError(f"{source} has no VAE tensors ({VAE_PREFIX}*): not an SD1.x "
                              f"single-file checkpoint")
    if use_ema:
        state = _swap_in_ema(state, source)
    u_cfg = dict(unet_config) if unet_config is not None else infer_unet_config(state)
    v_cfg = dict(vae_config) if vae_config is not None else infer_vae_config(state)
    out: dict = {
        "unet": {"config": u_cfg, "state_dict": convert_ldm_unet(state, u_cfg)},
        "vae": {"config": v_cfg, "state_dict": convert_ldm_vae(state, v_cfg)},
    }
    if any(k.startswith(TEXT_ENCODER_PREFIX) for k in state):
        te = convert_ldm_text_encoder(state)
        t_cfg = (dict(text_encoder_config) if text_encoder_config is not None
                 else infer_text_encoder_config(te))
        out["text_encoder"] = {"config": t_cfg, "state_dict": te}
    out["ignored"], out["unknown"] = _classify_leftovers(state)
    out["unet_source"] = "model_ema" if use_ema else "model"
    return out


def _swap_in_ema(state: dict, source: str) -> dict:
    """Replace each ``model.diffusion_model.X`` by its EMA copy ``model_ema.diffusion_modelX``
    (dots removed, as LitEma names its buffers); the EMA keys used leave the state."""
    ema_keys = {k for k in state if k.startswith("model_ema.")} - {"model_ema.decay",
                                                                   "model_ema.num_updates"}
    if not ema_keys:
        raise WeightLoadError(f"use_ema: {source} has no EMA weights (model_ema.*); it may "
                              f"already be an EMA-only export -- load it with use_ema=False")
    out, used, missing = dict(state), [], []
    for key in state:
        if key.startswith(UNET_PREFIX):
            ema = "model_ema." + "".join(key.split(".")[1:])
            if ema in state:
                out[key] = state[ema]
                used.append(ema)
            else:
                missing.append(f"{ema} (for {key})")
    if missing:
        raise WeightLoadError(f"use_ema: {len(missing)} UNet tensor(s) have no EMA copy in "
                              f"{source}: {_listing(missing)}")
    for key in used:
        del out[key]
    return out
