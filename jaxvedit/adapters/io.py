"""Adapter files: our own small format (LoRA files of other tools: :mod:`jaxvedit.adapters.interop`).

Own format (:func:`save_adapter` / :func:`load_adapter`): a folder with
``adapter_model.safetensors`` (only the adapter tensors, flax layout, float32 unless the
adapter holds another dtype) and ``adapter_config.json``
(``{"format": "jaxvedit-adapter", "version": 2, "kind": "lora" | "prompt_tokens" | "dape",
"config": {...}, "tensors": {name: shape}}``, plus what the adapter was trained with: a LoRA's
resolved ``targets`` and ``gate``; the prompt tokens' ``vision_tower`` (source and fingerprints)
and ``unshared``; see :mod:`jaxvedit.adapters.records`; version 1 files have none of these and
still load). Tensor names: ``{module path}.lora_A`` / ``.lora_B`` for LoRA, ``shared`` /
``proj_kernel`` / ``proj_bias`` for prompt tokens, ``norm.{norm path}.scale|bias|alpha0`` and
``adapter.{block path}.{...}`` for DAPE.

The diffusers/peft and kohya layouts (export and import) live in :mod:`jaxvedit.adapters.interop`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters.dape import DAPE, DAPEConfig, dape_state, dape_variables
from jaxvedit.adapters.errors import AdapterLoadError
from jaxvedit.adapters.lora import LoRA, LoRAConfig, lora_state, resolve_targets
from jaxvedit.adapters.prompt_tokens import PromptTokenConfig, PromptTokens

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "jaxvedit-adapter"




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


RECORD_KEYS = ("vision_tower", "unshared", "base_model")


def save_adapter(path: str | os.PathLike, adapter, *, extra: dict | None = None,
                 record: dict | None = None) -> Path:
    """Write ``adapter`` (a :class:`LoRA`, :class:`PromptTokens` or :class:`DAPE`) to ``path``.

    A LoRA file records its resolved ``targets`` and its ``gate``; ``record`` adds what the
    adapter was trained with: ``vision_tower`` (:func:`jaxvedit.adapters.records.vision_tower_record`),
    ``unshared`` (whether the prompt tokens use the unshared vision tokens), ``base_model``."""
    from safetensors.numpy import save_file

    from jaxvedit.adapters.records import lora_record

    unknown = sorted(set(record or {}) - set(RECORD_KEYS))
    if unknown:
        raise ValueError(f"unknown adapter record key(s) {unknown}; expected {list(RECORD_KEYS)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in adapter_tensors(adapter).items()}
    save_file(tensors, str(folder / WEIGHTS_NAME))
    meta = {"format": FORMAT, "version": 2, "kind": _kind(adapter),
            "config": adapter.config.to_dict(),
            "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    if meta["kind"] == "lora":
        meta.update(lora_record(adapter))
    meta.update(record or {})
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
# LoRA files of other tools (diffusers / peft, kohya): jaxvedit.adapters.interop

from jaxvedit.adapters.interop import (  # noqa: E402  (re-exported: their old home)
    DIFFUSERS_WEIGHTS_NAME,
    export_lora_diffusers,
    import_lora_diffusers,
    lora_to_diffusers_state_dict,
)
