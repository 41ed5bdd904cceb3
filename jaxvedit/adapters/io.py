"""Adapter files: our own small format, and LoRA export/import in the diffusers/peft layout.

Own format (:func:`save_adapter` / :func:`load_adapter`): a folder with
``adapter_model.safetensors`` (only the adapter tensors, flax layout, float32 unless the
adapter holds another dtype) and ``adapter_config.json``
(``{"format": "jaxvedit-adapter", "version": 1, "kind": "lora" | "prompt_tokens" | "dape",
"config": {...}, "tensors": {name: shape}}``). Tensor names: ``{module path}.lora_A`` /
``.lora_B`` for LoRA, ``shared`` / ``proj_kernel`` / ``proj_bias`` for prompt tokens,
``norm.{norm path}.scale|bias|alpha0`` and ``adapter.{block path}.{...}`` for DAPE.

diffusers/peft layout (:func:`export_lora_diffusers`): ``pytorch_lora_weights.safetensors`` with
``unet.{module path}.lora_A.weight`` (r, in) and ``unet.{module path}.lora_B.weight`` (out, r),
and the peft ``LoraConfig`` (``r``, ``lora_alpha``, ``target_modules``) in the safetensors
metadata under ``lora_adapter_metadata`` with the ``unet.`` prefix, which is how diffusers
(>= 0.35) itself saves and reads the LoRA scale. ``fold_alpha=True`` instead multiplies
``lora_B`` by ``alpha/r`` and declares ``lora_alpha = r`` (scale 1), which also loads correctly in
tools that ignore the metadata. The timestep gate has no diffusers equivalent: a PyTorch user
sets the LoRA scale per step (``cross_attention_kwargs={"scale": ...}``) if they want it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters.dape import DAPE, DAPEConfig, dape_state, dape_variables
from jaxvedit.adapters.lora import LoRA, LoRAConfig, lora_state, resolve_targets
from jaxvedit.adapters.prompt_tokens import PromptTokenConfig, PromptTokens

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
FORMAT = "jaxvedit-adapter"


class AdapterLoadError(ValueError):
    """An adapter file does not fit the model: names the offending tensors."""


def _kind(adapter) -> str:
    if isinstance(adapter, LoRA):
        return "lora"
    if isinstance(adapter, PromptTokens):
        return "prompt_tokens"
    if isinstance(adapter, DAPE):
        return "dape"
    raise TypeError(f"not an adapter: {type(adapter).__name__} (expected LoRA, PromptTokens or DAPE)")


def adapter_tensors(adapter) -> dict[str, np.ndarray]:
    """The adapter's tensors by file name (flax layout)."""
    if _kind(adapter) == "lora":
        items = lora_state(adapter)
    elif _kind(adapter) == "dape":
        items = dape_state(adapter)
    else:
        items = {"shared": adapter.shared.value, "proj_kernel": adapter.proj_kernel.value,
                 "proj_bias": adapter.proj_bias.value}
    return {k: np.asarray(v) for k, v in items.items()}


def _assign(adapter, name: str, value) -> None:
    if _kind(adapter) == "lora":
        path, leaf = name.rsplit(".", 1)
        var = getattr(adapter.layer(path), leaf)
    elif _kind(adapter) == "dape":
        var = dape_variables(adapter)[name]
    else:
        var = getattr(adapter, name)
    var.value = jnp.asarray(value, dtype=var.value.dtype)


