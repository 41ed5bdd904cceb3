"""LoRA files of other tools, in and out: the diffusers/peft layouts and the kohya/A1111 layout.

Import (:func:`import_lora`) reads, for the SD1.5 UNet and its CLIP text encoder, every layout
diffusers' ``StableDiffusionLoraLoaderMixin.load_lora_weights`` accepts (diffusers 0.42,
``loaders/lora_pipeline.py``, ``loaders/lora_conversion_utils.py``,
``utils/state_dict_utils.py``):

* **peft** (diffusers >= 0.26, ``save_lora_weights`` of the training scripts):
  ``unet.{path}.lora_A.weight`` (r, in), ``unet.{path}.lora_B.weight`` (out, r), the text encoder
  under ``text_encoder.``; rank and alpha per module from the peft ``LoraConfig`` stored in the
  safetensors metadata (``lora_adapter_metadata``: ``r``, ``lora_alpha``, ``rank_pattern``,
  ``alpha_pattern``, ``use_rslora``), without metadata ``alpha = rank`` per module (scale 1), as
  ``utils/peft_utils.get_peft_kwargs``.
* **old diffusers** (attention processors, diffusers < 0.26): ``unet.{attn}.processor.to_q_lora
  .down.weight`` / ``.up.weight`` (``to_k_lora``, ``to_v_lora``, ``to_out_lora``), the
  ``LoRACompatibleLinear`` form ``unet.{path}.lora.down.weight``, the text encoder's
  ``...self_attn.to_q_lora.down.weight`` and ``...q_proj.lora_linear_layer.down.weight``; keys
  without the ``unet.`` prefix (``unet.save_attn_procs``) are UNet keys.
* **kohya / A1111** (``lora_unet_*``, ``lora_te_*``): ``{name}.lora_down.weight``,
  ``{name}.lora_up.weight`` and ``{name}.alpha``, ``name`` = prefix + module path with ``_`` for
  ``.``; resolved against the model's own module names (as A1111 does), so no guessing at
  underscores. Scale ``alpha / rank`` per module; a module without ``.alpha`` has scale 1
  (kohya's and A1111's definition).

Unsupported content is refused by name, never dropped: LoRA on a module we do not adapt (a 3x3
convolution, ``time_emb_proj``, an embedding, ...), DoRA, LoRA biases, LyCORIS LoHa/LoKr,
SDXL's second text encoder, LDM-named (``input_blocks``) kohya keys, text-encoder parts when no
text encoder is given. Export: :func:`export_lora_diffusers` (peft layout + metadata) and
:func:`export_lora_kohya` (kohya layout, for A1111 / ComfyUI).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters.errors import AdapterLoadError, LoRAFormatError
from jaxvedit.adapters.lora import LoRA, LoRAConfig, lora_linears, module_kinds

DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out",
               "time_embedding.", "add_embedding.")
SUPPORTED = ("attention projections (to_q, to_k, to_v, to_out.0), the transformer blocks' "
             "ff.net.0.proj / ff.net.2, proj_in / proj_out, and the text encoder's q_proj, k_proj, "
             "v_proj, out_proj, fc1, fc2")


def _error(msg: str) -> AdapterLoadError:
    return AdapterLoadError(msg)


@dataclass
class LoRAImport:
    """What :func:`import_lora` read: the UNet LoRA and the text-encoder LoRA (either may be
    None), the file's layout (``"peft"``, ``"diffusers-old"``, ``"kohya"``) and the file."""

    unet: LoRA | None
    text_encoder: LoRA | None
    layout: str
    file: Path
    modules: dict = field(default_factory=dict)  # component -> number of modules


# ----------------------------------------------------------------------------------------------
# reading


