"""Test helper: diffusers / transformers layout -> original LDM (CompVis) single-file layout.

Written independently of :mod:`jaxvedit.models.single_file` (key by key, by rewriting the
diffusers name with regular expressions instead of enumerating a config's key set), so that a
round trip through both checks one against the other. The tests also check that diffusers' own
``convert_ldm_*_checkpoint`` maps this output back to the original state dict, i.e. that what
we write here really is the LDM layout.

Works on any mapping of name -> array-like (numpy arrays or torch tensors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_leaf(rest: str) -> str:
    module, _, leaf = rest.partition(".")
    return f"{_RESNET[module]}.{leaf}"


def diffusers_to_ldm_unet(state: Mapping, config: Mapping, prefix: str = UNET_PREFIX) -> dict:
    """diffusers ``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` keys."""
    per = config["layers_per_block"] + 1  # LDM slots per level (resnets [+ sampler])
    up_types = list(config["up_block_types"])
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in fixed:
            new = f"{fixed[module]}.{leaf}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, l, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per + l}.0.{_resnet_leaf(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, l, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per + l}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet_leaf(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            u, l, rest = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{u * per + l}.0.{_resnet_leaf(rest)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            u, l, rest = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{u * per + l}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            u = int(m[1])
            slot = 2 if up_types[u].startswith("CrossAttn") else 1
            new = f"output_blocks.{u * per + per - 1}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"diffusers UNet key {key} has no LDM counterpart in this helper")
        out[prefix + new] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm_vae(state: Mapping, prefix: str = VAE_PREFIX) -> dict:
    """diffusers ``AutoencoderKL`` state dict -> ``first_stage_model.*`` keys.

    The mid attention's linear q/k/v/out weights become 1x1 convolutions (C, C, 1, 1) as in the
    original checkpoints.
    """
    n_up = 1 + max(int(m[1]) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out = {}
    for key, value in state.items():
        side, _, rest = key.partition(".")
        if side in ("quant_conv", "post_quant_conv"):
            out[prefix + key] = value
            continue
        if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", rest):
            kind, i, j, module, leaf = m[1], int(m[2]), int(m[3]), m[4], m[5]
            level = i if kind == "down" else n_up - 1 - i
            module = "nin_shortcut" if module == "conv_shortcut" else module
            new = f"{kind}.{level}.block.{j}.{module}.{leaf}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", rest):
            new = f"down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", rest):
            new = f"up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
            new = f"mid.block_{int(m[1]) + 1}.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
            new = f"mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
            if m[1] != "group_norm" and m[2] == "weight":
                value = value[:, :, None, None]
        elif rest.startswith(("conv_in.", "conv_out.")):
            new = rest
        elif rest.startswith("conv_norm_out."):
            new = "norm_out." + rest.split(".", 1)[1]
        else:
            raise KeyError(f"diffusers VAE key {key} has no LDM counterpart in this helper")
        out[f"{prefix}{side}.{new}"] = value
    return out


def clip_to_ldm_text(state: Mapping, prefix: str = TEXT_PREFIX) -> dict:
    """transformers ``CLIPTextModel`` state dict -> ``cond_stage_model.transformer.text_model.*``.

    Accepts both the transformers >= 5 layout of a bare ``CLIPTextModel`` (``embeddings.*``)
    and the older one with the ``text_model.`` level, which the original checkpoints have.
    """
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items()}


CONTROLNET_PREFIX = "control_model."


def diffusers_to_ldm_controlnet(state: Mapping, config: Mapping, prefix: str = CONTROLNET_PREFIX) -> dict:
    """diffusers ``ControlNetModel`` state dict -> the original ControlNet layout (``cldm.py``):
    the encoder as the UNet's ``input_blocks`` / ``middle_block``, ``zero_convs.{i}.0``,
    ``middle_block_out.0`` and ``input_hint_block.{2k}`` (convolutions between SiLUs)."""
    n_hint_blocks = 1 + max((int(m[1]) for k in state
                             if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))),
                            default=-1)
    encoder, out = {}, {}
    for key, value in state.items():
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key):
            out[f"{prefix}zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_mid_block\.(\w+)", key):
            out[f"{prefix}middle_block_out.0.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(\w+)", key):
            out[f"{prefix}input_hint_block.0.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key):
            out[f"{prefix}input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(\w+)", key):
            out[f"{prefix}input_hint_block.{2 * (n_hint_blocks + 1)}.{m[1]}"] = value
        else:
            encoder[key] = value
    cfg = {"layers_per_block": config["layers_per_block"], "up_block_types": []}
    out.update(diffusers_to_ldm_unet(encoder, cfg, prefix=prefix))
    return out
