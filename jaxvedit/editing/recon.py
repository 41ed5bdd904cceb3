"""Reconstruction quality of an inversion round trip (invert, then sample back with the source
prompt and no guidance): PSNR / SSIM of the reconstructed frames against the source frames
(scikit-image definitions, ``jaxvedit.metrics``; per-frame values averaged)."""

from __future__ import annotations

import numpy as np

from jaxvedit import metrics


def reconstruction_metrics(source, reconstruction) -> dict[str, float]:
    """``{"psnr": dB, "ssim": [-1, 1]}`` of ``reconstruction`` vs ``source`` (both
    ``(T, H, W, 3)`` uint8)."""
    a, b = np.asarray(source), np.asarray(reconstruction)
    if a.shape != b.shape:
        raise ValueError(f"source {a.shape} and reconstruction {b.shape} differ in shape")
    return {"psnr": float(metrics.psnr(a, b)), "ssim": float(metrics.ssim(a, b))}