def lora_file(path: str | os.PathLike, weight_name: str | None = None) -> Path:
    """The ``.safetensors`` file of ``path`` (a file, or a folder with ``weight_name`` /
    ``pytorch_lora_weights.safetensors`` / a single ``*.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        if weight_name:
            file = p / weight_name
        elif (p / DIFFUSERS_WEIGHTS_NAME).is_file():
            file = p / DIFFUSERS_WEIGHTS_NAME
        else:
            found = sorted(p.glob("*.safetensors"))
            if len(found) != 1:
                raise FileNotFoundError(
                    f"LoRA folder {p}: expected {DIFFUSERS_WEIGHTS_NAME} or one *.safetensors file, "
                    f"found {[f.name for f in found] or 'none'} (pass weight_name=)")
            file = found[0]
    else:
        file = p
    if file.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise LoRAFormatError(f"{file}: pickled LoRA files are refused (they need torch and can run "
                              "code); convert it to .safetensors")
    if not file.is_file():
        raise FileNotFoundError(f"LoRA file not found: {file}")
    return file


def read_lora_file(path: str | os.PathLike, weight_name: str | None = None
                   ) -> tuple[Path, dict[str, np.ndarray], dict]:
    """``(file, tensors, metadata)``: float32 tensors and the safetensors metadata."""
    from safetensors import safe_open

    from jaxvedit.models.weights import read_safetensors

    file = lora_file(path, weight_name)
    tensors = {k: np.asarray(v, np.float32) for k, v in read_safetensors(file).items()}
    with safe_open(str(file), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
    return file, tensors, metadata


def detect_layout(keys) -> str:
    """``"kohya"`` (every key ``lora_unet_*`` / ``lora_te*``, as diffusers' check),
    ``"diffusers-old"`` (attention-processor / ``lora.down`` names) or ``"peft"``."""
    keys = list(keys)
    if keys and all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        odd = [k for k in keys if not k.startswith(("lora_unet_", "lora_te"))][:3]
        raise LoRAFormatError(f"mixed LoRA layouts: kohya keys (lora_unet_*) beside {odd}")
    if any(re.search(r"(_lora\.(down|up)\.|\.lora\.(down|up)\.|lora_linear_layer|\.processor\.)", k)
           for k in keys):
        return "diffusers-old"
    return "peft"


_OLD_UNET = ((".to_q_lora.", ".to_q.lora."), (".to_k_lora.", ".to_k.lora."),
             (".to_v_lora.", ".to_v.lora."), (".to_out_lora.", ".to_out.0.lora."))
_OLD_TE = ((".to_q_lora.", ".q_proj.lora."), (".to_k_lora.", ".k_proj.lora."),
           (".to_v_lora.", ".v_proj.lora."), (".to_out_lora.", ".out_proj.lora."))


def _split_diffusers_key(key: str) -> tuple[str, str, str]:
    """``(component, module path, part)`` of a peft / old-diffusers key; part is ``down``,
    ``up`` or ``alpha``."""
    if key.startswith("unet."):
        component, rest = "unet", key[len("unet."):]
    elif key.startswith("text_encoder."):
        component, rest = "text_encoder", key[len("text_encoder."):]
    elif key.startswith("text_encoder_2."):
        raise LoRAFormatError(f"{key}: LoRA for a second text encoder (an SDXL LoRA?); SD1.5 has one")
    elif key.startswith(_UNET_ROOTS):
        component, rest = "unet", key  # unet.save_attn_procs / unet.save_lora_adapter: no prefix
    elif key.startswith(("text_model.", "encoder.layers.")):
        component, rest = "text_encoder", key
    else:
        raise LoRAFormatError(f"{key}: not a UNet or text-encoder LoRA key (expected the prefix "
                              "unet. or text_encoder., or kohya's lora_unet_ / lora_te_)")
    rest = "." + rest.replace(".processor.", ".")
    for old, new in (_OLD_UNET if component == "unet" else _OLD_TE):
        rest = rest.replace(old, new)
    rest = rest.replace(".lora_linear_layer.", ".lora.")[1:]
    if component == "text_encoder" and not rest.startswith("text_model."):
        rest = "text_model." + rest  # transformers >= 5 flattens CLIPTextModel
    for suffix, part in ((".lora_A.weight", "down"), (".lora_B.weight", "up"),
                         (".lora.down.weight", "down"), (".lora.up.weight", "up"),
                         (".alpha", "alpha")):
        if rest.endswith(suffix):
            return component, rest[: -len(suffix)], part
    if "lora_magnitude_vector" in rest:
        raise LoRAFormatError(f"{key}: DoRA (lora_magnitude_vector) is not supported")
    if re.search(r"\.lora_B(\.[^.]+)?\.bias$", rest):
        raise LoRAFormatError(f"{key}: LoRA biases (peft lora_bias=True) are not supported")
    if ".lokr_" in rest or ".hada_" in rest:
        raise LoRAFormatError(f"{key}: LyCORIS LoKr/LoHa tensors are not LoRA; not supported")
    raise LoRAFormatError(f"{key}: not a LoRA tensor this loader understands (expected "
                          "*.lora_A.weight / *.lora_B.weight, *.lora.down/up.weight, "
                          "*_lora.down/up.weight or *.alpha)")


def _split_kohya_key(key: str) -> tuple[str, str, str]:
    """``(component, kohya module name, part)``."""
    name, _, suffix = key.partition(".")
    if name.startswith("lora_te2_"):
        raise LoRAFormatError(f"{key}: LoRA for a second text encoder (an SDXL LoRA?); SD1.5 has one")
    component = "unet" if name.startswith("lora_unet_") else "text_encoder"
    parts = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
    if suffix in parts:
        return component, name, parts[suffix]
    if suffix == "dora_scale":
        raise LoRAFormatError(f"{key}: DoRA (dora_scale) is not supported")
    if suffix.startswith(("hada_", "lokr_")):
        raise LoRAFormatError(f"{key}: LyCORIS LoHa/LoKr tensors are not LoRA; not supported")
    if suffix.startswith("lora_mid"):
        raise LoRAFormatError(f"{key}: LoCon with a CP-decomposed middle factor (lora_mid) is not "
                              "supported")
    raise LoRAFormatError(f"{key}: not a kohya LoRA tensor this loader understands (expected "
                          "lora_down.weight, lora_up.weight, alpha)")


def _kohya_names(model: nnx.Module, prefix: str) -> dict[str, str]:
    """kohya module name -> our module path, over every weight-holding module of ``model``."""
    paths = set(module_kinds(model)) | set(lora_linears(model))
    names = {prefix + p.replace(".", "_"): p for p in paths}
    # the text encoder also without its ``text_model.`` level (transformers >= 5 module names,
    # which diffusers' convert_state_dict_to_kohya then writes)
    names.update({prefix + p[len("text_model."):].replace(".", "_"): p
                  for p in paths if p.startswith("text_model.")})
    return names


def _peft_metadata(metadata: dict, component: str) -> dict | None:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    meta = json.loads(raw)
    pre = f"{component}."
    out = {k[len(pre):]: v for k, v in meta.items() if k.startswith(pre)}
    return out or None


def _peft_pattern(patterns: dict | None, path: str):
    """peft's ``get_pattern_key``: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", path)``."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


# ----------------------------------------------------------------------------------------------
# import


def import_lora(path: str | os.PathLike, unet: nnx.Module | None, text_encoder: nnx.Module | None = None,
                *, weight_name: str | None = None, tau: float | None = None,
                num_train_timesteps: int = 1000) -> LoRAImport:
    """Read a LoRA file of any layout diffusers' SD1.5 ``load_lora_weights`` accepts (peft,
    old diffusers, kohya/A1111) into a :class:`LoRA` for ``unet`` and one for ``text_encoder``.

    Rank and alpha are per module (the file's). ``tau`` is the timestep gate of the UNet LoRA
    (None: ungated; other tools have no gate); the text-encoder LoRA is never gated. Anything
    the file holds that cannot be loaded raises :class:`AdapterLoadError` naming it."""
    file, tensors, metadata = read_lora_file(path, weight_name)
    try:
        layout = detect_layout(tensors)
        entries: dict[tuple[str, str], dict] = collections.defaultdict(dict)
        for key, value in tensors.items():
            if layout == "kohya":
                component, name, part = _split_kohya_key(key)
            else:
                component, name, part = _split_diffusers_key(key)
            entries[(component, name)][part] = value
    except LoRAFormatError as err:
        raise _error(f"cannot load LoRA {file}: {err}") from err
    models = {"unet": unet, "text_encoder": text_encoder}
    by_component: dict[str, dict[str, dict]] = {"unet": {}, "text_encoder": {}}
    for (component, name), parts in entries.items():
        by_component[component][name] = parts
    if not any(by_component.values()):
        raise _error(f"{file} holds no LoRA tensors")
    out = {}
    for component, mods in by_component.items():
        if not mods:
            out[component] = None
            continue
        model = models[component]
        if model is None:
            names = sorted(mods)
            raise _error(
                f"cannot load LoRA {file}: it holds LoRA tensors for the {component.replace('_', ' ')} "
                f"({len(names)} modules, e.g. {names[0]}) and no {component} was given to load them "
                f"into (import_lora(..., {component}=...)); they are never dropped")
        out[component] = _build(file, layout, component, model, mods, metadata,
                                tau if component == "unet" else None, num_train_timesteps)
    return LoRAImport(out["unet"], out["text_encoder"], layout, file,
                      {c: len(m) for c, m in by_component.items() if m})


def _build(file: Path, layout: str, component: str, model: nnx.Module, mods: dict[str, dict],
           metadata: dict, tau, num_train_timesteps) -> LoRA:
    what = "UNet" if component == "unet" else "text encoder"
    available = lora_linears(model)
    kinds = module_kinds(model)
    names = _kohya_names(model, KOHYA_PREFIX[component]) if layout == "kohya" else None
    if layout == "kohya" and component == "text_encoder":
        names.update(_kohya_names(model, "lora_te1_"))
    meta = _peft_metadata(metadata, component) if layout == "peft" else None
    if meta:
        for flag, what_flag in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases")):
            if meta.get(flag):
                raise _error(f"cannot load LoRA {file}: its peft config sets {component}.{flag} "
                             f"({what_flag}), which is not supported")
    layers: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name, parts in sorted(mods.items()):
        if names is not None:
            if name not in names:
                hint = (" (LDM/sgm block names such as input_blocks_* are not supported: kohya's "
                        "SD1.x names follow the diffusers module paths)"
                        if re.search(r"_(input_blocks|middle_block|output_blocks)_", name) else "")
                raise _error(f"cannot load LoRA {file}: {name} names no module of the {what}{hint}")
            path = names[name]
        else:
            path = name
        if path not in available:
            if path in kinds:
                raise _error(f"cannot load LoRA {file}: LoRA on {path} ({kinds[path]}) is not "
                             f"supported; jaxvedit adapts the {SUPPORTED}")
            raise _error(f"cannot load LoRA {file}: no module {path} in the {what}")
        missing = [p for p in ("down", "up") if p not in parts]
        if missing:
            raise _error(f"cannot load LoRA {file}: module {path} has no "
                         f"{' / '.join(missing)} matrix (the file is incomplete)")
        down, up = parts["down"], parts["up"]
        for arr, role in ((down, "down"), (up, "up")):
            if arr.ndim == 4 and arr.shape[2:] != (1, 1):
                raise _error(f"cannot load LoRA {file}: {path} has a {arr.shape[2]}x{arr.shape[3]} "
                             f"convolution LoRA ({role} {arr.shape}); only linear / 1x1 LoRA is "
                             "supported")
            if arr.ndim not in (2, 4):
                raise _error(f"cannot load LoRA {file}: {path} {role} matrix has shape {arr.shape}")
        down = down.reshape(down.shape[:2])
        up = up.reshape(up.shape[:2])
        rank = down.shape[0]
        din, dout = available[path]
        if up.shape[1] != rank or down.shape[1] != din or up.shape[0] != dout:
            raise _error(f"cannot load LoRA {file}: {path}: down {down.shape} / up {up.shape} do not "
                         f"fit the module ({din} -> {dout}) or each other (made for another model?)")
        if "alpha" in parts:
            alpha = float(np.asarray(parts["alpha"]).reshape(()))
        elif meta:
            r_meta = _peft_pattern(meta.get("rank_pattern"), path) or meta.get("r", rank)
            if int(r_meta) != rank:
                raise _error(f"cannot load LoRA {file}: {path} has rank {rank}, its peft config "
                             f"says {r_meta}")
            alpha = _peft_pattern(meta.get("alpha_pattern"), path)
            alpha = float(meta.get("lora_alpha", rank) if alpha is None else alpha)
            if meta.get("use_rslora"):
                alpha = alpha * math.sqrt(rank)  # rsLoRA: scale alpha / sqrt(r)
        else:
            alpha = float(rank)  # no alpha anywhere: scale 1 (diffusers / peft and kohya)
        layers[path] = (down, up, alpha)
    ranks = collections.Counter(int(d.shape[0]) for d, _, _ in layers.values())
    alphas = collections.Counter(a for _, _, a in layers.values())
    rank, alpha = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
    cfg = LoRAConfig(
        rank=rank, alpha=alpha, targets=tuple(layers), tau=tau,
        num_train_timesteps=num_train_timesteps,
        rank_pattern={p: int(d.shape[0]) for p, (d, _, _) in layers.items() if d.shape[0] != rank},
        alpha_pattern={p: a for p, (_, _, a) in layers.items() if a != alpha})
    lora = LoRA(model, cfg, rngs=nnx.Rngs(0))  # values come from the file
    for layer in lora.layers:
        down, up, _ = layers[layer.path]
        layer.lora_A.value = jnp.asarray(down.T, jnp.float32)
        layer.lora_B.value = jnp.asarray(up.T, jnp.float32)
    return lora


def import_lora_diffusers(path: str | os.PathLike, unet: nnx.Module, *,
                          weight_name: str | None = None, tau: float | None = None,
                          num_train_timesteps: int = 1000) -> LoRA:
    """The UNet LoRA of a file in any layout :func:`import_lora` reads (kept for the name's
    sake: it reads kohya files too). A file with text-encoder parts is refused: use
    :func:`import_lora` with ``text_encoder=``."""
    return import_lora(path, unet, None, weight_name=weight_name, tau=tau,
                       num_train_timesteps=num_train_timesteps).unet


# ----------------------------------------------------------------------------------------------
# export


def _torch_layout(layer, model: nnx.Module | None, fold: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(down (r, in), up (out, r))``, or ``(r, in, 1, 1)`` / ``(out, r, 1, 1)`` when the
    adapted module is a 1x1 convolution (peft's and kohya's Conv2d LoRA)."""
    from jaxvedit.adapters.lora import get_submodule

    if model is None and layer.path.endswith(("proj_in", "proj_out")):
        raise ValueError(f"exporting the LoRA of {layer.path} needs the adapted UNet (unet=...): "
                         "it is a 1x1 convolution in SD1.5 (4-D LoRA tensors) or a Linear")
    down = np.asarray(layer.lora_A.value, np.float32).T
    up = np.asarray(layer.lora_B.value, np.float32).T * (layer.scale if fold else 1.0)
    if model is not None and isinstance(get_submodule(model, layer.path), nnx.Conv):
        down, up = down[:, :, None, None], up[:, :, None, None]
    return np.ascontiguousarray(down), np.ascontiguousarray(up.astype(np.float32))


def lora_to_diffusers_state_dict(lora: LoRA, *, fold_alpha: bool = False, prefix: str = "unet",
                                 model: nnx.Module | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(state_dict, peft LoraConfig kwargs)`` in the diffusers/peft layout (torch layout).
    ``model``: the adapted model, to write 1x1-convolution LoRA (``proj_in`` / ``proj_out`` of
    SD1.5) as 4-D tensors; without it every LoRA is written 2-D."""
    sd = {}
    for layer in lora.layers:
        down, up = _torch_layout(layer, model, fold_alpha)
        sd[f"{prefix}.{layer.path}.lora_A.weight"] = down
        sd[f"{prefix}.{layer.path}.lora_B.weight"] = up
    cfg = lora.config
    ranks = {layer.path: layer.rank for layer in lora.layers}
    alphas = {layer.path: float(layer.rank if fold_alpha else layer.alpha) for layer in lora.layers}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    a = float(r if fold_alpha else cfg.alpha)
    if not fold_alpha and a not in alphas.values():
        a = collections.Counter(alphas.values()).most_common(1)[0][0]
    names = {p: _peft_name(p) for p in lora.paths}
    peft_kwargs = {"r": r, "lora_alpha": a, "target_modules": [names[p][1] for p in lora.paths],
                   "rank_pattern": {names[p][0]: v for p, v in ranks.items() if v != r},
                   "alpha_pattern": {names[p][0]: v for p, v in alphas.items() if v != a}}
    return sd, peft_kwargs


def _peft_name(path: str) -> tuple[str, str]:
    r"""``(pattern key, target module name)`` of a module for peft's LoraConfig. peft matches a
    pattern key as the regex ``(.*\.)?(key)$`` and a target name as a name suffix; UNet keys are
    anchored at the root with ``^`` (as diffusers writes its rank_pattern, ``loaders/peft.py``);
    text-encoder names leave out ``text_model.`` so they match transformers 4's CLIPTextModel
    (``text_model.encoder...``) and transformers 5's flattened one (``encoder...``)."""
    if path.startswith("text_model."):
        name = path[len("text_model."):]
        return re.escape(name), name
    return "^" + re.escape(path), path


def _output_file(path: str | os.PathLike, weight_name: str) -> Path:
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / weight_name
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def export_lora_diffusers(lora: LoRA | None, path: str | os.PathLike, *, fold_alpha: bool = False,
                          weight_name: str = DIFFUSERS_WEIGHTS_NAME, unet: nnx.Module | None = None,
                          text_lora: LoRA | None = None) -> Path:
    """Write the LoRA so that ``pipe.load_lora_weights(folder)`` (diffusers) loads it: the peft
    layout, rank and alpha per module in the ``lora_adapter_metadata``. ``text_lora``: a LoRA
    of the CLIP text encoder, written under ``text_encoder.``. ``unet``: needed only when the
    LoRA adapts 1x1 convolutions (``proj_in`` / ``proj_out`` of SD1.5).
    ``path``: a folder (the file is ``weight_name`` in it) or a ``.safetensors`` file path."""
    from safetensors.numpy import save_file

    file = _output_file(path, weight_name)
    sd, packed = {}, {}
    for prefix, item, model in (("unet", lora, unet), ("text_encoder", text_lora, None)):
        if item is None:
            continue
        part, kwargs = lora_to_diffusers_state_dict(item, fold_alpha=fold_alpha, prefix=prefix,
                                                    model=model)
        sd.update(part)
        packed.update({f"{prefix}.{k}": v for k, v in kwargs.items()})
    if not sd:
        raise ValueError("nothing to export: give a UNet LoRA and/or text_lora")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
    save_file(sd, str(file), metadata=metadata)
    return file


def export_lora_kohya(lora: LoRA | None, path: str | os.PathLike, *, unet: nnx.Module | None = None,
                      text_lora: LoRA | None = None, weight_name: str = "lora.safetensors",
                      extra_metadata: dict | None = None) -> Path:
    """Write the LoRA in the kohya layout (A1111, ComfyUI, kohya's sd-scripts; diffusers'
    ``load_lora_weights`` reads it too): ``lora_unet_{path with _}.lora_down.weight`` (r, in),
    ``.lora_up.weight`` (out, r), ``.alpha`` (a scalar) per module; the text encoder under
    ``lora_te_``. 1x1-convolution LoRA (``unet=`` needed) as ``(r, in, 1, 1)`` / ``(out, r, 1, 1)``.
    Metadata: kohya's ``ss_network_module`` / ``ss_network_dim`` / ``ss_network_alpha``."""
    from safetensors.numpy import save_file

    file = _output_file(path, weight_name)
    sd = {}
    dims, alphas = [], []
    for component, item, model in (("unet", lora, unet), ("text_encoder", text_lora, None)):
        if item is None:
            continue
        for layer in item.layers:
            name = KOHYA_PREFIX[component] + layer.path.replace(".", "_")
            down, up = _torch_layout(layer, model, fold=False)
            sd[f"{name}.lora_down.weight"] = down
            sd[f"{name}.lora_up.weight"] = up
            sd[f"{name}.alpha"] = np.asarray(layer.alpha, np.float32)
            dims.append(layer.rank)
            alphas.append(layer.alpha)
    if not sd:
        raise ValueError("nothing to export: give a UNet LoRA and/or text_lora")
    metadata = {"ss_network_module": "networks.lora",
                "ss_network_dim": str(collections.Counter(dims).most_common(1)[0][0]),
                "ss_network_alpha": str(collections.Counter(alphas).most_common(1)[0][0]),
                "ss_base_model_version": "sd_v1", "ss_written_by": "jaxvedit"}
    if lora is not None and lora.config.tau:
        metadata["jaxvedit_gate"] = json.dumps({"tau": lora.config.tau,
                                                "num_train_timesteps": lora.config.num_train_timesteps})
    metadata.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    save_file(sd, str(file), metadata=metadata)
    return file


__all__ = ["LoRAImport", "LoRAFormatError", "import_lora", "import_lora_diffusers",
           "export_lora_diffusers", "export_lora_kohya", "lora_to_diffusers_state_dict",
           "read_lora_file", "detect_layout", "lora_file", "DIFFUSERS_WEIGHTS_NAME"]
