"""SD1.x single files: the SD1.5 component configs, the LDM key prefixes, and each component's
diffusers config inferred from the shapes of its tensors (used by :mod:`jaxvedit.models.single_file`,
which converts the tensors themselves, and by :mod:`jaxvedit.models.controlnet_io`)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import numpy as np

from jaxvedit.models.weights import WeightLoadError


# ----------------------------------------------------------------------------------------------
# SD1.5 defaults: the config.json files of stable-diffusion-v1-5/stable-diffusion-v1-5, verbatim
# (written by diffusers 0.6.0 / transformers 4.22; keys a later version added are absent, so
# their defaults apply -- e.g. AutoencoderKL's scaling_factor defaults to 0.18215,
# UNet2DConditionModel's use_linear_projection to false).

SD15_UNET_CONFIG: dict = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

SD15_VAE_CONFIG: dict = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": [
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
    ],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": [
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
    ],
}

#: SD1.x latent scaling (the LDM config's ``scale_factor``; AutoencoderKL's default).
SD15_VAE_SCALING_FACTOR = 0.18215

SD15_TEXT_ENCODER_CONFIG: dict = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0",
    "vocab_size": 49408,
}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
_VAE_PREFIXES = (VAE_PREFIX, "vae.")


def _strip_prefix(state: Mapping[str, np.ndarray], prefixes: tuple[str, ...]):
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return None, {}

# ----------------------------------------------------------------------------------------------
# config inference


def _count_indices(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if idx and idx != set(range(max(idx) + 1)):
        raise WeightLoadError(f"{prefix}* indices are not contiguous: {sorted(idx)}")
    return len(idx)


def _need(state: Mapping, key: str, what: str) -> np.ndarray:
    if key not in state:
        raise WeightLoadError(f"cannot infer the {what} config: the checkpoint lacks {key}")
    return state[key]


def _merge(base: dict, inferred: dict, override: Mapping | None) -> dict:
    config = copy.deepcopy(base)
    config.update(inferred)
    if override:
        config.update(copy.deepcopy(dict(override)))
    return config


def infer_down_path(state: Mapping[str, np.ndarray], what: str):
    """``(levels, layers per level, channels, down block types, transformer depths)`` of an LDM
    ``input_blocks.*`` down path (a UNet's or a ControlNet's), from its tensors' shapes."""
    n_in = _count_indices(state, "input_blocks.")
    downsamplers = [k for k in state if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k)]
    n_blocks = len(downsamplers) + 1
    if n_in % n_blocks:
        raise WeightLoadError(f"cannot infer the {what} config: {n_in} input blocks do not split "
                              f"into {n_blocks} levels")
    layers = n_in // n_blocks - 1
    channels, types, depth = [], [], []
    for b in range(n_blocks):
        i = 1 + b * (layers + 1)
        channels.append(int(_need(state, f"input_blocks.{i}.0.out_layers.3.weight", what).shape[0]))
        attn = f"input_blocks.{i}.1.proj_in.weight" in state
        types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        if attn:
            depth.append(_count_indices(state, f"input_blocks.{i}.1.transformer_blocks."))
    return n_blocks, layers, channels, types, depth


