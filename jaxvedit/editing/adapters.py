"""Adapters for the edit pipeline: find the parts of an adapter folder (or a LoRA file of another
tool), load them for the editor's models, and check them against what the files record (the
vision tower of the prompt tokens, the LoRA's targets and gate). See ``docs/editing.md``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jaxvedit.adapters import AdapterLoadError, import_lora, load_adapter
from jaxvedit.adapters.io import CONFIG_NAME, read_adapter_config
from jaxvedit.adapters.records import check_lora_record, check_vision_tower, describe

LORA_FILE_SUFFIXES = (".safetensors",)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


ADAPTER_KINDS = ("lora", "prompt_tokens", "dape")


def find_adapter_parts(path: str | Path) -> dict[str, Path]:
    """``{"lora": folder, "prompt_tokens": folder, "dape": folder}`` (any may be absent) of an
    adapter folder: ``<run>/adapter`` with ``lora/``, ``prompt_tokens/`` and/or ``dape/`` (what
    ``python -m jaxvedit.train`` and ``--method dape`` write), or one adapter folder itself; or
    ``{"lora_file": file}`` for a LoRA ``.safetensors`` file of another tool (diffusers / peft /
    kohya layouts, :func:`jaxvedit.adapters.import_lora`)."""
    p = Path(path)
    if p.is_file() and p.suffix in LORA_FILE_SUFFIXES:
        return {"lora_file": p}
    if not p.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {p}")
    if (p / CONFIG_NAME).is_file():
        kind = json.loads((p / CONFIG_NAME).read_text()).get("kind")
        if kind not in ADAPTER_KINDS:
            raise AdapterLoadError(f"unknown adapter kind {kind!r} in {p / CONFIG_NAME}")
        return {kind: p}
    parts = {k: p / k for k in ADAPTER_KINDS if (p / k / CONFIG_NAME).is_file()}
    if not parts:
        raise FileNotFoundError(f"no adapter in {p}: expected lora/, prompt_tokens/ or dape/ with "
                                f"{CONFIG_NAME} (as python -m jaxvedit.train writes to <run>/adapter), "
                                "or a LoRA .safetensors file")
    return parts


@dataclass
class EditAdapters:
    """What the editor applies: the UNet LoRA (gated at edit time), a text-encoder LoRA (from
    another tool's file), the prompt tokens and the vision tower their unshared part needs."""

    lora: object | None = None
    dape: object | None = None
    text_lora: object | None = None
    tokens: object | None = None
    unshared: bool = True
    vision: object | None = None
    vision_source: str | None = None
    notes: list[str] = field(default_factory=list)


def _context_dim(unet) -> int:
    d = unet.config.cross_attention_dim
    return d if isinstance(d, int) else d[0]


def load_edit_adapters(path: str | Path, unet, text_encoder, *, model_root: Path,
                       vision_model: str | None = None, num_train_timesteps: int = 1000) -> EditAdapters:
    """Load the adapter at ``path`` for the editor's UNet / text encoder.

    The vision tower of the prompt tokens: ``vision_model`` if given (checked against the one
    the file records: a mismatch is an :class:`AdapterLoadError` naming both), else the recorded
    one, else (files without a record) ``model_root/image_encoder``."""
    out = EditAdapters()
    parts = find_adapter_parts(path)
    if "lora_file" in parts:
        imp = import_lora(parts["lora_file"], unet, text_encoder)
        out.lora, out.text_lora = imp.unet, imp.text_encoder
        out.notes.append(f"LoRA file {parts['lora_file']} ({imp.layout} layout: "
                         + ", ".join(f"{n} {c} modules" for c, n in imp.modules.items()) + ")")
        return out
    if "lora" in parts:
        meta = read_adapter_config(parts["lora"])
        out.lora = load_adapter(parts["lora"], unet)
        check_lora_record(meta, out.lora, num_train_timesteps, str(parts["lora"]))
    if "dape" in parts:
        out.dape = load_adapter(parts["dape"], unet)
        out.notes.append(f"DAPE adapter {parts['dape']}")
    if "prompt_tokens" in parts:
        folder = parts["prompt_tokens"]
        meta = read_adapter_config(folder)
        tokens = load_adapter(folder)
        if tokens.config.context_dim != _context_dim(unet):
            raise AdapterLoadError(
                f"cannot load prompt_tokens adapter {folder}: tensor shared has width "
                f"{tokens.config.context_dim}, the UNet's cross-attention dim is {_context_dim(unet)} "
                "(made for another model?)")
        out.tokens, out.unshared = tokens, bool(meta.get("unshared", True))
        if out.unshared:
            out.vision, out.vision_source = _vision_tower(meta.get("vision_tower"), folder, path,
                                                          model_root, vision_model)
            if out.vision.config.hidden_size != tokens.config.vision_dim:
                raise AdapterLoadError(
                    f"cannot load prompt_tokens adapter {folder}: tensor proj_kernel expects vision "
                    f"width {tokens.config.vision_dim}, the vision tower {out.vision_source} has "
                    f"{out.vision.config.hidden_size} (another --vision-model?)")
            out.notes.append(f"prompt tokens with the vision tower {out.vision_source}")
    return out


def _vision_tower(record: dict | None, folder: Path, adapter, model_root: Path,
                  vision_model: str | None):
    from jaxvedit.models.clip import CLIPVisionModel

    if vision_model:
        vision = CLIPVisionModel.from_pretrained(vision_model)
        if record:
            check_vision_tower(record, vision, f"--vision-model {vision_model}", str(folder))
        return vision, str(vision_model)
    image_encoder = model_root / "image_encoder"
    if record:
        src, sub = record.get("source"), record.get("subfolder")
        try:
            vision = CLIPVisionModel.from_pretrained(src, subfolder=sub)
            given = describe(record)
        except (FileNotFoundError, OSError) as err:
            if not (image_encoder / "config.json").is_file():
                raise FileNotFoundError(
                    f"the prompt tokens of {adapter} were trained on the CLIP vision tower "
                    f"{describe(record)}, which cannot be loaded ({err}); give --vision-model "
                    "with its location") from err
            vision, given = CLIPVisionModel.from_pretrained(model_root, subfolder="image_encoder"), \
                f"the model's image_encoder/ ({image_encoder}; the recorded {describe(record)} is gone)"
        check_vision_tower(record, vision, given, str(folder))
        return vision, given
    if (image_encoder / "config.json").is_file():
        return CLIPVisionModel.from_pretrained(model_root, subfolder="image_encoder"), str(image_encoder)
    raise FileNotFoundError(
        f"the prompt tokens of {adapter} need a CLIP vision tower: their file records none (an "
        f"older adapter) and {model_root} has no image_encoder/; give --vision-model (e.g. "
        "openai/clip-vit-base-patch32)")
