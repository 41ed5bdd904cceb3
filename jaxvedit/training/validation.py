"""Validation edits during training: every ``--validate-every`` optimizer steps, edit one fixed
clip with the adapter as it is now, write a strip PNG (source frames above, edited below) and
log scalar metrics.

The clip is ``--validation-video`` or the store's ``validation.npz`` (the first video
``prepare`` encoded); the source prompt is its caption and the target prompt
``--validation-prompt`` (default: the caption, i.e. a reconstruction through the adapter). The
edit is :meth:`jaxvedit.editing.pipeline.Editor.edit` over the trainer's own modules (no second
copy of the model), with the inference gate of SPEC §2.

Metric hooks: callables ``hook(source, edited, info) -> {name: float}`` added to
:attr:`Validator.metric_hooks` (or passed in) are called after each edit and their values
logged with the step (the world benchmark's metrics plug in here). Built in: PSNR of the edited
clip against the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

MetricHook = Callable[[np.ndarray, np.ndarray, dict], dict]


def psnr_hook(source: np.ndarray, edited: np.ndarray, info: dict) -> dict:
    from jaxvedit.metrics import psnr

    return {"psnr": float(psnr(source, edited, data_range=255.0))}


def write_strip(path: str | Path, source: np.ndarray, edited: np.ndarray) -> Path:
    """A PNG of two rows: the source frames and the edited frames, side by side."""
    import cv2

    rows = [np.concatenate(list(source), axis=1), np.concatenate(list(edited), axis=1)]
    img = np.concatenate(rows, axis=0)
    path = Path(path)
    if not cv2.imwrite(str(path), img[..., ::-1]):
        raise OSError(f"could not write {path}")
    return path


def load_validation_clip(cfg, store) -> tuple[np.ndarray, str]:
    """``(frames (T, H, W, 3) uint8 at the store's resolution, caption)``."""
    from jaxvedit.data import store as st
    from jaxvedit.data import video as vio

    n = cfg.validation_frames
    if cfg.validation_video:
        frames = vio.read_video(cfg.validation_video, max_frames=n).frames
        res = store.manifest["resolution"] if store is not None else cfg.resolution
        return vio.resize_center_crop(frames, res), cfg.validation_prompt or ""
    path = None if store is None else store.path / st.VALIDATION
    if path is None or not path.is_file():
        raise FileNotFoundError(f"--validate-every {cfg.validate_every}: no validation clip "
                                f"({path} is missing); give --validation-video")
    with np.load(path) as z:
        return z["frames"][:n], str(z["caption"])


class Validator:
    """Runs the validation edit; ``validator(step) -> {metric: value}``."""

    def __init__(self, cfg, comps, store, out_dir: Path, metric_hooks: list[MetricHook] | None = None):
        self.cfg, self.comps = cfg, comps
        self.frames, self.caption = load_validation_clip(cfg, store)
        self.prompt = cfg.validation_prompt or self.caption or "a video"
        self.source_prompt = self.caption
        self.out = Path(out_dir) / "validation"
        self.out.mkdir(parents=True, exist_ok=True)
        self.metric_hooks = list(metric_hooks) if metric_hooks is not None else [psnr_hook]
        self._editor = None

    def editor(self):
        if self._editor is None:
            from jaxvedit.editing.pipeline import Editor

            m = self.comps.model
            self._editor = Editor.from_modules(
                unet=m.unet.unet, vae=self.comps.vae, text_encoder=self.comps.text_encoder,
                tokenizer=self.comps.tokenizer, schedule=self.comps.schedule, lora=m.unet.lora,
                tokens=m.tokens, vision=self.comps.vision if self.cfg.unshared_tokens else None,
                batch_frames=len(self.frames))
        return self._editor

    def __call__(self, step: int) -> dict:
        """Edit with the adapter values currently in ``comps.model`` (the caller writes them)."""
        res = self.editor().edit(self.frames, prompt=self.prompt, source_prompt=self.source_prompt,
                                 steps=self.cfg.validation_steps, seed=self.cfg.seed, progress=False)
        path = write_strip(self.out / f"step_{step:06d}.png", self.frames, res.frames)
        info = {"step": step, "prompt": self.prompt, "source_prompt": self.source_prompt,
                "strip": str(path)}
        metrics = {}
        for hook in self.metric_hooks:
            metrics.update({f"val/{k}": float(v) for k, v in hook(self.frames, res.frames, info).items()})
        return metrics
