"""What an adapter file records about the models it was trained with, and the checks on it.

The unshared prompt tokens are a projection of one CLIP vision tower's hidden states: another
tower of the same width loads without a shape error and gives meaningless tokens. So a
prompt-token file records its vision tower: where it came from (``source``, ``subfolder``) and
two fingerprints, of the tower's config (the fields that shape its hidden states) and of its
weights (a strided sample of every tensor: cheap on ViT-L, and any other checkpoint differs). A
LoRA file records its resolved target modules and its timestep gate. ``python -m jaxvedit.edit``
loads the recorded tower when none is given and refuses one that does not match, by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from flax import nnx

from jaxvedit.adapters.errors import AdapterLoadError

#: CLIPVisionConfig fields that do not change the hidden states the tokens see
_IGNORED_CONFIG_FIELDS = ("projection_dim",)
_SAMPLES_PER_TENSOR = 1024


def config_fingerprint(config) -> str:
    """sha256 (16 hex digits) of a CLIP vision config's fields that shape its hidden states."""
    d = {k: v for k, v in dataclasses.asdict(config).items() if k not in _IGNORED_CONFIG_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(model: nnx.Module) -> str:
    """sha256 (16 hex digits) over every parameter's path, shape and a strided sample of up to
    1024 of its values (float32 bytes)."""
    h = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                            key=lambda kv: tuple(str(p) for p in kv[0])):
        value = np.asarray(var.value, np.float32).ravel()
        step = max(1, value.size // _SAMPLES_PER_TENSOR)
        h.update(".".join(str(p) for p in path).encode())
        h.update(str(tuple(np.shape(var.value))).encode())
        h.update(np.ascontiguousarray(value[::step][:_SAMPLES_PER_TENSOR]).tobytes())
    return h.hexdigest()[:16]


def _source_string(source) -> str:
    p = Path(str(source)).expanduser()
    return str(p.resolve()) if p.exists() else str(source)


def vision_tower_record(vision, source, subfolder: str | None = None) -> dict:
    """The ``vision_tower`` entry of a prompt-token adapter file."""
    cfg = vision.config
    return {"source": _source_string(source), "subfolder": subfolder,
            "hidden_size": cfg.hidden_size, "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "num_hidden_layers": cfg.num_hidden_layers,
            "config_sha256": config_fingerprint(cfg), "weights_sha256": weights_fingerprint(vision)}


def describe(record: dict) -> str:
    src = record.get("source")
    sub = record.get("subfolder")
    return f"{src}{'/' + sub if sub else ''}"


def check_vision_tower(record: dict, vision, given: str, adapter: str) -> None:
    """Refuse (``AdapterLoadError``) a vision tower other than the recorded one, naming both and
    what differs (config fields, else the weights)."""
    cfg = vision.config
    if config_fingerprint(cfg) != record.get("config_sha256"):
        diffs = [f"{k} {record[k]} vs {getattr(cfg, k)}"
                 for k in ("hidden_size", "image_size", "patch_size", "num_hidden_layers")
                 if k in record and record[k] != getattr(cfg, k)]
        what = "; ".join(diffs) or "another config"
        raise AdapterLoadError(
            f"vision tower mismatch for the prompt tokens of {adapter}: they were trained on the "
            f"CLIP vision tower {describe(record)} (config {record.get('config_sha256')}), "
            f"{given} has another config ({what}); give --vision-model {describe(record)} "
            "or that tower's new location")
    if weights_fingerprint(vision) != record.get("weights_sha256"):
        raise AdapterLoadError(
            f"vision tower mismatch for the prompt tokens of {adapter}: they were trained on the "
            f"CLIP vision tower {describe(record)} (weights {record.get('weights_sha256')}), "
            f"{given} has the same config but other weights ({weights_fingerprint(vision)}); give "
            f"--vision-model {describe(record)} or that tower's new location")


def lora_record(lora, *, trained_steps: int | None = None) -> dict:
    """The ``targets`` and ``gate`` entries of a LoRA adapter file."""
    cfg = lora.config
    out = {"targets": list(lora.paths),
           "gate": {"tau": cfg.tau, "num_train_timesteps": cfg.num_train_timesteps}}
    if trained_steps is not None:
        out["trained_steps"] = int(trained_steps)
    return out


def check_lora_record(meta: dict, lora, num_train_timesteps: int, adapter: str) -> None:
    """The rebuilt LoRA adapts exactly the recorded modules, and the model's schedule has the
    number of training timesteps the gate was defined on."""
    recorded = meta.get("targets")
    if recorded is not None and list(recorded) != list(lora.paths):
        missing = sorted(set(recorded) - set(lora.paths))
        extra = sorted(set(lora.paths) - set(recorded))
        raise AdapterLoadError(
            f"LoRA target mismatch for {adapter}: it was trained on {len(recorded)} modules, its "
            f"target patterns select {len(lora.paths)} on this UNet (missing: {missing[:4]}, "
            f"extra: {extra[:4]}): made for another model?")
    gate = meta.get("gate") or {}
    n = gate.get("num_train_timesteps")
    if n is not None and gate.get("tau") and int(n) != int(num_train_timesteps):
        raise AdapterLoadError(
            f"LoRA gate mismatch for {adapter}: its timestep gate tau={gate['tau']} is defined on "
            f"{n} training timesteps, the model's scheduler has {num_train_timesteps}")