def save_adapter(path: str | os.PathLike, adapter, *, extra: dict | None = None) -> Path:
    """Write ``adapter`` (a :class:`LoRA`, :class:`PromptTokens` or :class:`DAPE`) to ``path``."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in adapter_tensors(adapter).items()}
    save_file(tensors, str(folder / WEIGHTS_NAME))
    meta = {"format": FORMAT, "version": 1, "kind": _kind(adapter),
            "config": adapter.config.to_dict(),
            "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    if extra:
        meta["extra"] = extra
    with open(folder / CONFIG_NAME, "w") as f:
        json.dump(meta, f, indent=2)
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict:
    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no adapter config {cfg_file} (expected {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} in {folder})")
    with open(cfg_file) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} is not a jaxvedit adapter config (format={meta.get('format')!r})")
    return meta


def load_adapter(path: str | os.PathLike, unet: nnx.Module | None = None, *, into=None):
    """Read an adapter folder written by :func:`save_adapter`.

    Returns a new :class:`LoRA` or :class:`DAPE` (``unet`` required: the adapter is rebuilt for
    it from the saved config, then every tensor is checked against it) or :class:`PromptTokens`;
    or fills the
    existing adapter ``into``. A tensor missing, unexpected or of another shape (a file made for
    another model) raises :class:`AdapterLoadError` naming it.
    """
    from jaxvedit.models.weights import read_safetensors

    folder = Path(path)
    meta = read_adapter_config(folder)
    kind = meta["kind"]
    if into is not None:
        adapter = into
        if _kind(adapter) != kind:
            raise AdapterLoadError(f"{folder} holds a {kind} adapter, not a {_kind(adapter)}")
    elif kind == "lora":
        if unet is None:
            raise ValueError("loading a LoRA needs the UNet it adapts (load_adapter(path, unet))")
        cfg = LoRAConfig.from_dict(meta["config"])
        try:
            adapter = LoRA(unet, cfg)
        except KeyError as err:
            raise AdapterLoadError(f"cannot load LoRA {folder}: {err.args[0]}") from err
    elif kind == "prompt_tokens":
        adapter = PromptTokens(PromptTokenConfig.from_dict(meta["config"]))
    elif kind == "dape":
        if unet is None:
            raise ValueError("loading a DAPE adapter needs the UNet it adapts (load_adapter(path, unet))")
        try:
            adapter = DAPE(unet, DAPEConfig.from_dict(meta["config"]))
        except KeyError as err:
            raise AdapterLoadError(f"cannot load DAPE adapter {folder}: {err.args[0]}") from err
    else:
        raise AdapterLoadError(f"unknown adapter kind {kind!r} in {folder / CONFIG_NAME}")
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    _check_and_assign(adapter, tensors, f"{kind} adapter {folder}")
    return adapter


def _check_and_assign(adapter, tensors: dict[str, np.ndarray], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in adapter_tensors(adapter).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [f"{k}: file has {tuple(tensors[k].shape)}, model expects {expected[k]}"
                 for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    problems = []
    if misshapen:
        problems.append(f"{len(misshapen)} tensor(s) of the wrong shape (made for another model?): "
                        + "; ".join(misshapen[:8]))
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:8])}")
    if problems:
        raise AdapterLoadError(f"cannot load {what}: " + " | ".join(problems))
    for k, v in tensors.items():
        _assign(adapter, k, v)


# ----------------------------------------------------------------------------------------------
# diffusers / peft layout


def lora_to_diffusers_state_dict(lora: LoRA, *, fold_alpha: bool = False,
                                 prefix: str = "unet") -> tuple[dict[str, np.ndarray], dict]:
    """``(state_dict, peft LoraConfig kwargs)`` in the diffusers/peft layout (torch layout)."""
    cfg = lora.config
    scale = cfg.scale if fold_alpha else 1.0
    sd = {}
    for layer in lora.layers:
        a = np.asarray(layer.lora_A.value, np.float32).T  # (r, in)
        b = np.asarray(layer.lora_B.value, np.float32).T * scale  # (out, r)
        sd[f"{prefix}.{layer.path}.lora_A.weight"] = np.ascontiguousarray(a)
        sd[f"{prefix}.{layer.path}.lora_B.weight"] = np.ascontiguousarray(b.astype(np.float32))
    peft_kwargs = {"r": cfg.rank, "lora_alpha": float(cfg.rank if fold_alpha else cfg.alpha),
                   "target_modules": list(lora.paths)}
    return sd, peft_kwargs


def export_lora_diffusers(lora: LoRA, path: str | os.PathLike, *, fold_alpha: bool = False,
                          weight_name: str = DIFFUSERS_WEIGHTS_NAME) -> Path:
    """Write the LoRA so that ``pipe.load_lora_weights(folder)`` (diffusers) loads it.

    ``path``: a folder (the file is ``weight_name`` in it) or a ``.safetensors`` file path.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / weight_name
    file.parent.mkdir(parents=True, exist_ok=True)
    sd, peft_kwargs = lora_to_diffusers_state_dict(lora, fold_alpha=fold_alpha)
    packed = {f"unet.{k}": v for k, v in peft_kwargs.items()}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}
    save_file(sd, str(file), metadata=metadata)
    return file


def import_lora_diffusers(path: str | os.PathLike, unet: nnx.Module, *,
                          weight_name: str = DIFFUSERS_WEIGHTS_NAME, tau: float | None = None,
                          num_train_timesteps: int = 1000) -> LoRA:
    """Read a diffusers/peft-layout UNet LoRA (``unet.{path}.lora_A.weight`` keys, alpha from the
    ``lora_adapter_metadata`` or per-module ``.alpha`` entries, else alpha = rank) into a LoRA."""
    from safetensors import safe_open

    from jaxvedit.models.weights import read_safetensors

    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / weight_name
    if not file.is_file():
        raise FileNotFoundError(f"LoRA file not found: {file}")
    sd = read_safetensors(file)
    with safe_open(str(file), framework="numpy") as f:
        raw_meta = (f.metadata() or {}).get("lora_adapter_metadata")
    meta = json.loads(raw_meta) if raw_meta else {}
    prefix = "unet."
    sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    alphas = {k[: -len(".alpha")]: float(np.asarray(v)) for k, v in sd.items() if k.endswith(".alpha")}
    a_keys = sorted(k for k in sd if k.endswith(".lora_A.weight"))
    if not a_keys:
        raise AdapterLoadError(f"{file} holds no UNet LoRA tensors (*.lora_A.weight)")
    paths = [k[: -len(".lora_A.weight")] for k in a_keys]
    ranks = {int(sd[k].shape[0]) for k in a_keys}
    if len(ranks) != 1:
        raise AdapterLoadError(f"{file}: mixed LoRA ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    alpha_set = {alphas[p] for p in paths if p in alphas}
    if len(alpha_set) > 1:
        raise AdapterLoadError(f"{file}: per-module alphas {sorted(alpha_set)} are not supported")
    alpha = (alpha_set.pop() if alpha_set else float(meta.get("unet.lora_alpha", rank)))
    try:
        resolve_targets(unet, paths)
    except KeyError as err:
        raise AdapterLoadError(f"cannot load LoRA {file}: {err.args[0]}") from err
    lora = LoRA(unet, LoRAConfig(rank=rank, alpha=alpha, targets=tuple(paths), tau=tau,
                                 num_train_timesteps=num_train_timesteps))
    tensors = {}
    for p in paths:
        tensors[f"{p}.lora_A"] = np.asarray(sd[f"{p}.lora_A.weight"]).T
        b_key = f"{p}.lora_B.weight"
        if b_key not in sd:
            raise AdapterLoadError(f"{file}: {b_key} is missing")
        tensors[f"{p}.lora_B"] = np.asarray(sd[b_key]).T
    _check_and_assign(lora, tensors, f"diffusers LoRA {file}")
    return lora
