"""Loading and saving ControlNets: diffusers folders, single files (LDM ``control_model.*``
layout), Hugging Face repo ids; written back as diffusers folders (``save_controlnet``).

``load_controlnet(source)``:

1. a diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or a
   folder holding one in ``controlnet/`` (a pipeline folder, a ``train_controlnet.py`` output);
2. a single ``.safetensors`` file in the original ControlNet layout (``cldm.py``): keys under
   ``control_model.`` (a full ControlNet v1.0 checkpoint, whose UNet/VAE/text encoder keys are
   skipped and reported) or bare (``time_embed.0.weight``, ... as the v1.1 releases);
3. a repo id (``lllyasviel/sd-controlnet-depth``), through the hub cache.

LDM -> diffusers layout (as diffusers 0.42's ``single_file_utils.convert_controlnet_checkpoint``):
the encoder keys (``time_embed``, ``input_blocks``, ``middle_block``) follow the UNet rules of
:mod:`jaxvedit.models.single_file`; ``zero_convs.{i}.0`` -> ``controlnet_down_blocks.{i}``,
``middle_block_out.0`` -> ``controlnet_mid_block``, ``input_hint_block.{0, 2, ..., 2k}`` ->
``controlnet_cond_embedding.conv_in``, ``.blocks.{0..k-2}``, ``.conv_out`` (the odd indices are
SiLUs). The config is inferred from the tensor shapes (heads and norm groups from SD1.5), or given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.models.config import read_config
from jaxvedit.models.controlnet import ControlNetConfig, ControlNetModel
from jaxvedit.models.single_file_config import infer_down_path
from jaxvedit.models.single_file import (SD15_UNET_CONFIG, _count_indices, _convert, _need,
                                         _wb, ldm_unet_key_map, read_single_file)
from jaxvedit.models.weights import (WeightLoadError, load_torch_state_dict,
                                     module_to_torch_state_dict, read_weights_folder)

CONTROLNET_PREFIX = "control_model."
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_ENCODER_KEYS = ("time_embedding.", "conv_in.", "down_blocks.", "mid_block.")


# ----------------------------------------------------------------------------------------------
# LDM layout


def _unet_view(config: ControlNetConfig) -> dict:
    """A UNet config with the ControlNet's encoder, for the shared LDM key rules."""
    up = ["UpBlock2D" if t == "DownBlock2D" else "CrossAttnUpBlock2D"
          for t in reversed(config.down_block_types)]
    return {"block_out_channels": list(config.block_out_channels),
            "down_block_types": list(config.down_block_types), "up_block_types": up,
            "layers_per_block": config.layers_per_block, "in_channels": config.in_channels,
            "transformer_layers_per_block": config.transformer_layers_per_block,
            "use_linear_projection": config.use_linear_projection}


