"""World-benchmark rows that are not one batched inversion + CFG run: the TokenFlow host
(:mod:`jaxvedit.editing.tokenflow`, with and without the GE adapter and the latent bilateral
filter) and LoRA-Edit (:mod:`jaxvedit.editing.lora_edit` on the world inpainting UNet).

Each row edits one video and one edit at a time, as its method does, and returns the same
``(N, 3, T, H, W, 3)`` uint8 array as the batched rows. The inputs a user of each method gives
come from the renderer:

* TokenFlow: the source video and the two prompts (no negative prompt: the host's default
  negative prompt has no words of the world's vocabulary).
* LoRA-Edit: the mask (1 = keep) from the ground truth -- for a colour or shape edit, every pixel
  outside the subject's visible region in the source *and* in the oracle target (dilated by
  ``MASK_DILATION`` px) is kept (an object in front of the subject is kept); for a background edit, the objects are kept and the background
  regenerated (its pixels dilated by the same amount) -- and the edited first frame: the oracle
  target's frame 0 (the paper's user edits it with an image editor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MASK_DILATION = 2  # px at 128 px frames


@dataclass(frozen=True)
class RowBatch:
    """A batch of suite videos: sources ``(N, T, H, W, 3)`` uint8, their prompts, the target
    prompts ``[N][3]``, the renders of the sources and of the oracle targets (ground truth)."""

    sources: np.ndarray
    source_prompts: list
    target_prompts: list
    source_truth: list  # [N] Rendered
    target_truth: list  # [N][3] Rendered
    kinds: tuple  # the edit kinds, in order
    steps: int
    guidance: float


@dataclass(frozen=True)
class HostRow:
    fn: Callable  # (BenchContext, RowBatch, **options) -> (N, 3, T, H, W, 3) uint8
    needs: tuple = ()  # of "adapter", "inpaint"
    options: tuple = ()  # (name, value) pairs passed to fn


def _edit_each(batch: RowBatch, one) -> np.ndarray:
    n = len(batch.sources)
    return np.stack([[one(i, k) for k in range(len(batch.kinds))] for i in range(n)])


def tokenflow_row(ctx, batch: RowBatch, *, adapter: bool = False, filter: str = "none") -> np.ndarray:
    from jaxvedit.diffusion import BilateralFilterConfig
    from jaxvedit.editing.tokenflow import tokenflow_edit

    flt = BilateralFilterConfig.latent() if filter == "latent" else None
    ed = ctx.editor
    t = batch.sources.shape[1]

    def one(i, k):
        res = tokenflow_edit(ed, batch.sources[i], batch.source_prompts[i], batch.target_prompts[i][k],
                             negative_prompt="", steps=batch.steps, guidance_scale=batch.guidance,
                             batch_size=min(8, t), keyframe_group=8, filter=flt, use_adapter=adapter,
                             lora_tau=ctx.cfg.lora_tau, lora_ratio=ctx.cfg.lora_ratio, seed=i,
                             progress=False)
        return res.frames

    return _edit_each(batch, one)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of ``(T, H, W)`` masks by a ``(2 r + 1)`` square (the inpainting
    fine-tuning's :func:`~jaxvedit.world.train_conditioned.dilate`)."""
    from jaxvedit.world.train_conditioned import dilate

    return np.asarray(dilate(np.asarray(mask, np.float32), r)) > 0

def lora_edit_keep_mask(source, target, kind: str, dilation: int = MASK_DILATION) -> np.ndarray:
    """``(T, H, W)`` bool, True = keep: see the module docstring."""
    if kind == "background":
        return ~_dilate(source.background_mask, dilation)
    # object 0 is the subject; visible coverage: an object in front of it stays kept
    region = (source.masks[:, 0] > 0) | (target.masks[:, 0] > 0)
    return ~_dilate(region, dilation)


def lora_edit_row(ctx, batch: RowBatch, *, train_steps: int = 100) -> np.ndarray:
    from jaxvedit.editing.lora_edit import lora_edit

    ed = ctx.inpaint_editor()

    def one(i, k):
        src, tgt = batch.source_truth[i], batch.target_truth[i][k]
        keep = lora_edit_keep_mask(src, tgt, batch.kinds[k])
        res = lora_edit(ed, batch.sources[i], batch.source_prompts[i], batch.target_prompts[i][k],
                        mask=keep, edited_first_frame=tgt.frames[0], steps=batch.steps,
                        guidance_scale=batch.guidance, seed=i, train_steps=train_steps)
        return res.frames

    return _edit_each(batch, one)


def lora_edit_oracle(editor, sources: np.ndarray, source_truth: list, target_truth: list,
                     kinds: tuple) -> np.ndarray:
    """The reference row ``oracle in the lora-edit mask``: the best the ``lora-edit`` row can
    score with its kept region blended back (``--lora-edit-blend``). Per video and edit, the
    source's latents in the kept latent cells of that row's mask (nearest-resized as the
    inpainting pipeline resizes it), the oracle target's in the regenerated cells and in all of
    frame 0 (the edited first frame), decoded with the same VAE. Against ``oracle through the
    VAE`` it isolates what the mask costs: the dilation band and the border cells, which keep the
    source where the oracle changed, and the decoder's reach across the mask border.
    Returns ``(N, 3, T, H, W, 3)`` uint8."""
    from jaxvedit.diffusion.inpaint import resize_mask_nearest

    n, t = sources.shape[:2]
    src_lat = editor.encode_frames(sources.reshape((-1,) + sources.shape[2:]))
    src_lat = src_lat.reshape((n, t) + src_lat.shape[1:])
    tgt = np.stack([[target_truth[i][k].frames for k in range(len(kinds))] for i in range(n)])
    tgt_lat = editor.encode_frames(tgt.reshape((-1,) + tgt.shape[3:]))
    tgt_lat = tgt_lat.reshape(tgt.shape[:3] + tgt_lat.shape[1:])
    z = np.empty_like(tgt_lat)
    for i in range(n):
        for k, kind in enumerate(kinds):
            keep = lora_edit_keep_mask(source_truth[i], target_truth[i][k], kind)
            keep[0] = True  # as lora_edit: frame 0 is the edited frame, whole
            regen = resize_mask_nearest((~keep).astype(np.float32)[..., None], src_lat.shape[2:4])
            z[i, k] = regen * tgt_lat[i, k] + (1 - regen) * src_lat[i]
            z[i, k, 0] = tgt_lat[i, k, 0]
    out = editor.decode_latents(z.reshape((-1,) + z.shape[3:]))
    return out.reshape(tgt.shape)


HOST_ROWS: dict[str, HostRow] = {
    "tokenflow": HostRow(tokenflow_row),
    "tokenflow+latent": HostRow(tokenflow_row, options=(("filter", "latent"),)),
    "adapter+tokenflow": HostRow(tokenflow_row, ("adapter",), (("adapter", True),)),
    "adapter+tokenflow+latent": HostRow(tokenflow_row, ("adapter",),
                                        (("adapter", True), ("filter", "latent"))),
    "lora-edit": HostRow(lora_edit_row, ("inpaint",)),
}
