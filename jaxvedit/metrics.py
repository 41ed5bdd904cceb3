"""Offline metrics for edited videos: flicker, flow-warping error, PSNR / SSIM, CLIP frame
consistency and CLIP text alignment.

Videos are channels-last ``(T, H, W, 3)``, uint8 or float in [0, 1]. Pixel metrics
(:func:`flicker`, :func:`warp_error`) work in [0, 1] units (uint8 is divided by 255).
:func:`psnr` / :func:`ssim` work on raw values with an explicit ``data_range`` (default 255 for
uint8, 1.0 for float), as scikit-image does. See ``docs/video_and_metrics.md``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "FARNEBACK_PARAMS", "clip_frame_consistency", "clip_image_embeddings",
    "clip_preprocess", "clip_text_alignment", "clip_text_embeddings", "flicker", "occlusion_mask",
    "optical_flow", "psnr", "ssim", "warp", "warp_error",
]

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# cv2.calcOpticalFlowFarneback arguments (the values OpenCV's own samples use)
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
                        poly_sigma=1.2, flags=0)


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover
        raise ImportError("optical-flow metrics need OpenCV: pip install opencv-python-headless") from e
    return cv2


def _video01(frames, name: str = "frames", min_frames: int = 1) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 or float [0, 1] -> float64 [0, 1]."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be (T, H, W, 3), got shape {a.shape}")
    if a.shape[0] < min_frames:
        raise ValueError(f"{name} needs at least {min_frames} frames, got {a.shape[0]}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {a.dtype}")
    return a.astype(np.float64)


# ----------------------------------------------------------------------------------------------
# temporal pixel metrics


def flicker(frames) -> float:
    """Mean absolute temporal difference ``mean |x_{t+1} - x_t|`` over all pixels, channels and
    the ``T - 1`` frame pairs, in [0, 1] units. 0 for a static video."""
    a = _video01(frames, min_frames=2)
    return float(np.mean(np.abs(np.diff(a, axis=0))))


def _grey_u8(frame: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    u8 = np.clip(np.round(frame * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY)


def optical_flow(frame_a, frame_b, **params) -> np.ndarray:
    """Farneback flow ``(H, W, 2)`` float32 (``[..., 0]`` = x, ``[..., 1]`` = y) from ``frame_a``
    to ``frame_b`` (``(H, W, 3)`` uint8 or float [0, 1], compared in greyscale):
    ``frame_a[y, x] ~ frame_b[y + flow[y, x, 1], x + flow[y, x, 0]]``. ``params`` override
    :data:`FARNEBACK_PARAMS`."""
    cv2 = _cv2()
    a = _video01(np.asarray(frame_a)[None], "frame_a")[0]
    b = _video01(np.asarray(frame_b)[None], "frame_b")[0]
    p = {**FARNEBACK_PARAMS, **params}
    return cv2.calcOpticalFlowFarneback(_grey_u8(a), _grey_u8(b), None, **p)


def _maps(flow: np.ndarray):
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx + flow[..., 0], yy + flow[..., 1]


def warp(image, flow) -> np.ndarray:
    """``out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]]`` (bilinear, cv2.remap, border
    replicated). With ``flow`` = :func:`optical_flow` ``(b, a)`` this brings ``a``'s content onto
    ``b``'s pixel grid."""
    cv2 = _cv2()
    mx, my = _maps(np.asarray(flow, np.float32))
    img = np.asarray(image, np.float32)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(flow_back, flow_fwd, *, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Non-occluded pixels of frame ``t+1`` (bool ``(H, W)``), by forward-backward consistency
    (Sundaram et al. 2010, as in Ruder et al. 2016): ``flow_back`` maps ``t+1 -> t``,
    ``flow_fwd`` maps ``t -> t+1``; a pixel is kept when
    ``|w_b + w_f(p + w_b)|^2 <= alpha (|w_b|^2 + |w_f(p + w_b)|^2) + beta`` (pixels^2) and
    ``p + w_b(p)`` lies inside frame ``t``."""
    fb = np.asarray(flow_back, np.float32)
    fw = warp(flow_fwd, fb)  # forward flow at the matched point of frame t
    h, w = fb.shape[:2]
    mx, my = _maps(fb)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    s = fb + fw
    lhs = np.sum(s * s, axis=-1)
    rhs = alpha * (np.sum(fb * fb, -1) + np.sum(fw * fw, -1)) + beta
    return inside & (lhs <= rhs)


def warp_error(edited, source, *, occlusion_threshold: float = 0.5, occlusion_alpha: float = 0.01,
               reduction: str = "mse", use_flow: bool = True, flow_params: dict | None = None) -> float:
    """Flow-warping error of ``edited`` along the motion of ``source`` (same shape).

    For each pair ``(t, t+1)``: backward flow ``w_b = flow(source[t+1] -> source[t])`` and forward
    flow ``w_f = flow(source[t] -> source[t+1])`` (Farneback, on the *source*, whose motion the
    edit should follow); ``edited[t]`` is warped onto frame ``t+1``'s grid,
    ``warped(p) = edited[t](p + w_b(p))`` (cv2.remap, bilinear) — backward warping needs the
    flow *from* the target frame, hence ``w_b``; pixels failing the forward-backward check
    (:func:`occlusion_mask`, ``beta = occlusion_threshold`` px^2, ``alpha = occlusion_alpha``) or
    mapping outside the frame are left out. Per pair: mean over kept pixels of
    ``mean_c (warped - edited[t+1])^2`` (``reduction="mse"``, as Lai et al. 2018; values in [0, 1]
    units) or of ``mean_c |...|`` (``"mae"``); result: mean over pairs (pairs with no kept pixel
    are skipped; NaN if none remains). Identical source frames are taken as exactly zero
    motion. ``use_flow=False`` gives the plain frame difference
    (zero flow, every pixel kept), a baseline.
    """
    if reduction not in ("mse", "mae"):
        raise ValueError(f"reduction must be 'mse' or 'mae', got {reduction!r}")
    e = _video01(edited, "edited", min_frames=2)
    s = _video01(source, "source", min_frames=2)
    if e.shape != s.shape:
        raise ValueError(f"edited {e.shape} and source {s.shape} must have the same shape "
                         "(resize the source to the edit's size first)")
    params = flow_params or {}
    per_pair = []
    for t in range(e.shape[0] - 1):
        if use_flow and np.array_equal(s[t], s[t + 1]):
            # identical source frames: no motion (Farneback's own estimate wobbles by ~0.1 px)
            keep = np.ones(e.shape[1:3], bool)
            warped = e[t]
        elif use_flow:
            fb = optical_flow(s[t + 1], s[t], **params)
            fw = optical_flow(s[t], s[t + 1], **params)
            keep = occlusion_mask(fb, fw, alpha=occlusion_alpha, beta=occlusion_threshold)
            warped = warp(e[t].astype(np.float32), fb).astype(np.float64)
        else:
            keep = np.ones(e.shape[1:3], bool)
            warped = e[t]
        d = warped - e[t + 1]
        err = np.mean(d * d, -1) if reduction == "mse" else np.mean(np.abs(d), -1)
        if keep.any():
            per_pair.append(float(err[keep].mean()))
    return float(np.mean(per_pair)) if per_pair else float("nan")


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM (scikit-image's definitions and defaults)


def _pair(a, b, data_range):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (3, 4) or a.shape[-1] < 1:
        raise ValueError(f"expected (H, W, C) or (T, H, W, C) images, got shape {a.shape}")
    if data_range is None:
        if (a.dtype == np.uint8) != (b.dtype == np.uint8):
            raise ValueError(f"mixed dtypes {a.dtype} / {b.dtype}: convert both to one range or "
                             "pass data_range")
        if a.dtype == np.uint8:
            data_range = 255.0
        elif np.issubdtype(a.dtype, np.floating):
            data_range = 1.0
        else:
            raise ValueError(f"pass data_range for dtype {a.dtype}")
    a4 = a[None] if a.ndim == 3 else a
    b4 = b[None] if b.ndim == 3 else b
    return a4.astype(np.float64), b4.astype(np.float64), float(data_range)


def psnr(a, b, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, as
    ``skimage.metrics.peak_signal_noise_ratio`` for one ``(H, W, C)`` image; a ``(T, H, W, C)``
    clip gives the mean of the per-frame values. ``data_range`` defaults to 255 for uint8 and
    1.0 for float. Identical images give ``inf``."""
    x, y, r = _pair(a, b, data_range)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(r * r / mse)
    return float(np.mean(vals))


def _box_valid(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every fully-inside ``k x k`` window of axes 1, 2 of ``(N, H, W, C)``."""
    for axis in (1, 2):
        c = np.cumsum(x, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = x.shape[axis]
        x = (np.take(c, np.arange(k, n + 1), axis=axis) - np.take(c, np.arange(0, n - k + 1), axis=axis)) / k
    return x


def ssim(a, b, data_range: float | None = None, *, win_size: int = 7, K1: float = 0.01,
         K2: float = 0.03) -> float:
    """Mean structural similarity, as ``skimage.metrics.structural_similarity(a, b,
    channel_axis=-1, data_range=...)`` with its defaults (uniform 7x7 window, sample covariance,
    K1 = 0.01, K2 = 0.03, the window-radius border left out, channels averaged) for one
    ``(H, W, C)`` image; a ``(T, H, W, C)`` clip gives the mean of the per-frame values (not
    scikit-image's 3-D SSIM). Computed in float64."""
    x, y, r = _pair(a, b, data_range)
    if win_size % 2 != 1 or win_size < 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(x.shape[1:3]) < win_size:
        raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} are smaller than the "
                         f"{win_size}x{win_size} SSIM window")
    # the border strip that skimage crops is exactly where its filter window leaves the image,
    # so only fully-inside windows are computed here
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)
    ux, uy = _box_valid(x, win_size), _box_valid(y, win_size)
    uxx, uyy, uxy = _box_valid(x * x, win_size), _box_valid(y * y, win_size), _box_valid(x * y, win_size)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * r) ** 2, (K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(np.mean(s.mean(axis=(1, 2, 3))))


# ----------------------------------------------------------------------------------------------
# CLIP metrics (jaxvedit.models.clip towers with projection)


def clip_preprocess(frames, image_size: int = 224) -> np.ndarray:
    """CLIP's image preprocessing (as transformers' ``CLIPImageProcessor``): resize the short
    side to ``image_size`` (bicubic, antialiased when shrinking; the long side
    ``int(image_size * long / short)``), round to 8 bits, center crop ``image_size`` square
    (offset ``excess // 2``), scale to [0, 1], normalise with CLIP's mean / std. Resizing is
    ``jax.image.resize(method="cubic", antialias=True)`` (Keys a = -0.5, PIL's bicubic kernel).
    ``(T, H, W, 3)`` uint8 or float [0, 1] -> ``(T, S, S, 3)`` float32."""
    import jax
    import jax.numpy as jnp

    a = _video01(frames) * 255.0
    t, h, w, _ = a.shape
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(image_size * long / short)
    nh, nw = (new_long, image_size) if w <= h else (image_size, new_long)
    if (nh, nw) != (h, w):
        a = np.asarray(jax.image.resize(jnp.asarray(a, jnp.float32), (t, nh, nw, 3), method="cubic",
                                        antialias=True), np.float64)
    a = np.clip(np.round(a), 0, 255)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    a = a[:, top:top + image_size, left:left + image_size] / 255.0
    return ((a - CLIP_MEAN) / CLIP_STD).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted(field: str):
    import jax
    from flax import nnx

    def f(graphdef, state, x):
        out = getattr(nnx.merge(graphdef, state)(x), field)
        if out is None:
            raise ValueError(f"the model returns no {field}: use the ...WithProjection CLIP model "
                             "(jaxvedit.models.clip)")
        return out

    # the graph definition is static: models of one structure share the compiled program
    return jax.jit(f, static_argnums=0)


def _apply_batched(model, field: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``model(x).<field>`` in batches of one fixed size (the last one padded), jit-compiled."""
    from flax import nnx

    from jaxvedit.data.encoders import batched

    graphdef, state = nnx.split(model)
    f = _jitted(field)
    return batched(lambda chunk: f(graphdef, state, chunk), x, int(batch_size))


def _normalise(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float64)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def clip_image_embeddings(frames, vision_model: Any, *, batch_size: int = 16) -> np.ndarray:
    """Unit-norm ``image_embeds`` ``(T, D)`` float64 of the frames (preprocessed with
    :func:`clip_preprocess` at the model's ``image_size``) from a
    ``CLIPVisionModelWithProjection``, run jit-compiled in batches."""
    pixels = clip_preprocess(frames, vision_model.config.image_size)
    return _normalise(_apply_batched(vision_model, "image_embeds", pixels, batch_size))


def clip_text_embeddings(prompts, text_model: Any, tokenizer: Any) -> np.ndarray:
    """Unit-norm ``text_embeds`` ``(B, D)`` float64 of prompts from a
    ``CLIPTextModelWithProjection`` (ids padded / truncated to the shorter of the tokenizer's
    ``model_max_length`` and the model's ``max_position_embeddings``)."""
    from jaxvedit.models.clip import tokenize

    n = min(int(tokenizer.model_max_length), int(text_model.config.max_position_embeddings))
    ids = tokenize(tokenizer, prompts, max_length=n)
    return _normalise(_apply_batched(text_model, "text_embeds", ids, len(ids)))


def clip_frame_consistency(frames, vision_model: Any, *, batch_size: int = 16) -> float:
    """Mean cosine similarity of consecutive frames' CLIP image embeddings (in [-1, 1]; 1 for
    a static video)."""
    if np.shape(frames)[0] < 2:
        raise ValueError(f"frame consistency needs at least 2 frames, got {np.shape(frames)[0]}")
    e = clip_image_embeddings(frames, vision_model, batch_size=batch_size)
    return float(np.mean(np.sum(e[1:] * e[:-1], axis=-1)))


def clip_text_alignment(frames, prompt: str, text_model: Any, vision_model: Any, tokenizer: Any, *,
                        batch_size: int = 16) -> float:
    """Mean over frames of the cosine similarity between the frame's CLIP image embedding and
    the prompt's text embedding (raw cosine; "CLIP score" papers often report 100x this)."""
    img = clip_image_embeddings(frames, vision_model, batch_size=batch_size)
    txt = clip_text_embeddings([prompt], text_model, tokenizer)[0]
    return float(np.mean(img @ txt))