def ldm_controlnet_key_map(config: ControlNetConfig | Mapping) -> list[tuple[str, str, str]]:
    """``[(diffusers_key, ldm_key_without_prefix, transform), ...]``: every key of
    ``ControlNetModel(config)`` and the original-layout key it comes from."""
    cfg = config if isinstance(config, ControlNetConfig) else ControlNetConfig.from_dict(dict(config))
    pairs = [p for p in ldm_unet_key_map(_unet_view(cfg)) if p[0].startswith(_ENCODER_KEYS)]
    n = len(cfg.block_out_channels)
    n_res = 1 + n * cfg.layers_per_block + (n - 1)
    for i in range(n_res):
        _wb(pairs, f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0")
    _wb(pairs, "controlnet_mid_block", "middle_block_out.0")
    k = len(cfg.conditioning_embedding_out_channels)
    _wb(pairs, "controlnet_cond_embedding.conv_in", "input_hint_block.0")
    for j in range(2 * (k - 1)):
        _wb(pairs, f"controlnet_cond_embedding.blocks.{j}", f"input_hint_block.{2 * (j + 1)}")
    _wb(pairs, "controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * (2 * (k - 1) + 1)}")
    return pairs


def _controlnet_tensors(state: Mapping[str, np.ndarray]) -> tuple[str, dict, list[str]]:
    """``(prefix, tensors without it, skipped keys)`` of a single file's ControlNet."""
    if any(k.startswith(CONTROLNET_PREFIX) for k in state):
        inner = {k[len(CONTROLNET_PREFIX):]: v for k, v in state.items()
                 if k.startswith(CONTROLNET_PREFIX)}
        return CONTROLNET_PREFIX, inner, sorted(k for k in state if not k.startswith(CONTROLNET_PREFIX))
    if "time_embed.0.weight" in state and any(k.startswith("input_hint_block.") for k in state):
        return "", dict(state), []
    if "time_embedding.linear_1.weight" in state:
        raise WeightLoadError("the file holds a ControlNet in the diffusers layout: load the folder "
                              "with its config.json instead (or save it with a config.json beside it)")
    raise WeightLoadError(f"no ControlNet tensors ({CONTROLNET_PREFIX}* or input_hint_block.*) in "
                          "the checkpoint")


def infer_controlnet_config(state: Mapping[str, np.ndarray], override: Mapping | None = None) -> dict:
    """A diffusers ControlNet config from the LDM tensors' shapes (``override`` wins).

    Heads, norm groups/eps come from SD1.5 (they are not in the shapes)."""
    _, cn, _ = _controlnet_tensors(state)
    w = "ControlNet"
    n_blocks, layers, channels, types, depth = infer_down_path(cn, w)
    if "middle_block.1.proj_in.weight" in cn:
        depth.append(_count_indices(cn, "middle_block.1.transformer_blocks."))
    hint = sorted(int(m.group(1)) for k in cn
                  if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    if len(hint) < 2 or len(hint) % 2:
        raise WeightLoadError(f"cannot infer the ControlNet config: input_hint_block convolutions "
                              f"{hint} are not conv_in, pairs of blocks and conv_out")
    blocks = hint[1:-1]
    emb = [int(cn[f"input_hint_block.{hint[0]}.weight"].shape[0])]
    emb += [int(cn[f"input_hint_block.{blocks[j]}.weight"].shape[0]) for j in range(1, len(blocks), 2)]
    inferred = {
        "in_channels": int(_need(cn, "input_blocks.0.0.weight", w).shape[1]),
        "conditioning_channels": int(cn[f"input_hint_block.{hint[0]}.weight"].shape[1]),
        "block_out_channels": channels, "down_block_types": types, "layers_per_block": layers,
        "conditioning_embedding_out_channels": emb,
    }
    for key in ("attention_head_dim", "norm_num_groups", "norm_eps", "flip_sin_to_cos",
                "freq_shift", "downsample_padding"):
        inferred[key] = SD15_UNET_CONFIG.get(key, getattr(ControlNetConfig, key))
    attn_k = sorted(k for k in cn if k.endswith(".attn2.to_k.weight"))
    inferred["cross_attention_dim"] = (int(cn[attn_k[0]].shape[1]) if attn_k
                                       else SD15_UNET_CONFIG["cross_attention_dim"])
    proj_in = sorted(k for k in cn if k.endswith(".proj_in.weight"))
    if proj_in and cn[proj_in[0]].ndim == 2:
        inferred["use_linear_projection"] = True
    if depth and set(depth) != {1}:
        if len(set(depth)) != 1:
            raise WeightLoadError(f"cannot infer the ControlNet config: transformer depths {depth} "
                                  "differ between blocks; pass a config")
        inferred["transformer_layers_per_block"] = depth[0]
    config = {"_class_name": "ControlNetModel", **inferred}
    config.update(dict(override or {}))
    return config


def convert_ldm_controlnet(state: Mapping[str, np.ndarray], config: Mapping | None = None
                           ) -> tuple[dict, dict, list[str]]:
    """Original-layout ControlNet tensors -> ``(config, diffusers state dict, skipped keys)``.

    Every key the config expects must be in the file and every ControlNet key used, else
    :class:`WeightLoadError` names them. ``skipped``: keys of other components of a full
    checkpoint (``model.diffusion_model.*``, ...)."""
    prefix, cn, skipped = _controlnet_tensors(state)
    cfg = dict(config) if config is not None else infer_controlnet_config(state)
    sd = _convert(cn, ldm_controlnet_key_map(ControlNetConfig.from_dict(cfg)), prefix, "ControlNet")
    return cfg, sd, skipped


# ----------------------------------------------------------------------------------------------
# loading


def _build(cfg_raw: dict, state: Mapping, *, what: str, dtype, param_dtype,
           attention_implementation) -> ControlNetModel:
    cfg = ControlNetConfig.from_dict(cfg_raw)
    model = nnx.eval_shape(lambda: ControlNetModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                   attention_implementation=attention_implementation))
    load_torch_state_dict(model, state, what=what)
    return model


def controlnet_folder(path: Path) -> Path:
    """The folder holding the ControlNet's ``config.json`` (``path`` or ``path/controlnet``)."""
    for folder in (path, path / "controlnet"):
        cfg = folder / "config.json"
        if cfg.is_file():
            name = read_config(cfg).get("_class_name", "ControlNetModel")
            if name != "ControlNetModel":
                raise ValueError(f"{cfg} describes a {name}, not a ControlNetModel")
            return folder
    raise FileNotFoundError(f"no ControlNet in {path}: expected config.json (a ControlNetModel) "
                            "there or in controlnet/")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["config.json", WEIGHTS_NAME, "controlnet/config.json", f"controlnet/{WEIGHTS_NAME}"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, ...
        raise FileNotFoundError(
            f"no local folder or file named {repo_id!r}, and it could not be resolved as a Hugging "
            f"Face repo id (not in the hub cache, or the hub refused: {type(err).__name__}: {err})"
        ) from err


def load_controlnet(source: str | os.PathLike, *, config: Mapping | None = None,
                    dtype=jnp.float32, param_dtype=jnp.float32,
                    attention_implementation: str | None = None) -> ControlNetModel:
    """A :class:`ControlNetModel` from a diffusers folder, a single file or a repo id.

    ``config`` replaces the folder's config / the config inferred from a single file."""
    path = Path(source).expanduser()
    kw = dict(dtype=dtype, param_dtype=param_dtype, attention_implementation=attention_implementation)
    if path.is_file():
        cfg, sd, skipped = convert_ldm_controlnet(read_single_file(path), config)
        return _build(cfg, sd, what=f"ControlNet from {path}", **kw)
    if not path.is_dir():
        text = str(source)
        if text.startswith((".", "/", "~")) or path.suffix or not _REPO_ID.match(text):
            raise FileNotFoundError(f"ControlNet not found: {path} (no such folder or file)")
        path = _download(text)
    folder = controlnet_folder(path)
    cfg = dict(config) if config is not None else read_config(folder, "ControlNet config")
    state = read_weights_folder(folder, "diffusion_pytorch_model")
    return _build(cfg, state, what=f"ControlNet from {folder}", **kw)


def save_controlnet(controlnet: ControlNetModel, folder: str | os.PathLike) -> Path:
    """Write ``controlnet`` as a diffusers folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``, float32 or the parameters' dtype), loadable by
    :func:`load_controlnet` and by diffusers' ``ControlNetModel.from_pretrained``."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = controlnet.config.to_dict()
    cfg["_diffusers_version"] = "0.42.0"
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: np.ascontiguousarray(v if v.dtype in (np.float32, np.float16) else v.astype(np.float32))
             for k, v in module_to_torch_state_dict(controlnet).items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    return folder
