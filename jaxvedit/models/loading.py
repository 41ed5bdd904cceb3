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
import warnings
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import read_config
from jaxvedit.models.unet import UNet2DConditionModel, UNetConfig
from jaxvedit.models.vae import AutoencoderKL, VAEConfig
from jaxvedit.models.weights import load_torch_state_dict, read_weights_folder

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def cache_root() -> Path:
    """Where jaxvedit caches what it computes or assembles: ``$JAXVEDIT_CACHE``, else
    ``$XDG_CACHE_HOME/jaxvedit``, else ``~/.cache/jaxvedit``."""
    root = os.environ.get("JAXVEDIT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "jaxvedit"


def resolve_source(source: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Classify ``source``: ``("folder", path)``, ``("single_file", path)``.

    A repo id is downloaded (or read from the hub cache) and returned as a folder.
    """
    from jaxvedit.world.models import expand_model_alias

    path = Path(expand_model_alias(str(source))).expanduser()
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


def _load_component(cls, cfg_cls, source, subfolder, config, comps, *, what, dtype,
                    param_dtype, attention_implementation):
    if comps is None:
        kind, path = resolve_source(source, (subfolder,))
        if kind == "single_file":
            comps = _single_file_components(path, **{f"{subfolder}_config": config})
    if comps is not None:
        cfg_raw, state = comps[subfolder]["config"], comps[subfolder]["state_dict"]
    else:
        folder = component_folder(path, subfolder)
        cfg_raw = config or read_config(folder)
        state = read_weights_folder(folder, "diffusion_pytorch_model")
    renames = _legacy_vae_renames(state) if cls is AutoencoderKL else None
    return _build_and_load(cls, cfg_cls.from_dict(cfg_raw), state, what=what, dtype=dtype,
                           param_dtype=param_dtype, attention_implementation=attention_implementation,
                           renames=renames)


def load_unet(source, *, subfolder: str = "unet", config: dict | None = None,
              dtype=jnp.float32, param_dtype=jnp.float32,
              attention_implementation: str | None = None) -> UNet2DConditionModel:
    """Load a :class:`UNet2DConditionModel` from a folder, single file or repo id.

    ``config`` replaces the component's config (for a single file: the config inferred from
    the tensor shapes, which takes heads and norm groups from SD1.5).
    """
    return _load_component(UNet2DConditionModel, UNetConfig, source, subfolder, config, None,
                           what="UNet", dtype=dtype, param_dtype=param_dtype,
                           attention_implementation=attention_implementation)


def load_vae(source, *, subfolder: str = "vae", config: dict | None = None,
             dtype=jnp.float32, param_dtype=jnp.float32,
             attention_implementation: str | None = None) -> AutoencoderKL:
    """Load an :class:`AutoencoderKL` from a folder, single file or repo id."""
    return _load_component(AutoencoderKL, VAEConfig, source, subfolder, config, None,
                           what="VAE", dtype=dtype, param_dtype=param_dtype,
                           attention_implementation=attention_implementation)


def load_text_encoder(source, *, subfolder: str = "text_encoder", config: dict | None = None,
                      dtype=jnp.float32):
    """Load the CLIP text encoder (transformers layout) from a folder, single file or repo id."""
    from jaxvedit.models.clip import CLIPTextModel, load_clip_config

    kind, path = resolve_source(source, (subfolder,))
    if kind == "folder":
        folder = component_folder(path, subfolder)
        if config is None:
            return CLIPTextModel.from_pretrained(folder, dtype=dtype)
        state = read_weights_folder(folder, "model")
    else:
        comps = _single_file_components(path, text_encoder_config=config)
        return _text_encoder_from_components(comps, path, dtype)
    cfg = load_clip_config(config, "text")
    model = nnx.eval_shape(lambda: CLIPTextModel(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    model.load_state_dict(state, what=f"text encoder from {path}")
    return model


COMPONENTS = ("unet", "vae", "text_encoder")


def load_components(source, components=COMPONENTS, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    attention_implementation: str | None = None, unet_config: dict | None = None,
                    vae_config: dict | None = None) -> dict:
    """Load several components at once (a single file is read and converted only once).

    Returns ``{"unet": ..., "vae": ..., "text_encoder": ...}`` for the names asked for. Unknown
    tensors in a single file (neither a component's nor a known leftover such as EMA weights)
    are reported with a warning naming them.
    """
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {COMPONENTS}")
    kind, path = resolve_source(source, tuple(components))
    comps = None
    if kind == "single_file":
        comps = _single_file_components(path, unet_config=unet_config, vae_config=vae_config)
        if comps.get("unknown"):
            warnings.warn(f"{path}: {len(comps['unknown'])} tensor(s) belong to no SD1.x component "
                          f"and were not loaded: {comps['unknown'][:8]}", stacklevel=2)
    out = {}
    kw = dict(dtype=dtype, param_dtype=param_dtype, attention_implementation=attention_implementation)
    for name in components:
        if name == "unet":
            out[name] = _load_component(UNet2DConditionModel, UNetConfig, path, "unet", unet_config,
                                        comps, what="UNet", **kw)
        elif name == "vae":
            out[name] = _load_component(AutoencoderKL, VAEConfig, path, "vae", vae_config, comps,
                                        what="VAE", **kw)
        elif comps is None:
            out[name] = load_text_encoder(path, dtype=dtype)
        else:
            out[name] = _text_encoder_from_components(comps, path, dtype)
    return out


def _text_encoder_from_components(comps, path, dtype):
    from jaxvedit.models.clip import CLIPTextModel, load_clip_config

    if "text_encoder" not in comps:
        raise FileNotFoundError(f"single-file checkpoint {path} has no text encoder "
                                "(cond_stage_model.transformer.*)")
    cfg = load_clip_config(comps["text_encoder"]["config"], "text")
    model = nnx.eval_shape(lambda: CLIPTextModel(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    model.load_state_dict(comps["text_encoder"]["state_dict"], what=f"text encoder from {path}")
    return model


def _single_file_components(path: Path, **configs) -> dict:
    from jaxvedit.models.single_file import load_single_file_components

    return load_single_file_components(path, **configs)
