"""Load SD1.x components from the formats users have, without torch.

``source`` may be
1. a diffusers model folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` subfolders,
   each with ``config.json`` and ``*.safetensors`` or a sharded ``*.safetensors.index.json``),
   or a single component folder (``config.json`` + weights directly inside);
2. a single-file SD1.x checkpoint (``.safetensors`` in the original LDM key layout);
3. a Hugging Face repo id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``), resolved
   through the hub cache (downloaded when online, read from the cache when not).

Models are built abstractly (``nnx.eval_shape``: no random initialisation of hundreds of
millions of weights) and then filled from the file; every expected weight must be found and
every weight in the file used, or :class:`~jaxvedit.models.weights.WeightLoadError` names it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import read_config
from jaxvedit.models.unet import UNet2DConditionModel, UNetConfig
from jaxvedit.models.vae import AutoencoderKL, VAEConfig
from jaxvedit.models.weights import load_torch_state_dict, read_weights_folder

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def resolve_source(source: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Classify ``source``: ``("folder", path)``, ``("single_file", path)``.

    A repo id is downloaded (or read from the hub cache) and returned as a folder.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        return "single_file", path
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or path.suffix in _SINGLE_FILE_SUFFIXES
    if looks_local or not _REPO_ID.match(text):
        raise FileNotFoundError(f"model path not found: {path} (no such folder or file)")
    return "folder", _download_repo(text, subfolders)


def _download_repo(repo_id: str, subfolders: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json"]
    for sub in subfolders or ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        patterns += [f"{sub}/*.json", f"{sub}/*.safetensors", f"{sub}/*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(
            f"no local folder or file named {repo_id!r}, and it could not be resolved as a Hugging "
            f"Face repo id (not in the local hub cache and the "
            f"hub is unreachable or refused: {type(err).__name__}: {err}). Pass a local diffusers "
            "folder or a single-file checkpoint instead.") from err


def component_folder(root: Path, subfolder: str | None) -> Path:
    """The folder holding one component's ``config.json``; clear error when absent."""
    if subfolder and (root / subfolder).is_dir():
        folder = root / subfolder
    elif (root / "config.json").is_file() and subfolder is None:
        folder = root
    elif subfolder and (root / "config.json").is_file() and not any(
            (root / s).is_dir() for s in ("unet", "vae", "text_encoder")):
        folder = root  # a bare component folder passed directly
    else:
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"model folder {root} has no {subfolder}/ component (subfolders present: "
            f"{present or 'none'})")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"component folder {folder} has no config.json")
    return folder


def _build_and_load(cls, cfg, state_dict, *, what: str, dtype, param_dtype,
                    attention_implementation, ignore=(), renames=None):
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                                       attention_implementation=attention_implementation))
    load_torch_state_dict(model, state_dict, ignore=ignore, renames=renames, what=what)
    return model


# legacy diffusers VAE attention names (before diffusers 0.14) -> current ones
def _legacy_vae_renames(keys) -> dict[str, str]:
    table = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    renames = {}
    for k in keys:
        m = re.match(r"^(.*mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$", k)
        if m:
            renames[k] = f"{m.group(1)}.{table[m.group(2)]}.{m.group(3)}"
    return renames


def load_unet(source, *, subfolder: str = "unet", config: dict | None = None,
              dtype=jnp.float32, param_dtype=jnp.float32,
              attention_implementation: str | None = None) -> UNet2DConditionModel:
    """Load a :class:`UNet2DConditionModel` from a folder, single file or repo id.

    ``config`` overrides the config (needed for a single file whose shapes are not SD1.5's
    when the inferred config is not what you want).
    """
    kind, path = resolve_source(source, (subfolder,))
    if kind == "single_file":
        comps = _single_file_components(path, unet_config=config)
        cfg_raw, state = comps["unet"]["config"], comps["unet"]["state_dict"]
    else:
        folder = component_folder(path, subfolder)
        cfg_raw = config or read_config(folder)
        state = read_weights_folder(folder, "diffusion_pytorch_model")
    cfg = UNetConfig.from_dict(cfg_raw)
    return _build_and_load(UNet2DConditionModel, cfg, state, what="UNet", dtype=dtype,
                           param_dtype=param_dtype, attention_implementation=attention_implementation)


def load_vae(source, *, subfolder: str = "vae", config: dict | None = None,
             dtype=jnp.float32, param_dtype=jnp.float32,
             attention_implementation: str | None = None) -> AutoencoderKL:
    """Load an :class:`AutoencoderKL` from a folder, single file or repo id."""
    kind, path = resolve_source(source, (subfolder,))
    if kind == "single_file":
        comps = _single_file_components(path, vae_config=config)
        cfg_raw, state = comps["vae"]["config"], comps["vae"]["state_dict"]
    else:
        folder = component_folder(path, subfolder)
        cfg_raw = config or read_config(folder)
        state = read_weights_folder(folder, "diffusion_pytorch_model")
    cfg = VAEConfig.from_dict(cfg_raw)
    return _build_and_load(AutoencoderKL, cfg, state, what="VAE", dtype=dtype,
                           param_dtype=param_dtype, attention_implementation=attention_implementation,
                           renames=_legacy_vae_renames(state))


def _single_file_components(path: Path, *, unet_config=None, vae_config=None) -> dict:
    from jaxvedit.models.single_file import load_single_file_components

    return load_single_file_components(path, unet_config=unet_config, vae_config=vae_config)
