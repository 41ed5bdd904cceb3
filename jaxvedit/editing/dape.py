"""DAPE as an edit method: tune on the source video (one-shot, both stages), then edit with the
result. Callable programmatically with the models an :class:`~jaxvedit.editing.pipeline.Editor`
holds, so a benchmark row is one call::

    edited = dape_edit(editor, frames, "a red square moving right", "a blue square moving right",
                       train=DAPETrainConfig(stage1_steps=400, stage2_steps=70), steps=50,
                       filter=BilateralFilterConfig.latent())     # DAPE + the bilateral inversion

The tuning runs on the editor's own UNet (in its compute dtype) with the editor's VAE latents and
text encoder; the base weights are never changed (DAPE lives beside the UNet).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvedit.adapters.dape import DAPE
from jaxvedit.training.dape import LatentClips, run_dape
from jaxvedit.training.dape_config import DAPETrainConfig


def dape_tune(editor, frames: np.ndarray, caption: str, train: DAPETrainConfig | None = None, *,
              output_dir=None, log=lambda msg: None, **overrides) -> tuple[DAPE, dict]:
    """Train DAPE (stage 1 then stage 2) on ``frames (T, H, W, 3)`` uint8 (already at the working
    resolution) with ``caption``; returns ``(dape, summary)``. ``train``: the stage settings
    (default: :class:`DAPETrainConfig`'s, the authors' code's); keyword ``overrides`` replace its
    fields; ``frames`` per clip is capped at the video length. ``output_dir``: checkpoints and
    metrics (None: in memory)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not caption or not caption.strip():
        raise ValueError("DAPE tuning needs the caption of the source video (the source prompt)")
    cfg = dataclasses.replace(train or DAPETrainConfig(), **overrides)
    if cfg.frames > len(frames):
        cfg = dataclasses.replace(cfg, frames=len(frames), frame_stride=1)
    latents = editor.encode_frames(frames)
    clips = LatentClips([latents], [[caption]], frames=cfg.frames, frame_stride=cfg.frame_stride,
                        seed=cfg.seed)
    empty = editor.text_embeddings([""])[0]
    return run_dape(editor.unet, clips, editor.text_embeddings, empty, editor.schedule, cfg,
                    output_dir=output_dir, log=log)


def dape_edit(editor, frames: np.ndarray, source_prompt: str, prompt: str, *,
              train: DAPETrainConfig | None = None, dape: DAPE | None = None,
              **edit_options) -> np.ndarray:
    """Edit ``frames (T, H, W, 3)`` uint8 from ``source_prompt`` to ``prompt`` with DAPE: tuned on
    the frames and the source prompt (or the given ``dape``), then ``editor.edit(...,
    **edit_options)`` with it (inversion and sampling go through the tuned UNet). Returns the
    edited frames, uint8 ``(T, H, W, 3)``. The editor's own adapter (if any) is left in place."""
    if dape is None:
        dape, _ = dape_tune(editor, frames, source_prompt, train)
    previous = editor.dape
    editor.dape = dape
    try:
        result = editor.edit(frames, prompt=prompt, source_prompt=source_prompt, **edit_options)
    finally:
        editor.dape = previous
    return result.frames
