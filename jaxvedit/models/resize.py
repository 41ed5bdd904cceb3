"""``torch.nn.functional.interpolate`` for channels-last arrays, exactly (bilinear, bicubic).

``jax.image.resize`` is not PyTorch's interpolation: its cubic kernel has a = -0.5 (PyTorch's
bicubic uses a = -0.75), it has no ``align_corners`` and it antialiases when downsampling. The
ported transformers models (Dinov2's position-embedding interpolation, DPT/Depth Anything's
fusion and head upsampling, the depth post-processing) need PyTorch's numbers, so the resampling
here is written as two small interpolation matrices (rows: output pixels; built in float64 with
PyTorch's index arithmetic, ``aten/src/ATen/native/UpSample.h``) applied along H and W.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

_A = -0.75  # PyTorch's bicubic coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = _A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, mode: str, align_corners: bool,
                         scale_factor: float | None = None) -> np.ndarray:
    """``(out_size, in_size)`` float32 matrix ``M`` with ``out = M @ in`` along one axis, as
    ``F.interpolate(mode=mode, align_corners=align_corners)`` (``scale_factor``: the one passed
    to ``interpolate``, which sets the source scale when ``align_corners`` is false)."""
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation mode must be 'bilinear' or 'bicubic', got {mode!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot interpolate from {in_size} to {out_size} pixels")
    i = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = i * scale
    else:
        scale = 1.0 / scale_factor if scale_factor else in_size / out_size
        src = scale * (i + 0.5) - 0.5
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if mode == "bilinear":
        if not align_corners:
            src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i0 = np.minimum(i0, in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        lam = src - i0
        np.add.at(m, (rows, i0), 1.0 - lam)
        np.add.at(m, (rows, i1), lam)
    else:
        i0 = np.floor(src).astype(np.int64)
        w = _cubic_weights(src - i0)
        for k in range(4):
            idx = np.clip(i0 - 1 + k, 0, in_size - 1)
            np.add.at(m, (rows, idx), w[:, k])
    return m.astype(np.float32)


def interpolate(x, size: tuple[int, int] | None = None, *, scale_factor: float | None = None,
                mode: str = "bilinear", align_corners: bool = False):
    """``F.interpolate`` on ``(B, H, W, C)`` (channels-last); ``size`` or ``scale_factor``."""
    h, w = x.shape[1:3]
    if size is None:
        if scale_factor is None:
            raise ValueError("interpolate needs size or scale_factor")
        size = (int(math.floor(h * scale_factor)), int(math.floor(w * scale_factor)))
        sf = scale_factor
    else:
        sf = None
    size = (int(size[0]), int(size[1]))
    if size == (h, w) and sf is None:
        return x
    mh = jnp.asarray(interpolation_matrix(h, size[0], mode, align_corners, sf), x.dtype)
    mw = jnp.asarray(interpolation_matrix(w, size[1], mode, align_corners, sf), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision="highest")
    return jnp.einsum("pw,bowc->bopc", mw, x, precision="highest")
