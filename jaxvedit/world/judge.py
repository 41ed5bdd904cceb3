"""A classifier for the world's attributes, built from the renderer (not learned, not the
generative model judging itself).

- **colour**: backgrounds are achromatic, objects saturated; a pixel's colour is the palette
  colour whose chroma direction (``rgb - mean(rgb)``) is closest in angle. Shading multiplies a
  colour by a scalar, so the chroma direction is shading-invariant.
- **shape**: the mask of the pixels of the object's colour is compared (IoU) with each shape's
  own mask rendered by the renderer's SDFs at the mask's centroid and at the size that gives the
  mask's area; the best match wins.
- **background**: the pixels away from every object are compared (mean absolute difference)
  with each background rendered by the renderer; the nearest wins.

All functions take float frames in [0, 1] or uint8 frames, ``(H, W, 3)`` or ``(T, H, W, 3)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.world.render import background_value, pixel_centres, shape_sdf
from jaxvedit.world.scene import BACKGROUNDS, COLOURS, SHAPES

SATURATION_MIN = 0.18  # max - min over channels above which a pixel counts as coloured
_PALETTE = np.array(list(COLOURS.values()), np.float64)
_CHROMA = _PALETTE - _PALETTE.mean(axis=1, keepdims=True)
_CHROMA /= np.linalg.norm(_CHROMA, axis=1, keepdims=True)


def as_float(frames) -> np.ndarray:
    a = np.asarray(frames)
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def saturation(frame) -> np.ndarray:
    f = as_float(frame)
    return f.max(axis=-1) - f.min(axis=-1)


def colour_index_map(frame) -> np.ndarray:
    """``(H, W)`` int: each pixel's nearest palette colour by chroma angle; -1 where unsaturated."""
    f = as_float(frame)
    chroma = f - f.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(chroma, axis=-1)
    idx = np.argmax(chroma @ _CHROMA.T / np.maximum(norm, 1e-9)[..., None], axis=-1)
    return np.where(saturation(f) >= SATURATION_MIN, idx, -1)


def classify_colour(frame, region: np.ndarray | None = None) -> str | None:
    """Majority palette colour of the coloured pixels (inside ``region`` if given); None if the
    frame (region) has fewer than 10 coloured pixels."""
    idx = colour_index_map(frame)
    if region is not None:
        idx = np.where(region, idx, -1)
    counts = np.bincount(idx[idx >= 0], minlength=len(COLOURS))
    return None if counts.sum() < 10 else list(COLOURS)[int(np.argmax(counts))]


def colour_mask(frame, colour: str) -> np.ndarray:
    """``(H, W)`` bool: the pixels classified as ``colour``."""
    return colour_index_map(frame) == list(COLOURS).index(colour)


@functools.lru_cache(maxsize=None)
def _unit_areas() -> np.ndarray:
    """Area of each shape at size 1 (shape units), measured on a fine grid."""
    n = 801
    g = np.linspace(-2, 2, n)
    u = jnp.asarray(np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2), jnp.float32)
    cell = (4.0 / (n - 1)) ** 2
    return np.array([float(jnp.sum(shape_sdf(i, u) <= 0)) * cell for i in range(len(SHAPES))])


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _shape_masks(centre, scales, *, height: int, width: int):
    xy = pixel_centres(height, width)

    def one(i):
        u = (xy - centre) / scales[i]
        return (shape_sdf(i, u) * scales[i] <= 0.0).reshape(height, width)

    return jax.vmap(one)(jnp.arange(len(SHAPES)))


def shape_scores(mask: np.ndarray) -> np.ndarray | None:
    """IoU of ``mask`` with each shape placed at its centroid with its area (best of three sizes
    around it); None for masks under 20 pixels."""
    mask = np.asarray(mask, bool)
    area = mask.sum()
    if area < 20:
        return None
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    centre = jnp.asarray([xs.mean() + 0.5, ys.mean() + 0.5], jnp.float32)
    best = np.zeros(len(SHAPES))
    for f in (0.92, 1.0, 1.08):
        scales = jnp.asarray(np.sqrt(area / _unit_areas()) * f, jnp.float32)
        tpl = np.asarray(_shape_masks(centre, scales, height=h, width=w))
        inter = (tpl & mask[None]).sum(axis=(1, 2))
        union = (tpl | mask[None]).sum(axis=(1, 2))
        best = np.maximum(best, inter / np.maximum(union, 1))
    return best


def classify_shape(mask: np.ndarray) -> str | None:
    scores = shape_scores(mask)
    return None if scores is None else SHAPES[int(np.argmax(scores))]


@functools.partial(jax.jit, static_argnames=("size",))
def _backgrounds(*, size: int):
    xy = pixel_centres(size, size)
    return jnp.stack([background_value(k, xy, size).reshape(size, size)
                      for k in range(len(BACKGROUNDS))])


def classify_background(frame, away_from_objects: np.ndarray | None = None) -> str:
    """The background whose rendering is nearest to the frame's grey level on the pixels
    ``away_from_objects`` (default: the unsaturated pixels)."""
    f = as_float(frame)
    h, w = f.shape[:2]
    if h != w:
        raise ValueError(f"world frames are square, got {h}x{w}")
    grey = f.mean(axis=-1)
    region = saturation(f) < SATURATION_MIN if away_from_objects is None else away_from_objects
    if region.sum() == 0:
        region = np.ones_like(grey, bool)
    tpl = np.asarray(_backgrounds(size=h))
    err = np.abs(tpl - grey[None])[:, region].mean(axis=1)
    return BACKGROUNDS[int(np.argmax(-err))]


def judge_frame(frame, *, colour: str | None = None) -> dict:
    """``{"colour", "shape", "background"}`` of a frame's main object: the majority colour (or
    the given ``colour``) and the shape of its mask."""
    col = colour or classify_colour(frame)
    shape = classify_shape(colour_mask(frame, col)) if col is not None else None
    return {"colour": classify_colour(frame) if colour is None else col, "shape": shape,
            "background": classify_background(frame)}