def infer_unet_config(state: Mapping[str, np.ndarray], override: Mapping | None = None) -> dict:
    """A diffusers UNet config from the LDM UNet tensors' shapes (``override`` wins).

    Shapes give channels, block/layer counts, which blocks have attention, transformer depth,
    cross-attention width and linear vs conv projections. They cannot give the number of heads,
    the norm groups/eps or the sample size: those come from :data:`SD15_UNET_CONFIG` unless
    overridden. Keys absent from the SD1.5 file are only added when they differ from diffusers'
    defaults, so an SD1.5 checkpoint gives exactly :data:`SD15_UNET_CONFIG`.
    """
    prefix, unet = _strip_prefix(state, (UNET_PREFIX,))
    if prefix is None:
        unet = dict(state)
    w = "UNet"
    conv_in = _need(unet, "input_blocks.0.0.weight", w)
    conv_out = _need(unet, "out.2.weight", w)
    n_blocks, layers, channels, down_types, depth = infer_down_path(unet, w)
    n_out = _count_indices(unet, "output_blocks.")
    if n_out != n_blocks * (layers + 1):
        raise WeightLoadError(f"cannot infer the UNet config: {n_out} output blocks, expected "
                              f"{n_blocks * (layers + 1)} for {n_blocks} levels of {layers} layers")
    up_types = []
    for u in range(n_blocks):
        i = u * (layers + 1)
        has_attn = f"output_blocks.{i}.1.proj_in.weight" in unet
        up_types.append("CrossAttnUpBlock2D" if has_attn else "UpBlock2D")
    attn_keys = sorted(k for k in unet if k.endswith(".attn2.to_k.weight"))
    proj_in = sorted(k for k in unet if k.endswith(".proj_in.weight"))
    inferred = {
        "block_out_channels": channels,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(conv_out.shape[0]),
        "layers_per_block": layers,
    }
    if attn_keys:
        inferred["cross_attention_dim"] = int(unet[attn_keys[0]].shape[1])
    if proj_in and unet[proj_in[0]].ndim == 2:
        inferred["use_linear_projection"] = True
    if "middle_block.1.proj_in.weight" in unet:
        depth.append(_count_indices(unet, "middle_block.1.transformer_blocks."))
    elif "middle_block.0.in_layers.0.weight" not in unet:
        inferred["mid_block_type"] = None
    if depth and set(depth) != {1}:
        inferred["transformer_layers_per_block"] = (depth[0] if len(set(depth)) == 1 else None)
        if inferred["transformer_layers_per_block"] is None:
            raise WeightLoadError(f"cannot infer the UNet config: transformer depths {depth} differ "
                                  f"between blocks; pass transformer_layers_per_block explicitly")
    if any(k.endswith(".attn1.to_q.bias") for k in unet):
        inferred["attention_bias"] = True
    time_dim = int(_need(unet, "time_embed.0.weight", w).shape[0])
    if time_dim != 4 * channels[0]:
        inferred["time_embedding_dim"] = time_dim
    for name in ("conv_in_kernel", "conv_out_kernel"):
        k = int((conv_in if name == "conv_in_kernel" else conv_out).shape[-1])
        if k != 3:
            inferred[name] = k
    return _merge(SD15_UNET_CONFIG, inferred, override)


def infer_vae_config(state: Mapping[str, np.ndarray], override: Mapping | None = None) -> dict:
    """A diffusers AutoencoderKL config from the LDM VAE tensors' shapes (``override`` wins).

    Norm groups and sample size come from :data:`SD15_VAE_CONFIG`; ``scaling_factor`` is
    always set explicitly: the file's ``scale_factor`` if it stores one, else 0.18215 (SD1.x).
    """
    prefix, vae = _strip_prefix(state, _VAE_PREFIXES)
    if prefix is None:
        vae = dict(state)
    w = "VAE"
    n = _count_indices(vae, "encoder.down.")
    if n == 0:
        raise WeightLoadError("cannot infer the VAE config: the checkpoint has no "
                              f"{VAE_PREFIX}encoder.down.* tensors")
    channels = [int(_need(vae, f"encoder.down.{i}.block.0.conv1.weight", w).shape[0])
                for i in range(n)]
    inferred = {
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": int(_need(vae, "encoder.conv_in.weight", w).shape[1]),
        "out_channels": int(_need(vae, "decoder.conv_out.weight", w).shape[0]),
        "latent_channels": int(_need(vae, "decoder.conv_in.weight", w).shape[1]),
        "layers_per_block": _count_indices(vae, "encoder.down.0.block."),
    }
    if "encoder.mid.attn_1.q.weight" not in vae:
        inferred["mid_block_add_attention"] = False
    if "quant_conv.weight" not in vae:
        inferred["use_quant_conv"] = False
    if "post_quant_conv.weight" not in vae:
        inferred["use_post_quant_conv"] = False
    scale = state.get("scale_factor")
    inferred["scaling_factor"] = (float(np.asarray(scale).reshape(())) if scale is not None
                                  else SD15_VAE_SCALING_FACTOR)
    return _merge(SD15_VAE_CONFIG, inferred, override)


def infer_text_encoder_config(state: Mapping[str, np.ndarray], override: Mapping | None = None) -> dict:
    """A transformers CLIPTextConfig dict from the (converted or LDM) text encoder tensors.

    Heads cannot be read from shapes: ``hidden_size // 64`` (12 for SD1.x's ViT-L/14 tower).
    """
    if any(k.startswith(TEXT_ENCODER_PREFIX) for k in state):
        from jaxvedit.models.single_file import convert_ldm_text_encoder  # the LDM layout first

        state = convert_ldm_text_encoder(state)
    w = "text encoder"
    tok = _need(state, "text_model.embeddings.token_embedding.weight", w)
    pos = _need(state, "text_model.embeddings.position_embedding.weight", w)
    fc1 = _need(state, "text_model.encoder.layers.0.mlp.fc1.weight", w)
    hidden = int(tok.shape[1])
    inferred = {
        "vocab_size": int(tok.shape[0]),
        "hidden_size": hidden,
        "max_position_embeddings": int(pos.shape[0]),
        "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": _count_indices(state, "text_model.encoder.layers."),
        "num_attention_heads": max(1, hidden // 64),
    }
    return _merge(SD15_TEXT_ENCODER_CONFIG, inferred, override)
