"""Scores of an edited world video against its oracle target (the renderer's edited scene).

All functions take uint8 videos ``(T, H, W, 3)`` and the oracle's :class:`Rendered` ground truth.
"""

from __future__ import annotations

import numpy as np

from jaxvedit.world import judge
from jaxvedit.world.render import Rendered
from jaxvedit.world.scene import Edit


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if mask.sum() == 0:
            return float("nan")
        d = d[mask]
    return float(10 * np.log10(255.0 ** 2 / max(d.mean(), 1e-10)))


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    import cv2

    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), k) > 0 for m in mask])


def warp_error_gt(video: np.ndarray, truth: Rendered) -> float:
    """Mean absolute difference (in [0, 1] units) between frame t and frame t+1 sampled at
    ``p + flow(p)`` with the ground-truth forward flow, over the valid (non-occluded) pixels."""
    import cv2

    v = video.astype(np.float32) / 255.0
    h, w = v.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    errs = []
    for t in range(len(v) - 1):
        f = truth.flow[t]
        nxt = cv2.remap(v[t + 1], xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        valid = truth.flow_valid[t]
        if valid.any():
            errs.append(np.abs(nxt - v[t])[valid].mean())
    return float(np.mean(errs)) if errs else float("nan")


def score_edit(edited: np.ndarray, edit: Edit, source: Rendered, target: Rendered) -> dict:
    """Every per-video score of one edit (see docs/world.md)."""
    from jaxvedit.metrics import flicker

    t = min(len(edited), len(target.frames))
    edited, tgt = edited[:t], target.frames[:t]
    subj_t = target.masks[:t, 0] >= 0.5  # the subject as the oracle shows it
    away = ~_dilate(np.concatenate([source.amodal[:t], target.amodal[:t]], axis=1).max(axis=1) > 0, 2)
    spec = edit.target
    colour, shape, bg = spec.subject.colour, spec.subject.shape, spec.background
    iou, col_ok, shape_ok, bg_ok = [], [], [], []
    region = _dilate(subj_t, 3)
    for i in range(t):
        mine = judge.colour_mask(edited[i], colour)
        union = (mine | subj_t[i]).sum()
        iou.append((mine & subj_t[i]).sum() / union if union else 1.0)
        col_ok.append(judge.classify_colour(edited[i], region[i]) == colour)
        shape_ok.append(judge.classify_shape(mine) == shape)
        bg_ok.append(judge.classify_background(edited[i], away[i]) == bg)
    col_ok, shape_ok, bg_ok = map(np.asarray, (col_ok, shape_ok, bg_ok))
    kind_ok = {"colour": col_ok, "shape": shape_ok, "background": bg_ok}[edit.kind]
    return {
        "psnr": _psnr(edited, tgt),
        "object_iou": float(np.mean(iou)),
        "attribute_accuracy": float(kind_ok.mean()),
        "all_attributes_accuracy": float((col_ok & shape_ok & bg_ok).mean()),
        "colour_accuracy": float(col_ok.mean()),
        "shape_accuracy": float(shape_ok.mean()),
        "background_accuracy": float(bg_ok.mean()),
        "background_psnr": _psnr(edited, tgt, np.repeat(away[..., None], 3, axis=-1)),
        "warp_error_gt": warp_error_gt(edited, target),
        "flicker": float(flicker(edited)),
    }


def score_job(job) -> dict:
    """``(edited video, Edit) -> score_edit(...)``, rendering the source and the oracle target
    here (a worker process's unit of work)."""
    from jaxvedit.world.render import render

    edited, edit = job
    return score_edit(edited, edit, render(edit.source), render(edit.target))
