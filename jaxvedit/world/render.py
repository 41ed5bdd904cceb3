"""The renderer: a scene's frames and their ground truth, as one jit-compiled JAX program.

Everything is evaluated at points: :func:`evaluate_points` gives the colour, depth and per-object
visibility of any continuous points of frame ``t``, and an image is that evaluation at the pixel
centres. Shapes are signed distance functions (exact SDFs of a circle, square, equilateral
triangle, five-pointed star and diamond); an edge pixel's coverage is ``clip(0.5 - sdf_px, 0, 1)``
(one-pixel anti-aliasing). Each object carries a radial shading ``1 - 0.22 |u|^2`` in its own
coordinates ``u`` (so its texture moves with it and the flow is checkable inside it).

Ground truth per frame: visible and amodal object masks, the layer map (0 = background, k = the
k-th object, drawn back to front), a depth map (disparity-like: larger is nearer; the background
is a receding plane, objects are domes in front of it) and the forward optical flow from frame
``t`` to ``t + 1`` with its validity mask (pixels fully covered by one layer whose destination is
inside the frame and fully covered by the same layer in frame ``t + 1``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.world.scene import BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, SceneSpec, trajectories

SHADING = 0.22


# ----------------------------------------------------------------------------------------------
# scene -> arrays


def scene_arrays(spec: SceneSpec) -> dict[str, np.ndarray]:
    """The renderer's inputs: fixed-size arrays (objects padded to ``MAX_OBJECTS``)."""
    n = len(spec.objects)
    traj = np.zeros((spec.frames, MAX_OBJECTS, 3), np.float32)
    traj[:, :, 2] = 1.0
    traj[:, :n] = trajectories(spec)
    pad = MAX_OBJECTS - n
    return {
        "background": np.int32(BACKGROUNDS.index(spec.background)),
        "shape": np.array([SHAPES.index(o.shape) for o in spec.objects] + [0] * pad, np.int32),
        "rgb": np.array([o.rgb for o in spec.objects] + [(0.0, 0.0, 0.0)] * pad, np.float32),
        "size": np.array([o.size for o in spec.objects] + [1.0] * pad, np.float32),
        "present": np.array([1.0] * n + [0.0] * pad, np.float32),
        "traj": traj,
    }


def stack_arrays(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


# ----------------------------------------------------------------------------------------------
# signed distance functions in shape units (y pointing down, as in images)


def _box(u, b):
    q = jnp.abs(u) - b
    outside = jnp.linalg.norm(jnp.maximum(q, 0.0), axis=-1)
    return outside + jnp.minimum(jnp.maximum(q[..., 0], q[..., 1]), 0.0)


def sdf_circle(u):
    return jnp.linalg.norm(u, axis=-1) - 1.0


def sdf_square(u):
    return _box(u, 0.86)


def sdf_diamond(u):
    r = jnp.stack([(u[..., 0] + u[..., 1]), (u[..., 1] - u[..., 0])], axis=-1) / math.sqrt(2.0)
    return _box(r, 0.82)


def sdf_triangle(u, r: float = 1.2):
    """Equilateral triangle, apex up (Inigo Quilez's exact SDF, y flipped)."""
    k = math.sqrt(3.0)
    px = jnp.abs(u[..., 0]) - r
    py = -u[..., 1] + r / k
    fold = px + k * py > 0.0
    px, py = jnp.where(fold, (px - k * py) / 2.0, px), jnp.where(fold, (-k * px - py) / 2.0, py)
    px = px - jnp.clip(px, -2.0 * r, 0.0)
    return -jnp.sqrt(px * px + py * py) * jnp.sign(py)


def sdf_star(u, r: float = 1.3, rf: float = 0.5):
    """Five-pointed star, a point up (Inigo Quilez's exact SDF, y flipped)."""
    k1 = jnp.array([0.809016994375, -0.587785252292])
    k2 = jnp.array([-0.809016994375, -0.587785252292])
    p = jnp.stack([jnp.abs(u[..., 0]), -u[..., 1]], axis=-1)
    p = p - 2.0 * jnp.maximum(p @ k1, 0.0)[..., None] * k1
    p = p - 2.0 * jnp.maximum(p @ k2, 0.0)[..., None] * k2
    p = jnp.stack([jnp.abs(p[..., 0]), p[..., 1] - r], axis=-1)
    ba = rf * jnp.array([0.587785252292, 0.809016994375]) - jnp.array([0.0, 1.0])
    h = jnp.clip((p @ ba) / (ba @ ba), 0.0, r)
    d = jnp.linalg.norm(p - h[..., None] * ba, axis=-1)
    return d * jnp.sign(p[..., 1] * ba[0] - p[..., 0] * ba[1])


_SDFS = {"circle": sdf_circle, "square": sdf_square, "triangle": sdf_triangle, "star": sdf_star,
         "diamond": sdf_diamond}
assert tuple(_SDFS) == SHAPES


def shape_sdf(shape_index, u):
    """SDF (shape units) of shape ``shape_index`` (traced int) at points ``u (..., 2)``."""
    all_d = jnp.stack([_SDFS[name](u) for name in SHAPES], axis=0)
    return jnp.take(all_d, shape_index, axis=0)


# ----------------------------------------------------------------------------------------------
# backgrounds (static, achromatic, functions of the point and the frame size)


def background_value(kind, xy, size):
    unit = size / 128.0
    x, y = xy[..., 0], xy[..., 1]
    plain = jnp.full(x.shape, 0.80)
    gradient = 0.22 + 0.62 * (y / size)
    stripes = jnp.where(jnp.mod(jnp.floor(y / (8.0 * unit)), 2) == 0, 0.32, 0.80)
    checker = jnp.where(jnp.mod(jnp.floor(x / (16.0 * unit)) + jnp.floor(y / (16.0 * unit)), 2) == 0,
                        0.36, 0.78)
    return jnp.take(jnp.stack([plain, gradient, stripes, checker]), kind, axis=0)


# ----------------------------------------------------------------------------------------------
# evaluation at points


def evaluate_points(arr: dict, t, xy, size: int):
    """Frame ``t`` of the scene ``arr`` at points ``xy (N, 2)`` (x, y in pixels).

    Returns ``rgb (N, 3)``, ``depth (N,)``, ``coverage (N, K)`` (each object's own anti-aliased
    coverage, amodal) and ``visible (N, K)`` (coverage not hidden by objects in front).
    """
    pose = arr["traj"][t]  # (K, 3)
    bgv = background_value(arr["background"], xy, size)
    rgb = jnp.repeat(bgv[:, None], 3, axis=1)
    depth = 0.08 + 0.12 * (xy[:, 1] / size)
    covs, shades = [], []
    for k in range(MAX_OBJECTS):
        scale = arr["size"][k] * pose[k, 2]
        u = (xy - pose[k, :2]) / scale
        d_px = shape_sdf(arr["shape"][k], u) * scale
        cov = jnp.clip(0.5 - d_px, 0.0, 1.0) * arr["present"][k]
        r2 = jnp.minimum(jnp.sum(u * u, axis=-1), 1.6)
        colour = arr["rgb"][k][None, :] * (1.0 - SHADING * r2)[:, None]
        rgb = cov[:, None] * colour + (1.0 - cov[:, None]) * rgb
        obj_depth = 0.55 + 0.25 * k + 0.15 * (1.0 - jnp.minimum(r2, 1.0))
        depth = cov * obj_depth + (1.0 - cov) * depth
        covs.append(cov)
    cov = jnp.stack(covs, axis=-1)
    visible = [cov[:, k] * jnp.prod(1.0 - cov[:, k + 1:], axis=-1) for k in range(MAX_OBJECTS)]
    return rgb, depth, cov, jnp.stack(visible, axis=-1)


def pixel_centres(height: int, width: int) -> jax.Array:
    ys, xs = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
    return jnp.stack([xs, ys], axis=-1).reshape(-1, 2).astype(jnp.float32)


def _layer_of(visible):
    """Top layer index per point: 0 background, k+1 object k (where it is at least half seen)."""
    best = jnp.argmax(visible, axis=-1)
    seen = jnp.take_along_axis(visible, best[:, None], axis=-1)[:, 0] >= 0.5
    return jnp.where(seen, best + 1, 0)


def _full(visible, layer):
    """Whether each point is fully covered by its layer alone (no anti-aliased mixture)."""
    k = jnp.clip(layer - 1, 0, MAX_OBJECTS - 1)
    obj_full = jnp.take_along_axis(visible, k[:, None], axis=-1)[:, 0] >= 1.0
    bg_full = jnp.all(visible <= 0.0, axis=-1)
    return jnp.where(layer == 0, bg_full, obj_full)


def flow_points(arr: dict, t, xy, layer):
    """Forward flow ``(N, 2)`` from frame ``t`` to ``t + 1`` of points ``xy`` on ``layer``:
    an object point moves with its object's centre and scale, a background point stays."""
    p0, p1 = arr["traj"][t], arr["traj"][t + 1]
    k = jnp.clip(layer - 1, 0, MAX_OBJECTS - 1)
    c0, c1 = p0[k, :2], p1[k, :2]
    ratio = (p1[k, 2] / p0[k, 2])[:, None]
    moved = c1 + ratio * (xy - c0) - xy
    return jnp.where((layer > 0)[:, None], moved, 0.0)


@functools.partial(jax.jit, static_argnames=("frames", "size"))
def _render(arr, *, frames: int, size: int):
    xy = pixel_centres(size, size)

    def frame(t):
        rgb, depth, cov, vis = evaluate_points(arr, t, xy, size)
        return rgb, depth, cov, vis, _layer_of(vis)

    rgb, depth, cov, vis, layer = jax.vmap(frame)(jnp.arange(frames))

    def flow(t):
        f = flow_points(arr, t, xy, layer[t])
        dest = xy + f
        inside = jnp.all((dest >= 0.0) & (dest <= size), axis=-1)
        _, _, _, vis1 = evaluate_points(arr, t + 1, dest, size)
        same = _layer_of(vis1) == layer[t]
        valid = _full(vis[t], layer[t]) & inside & same & _full(vis1, layer[t])
        return f, valid

    if frames > 1:
        fl, valid = jax.vmap(flow)(jnp.arange(frames - 1))
    else:
        fl, valid = jnp.zeros((0, size * size, 2)), jnp.zeros((0, size * size), bool)
    hw = (size, size)
    return {
        "frames": rgb.reshape((frames,) + hw + (3,)),
        "depth": depth.reshape((frames,) + hw),
        "amodal": jnp.moveaxis(cov, -1, 1).reshape((frames, MAX_OBJECTS) + hw),
        "masks": jnp.moveaxis(vis, -1, 1).reshape((frames, MAX_OBJECTS) + hw),
        "layers": layer.reshape((frames,) + hw),
        "flow": fl.reshape((frames - 1,) + hw + (2,)),
        "flow_valid": valid.reshape((frames - 1,) + hw),
    }


@functools.partial(jax.jit, static_argnames=("size",))
def render_frames_batch(arr, t, *, size: int):
    """Frames ``t (B,)`` of a batch of scenes ``arr`` (leading axis B): ``(B, size, size, 3)``
    float32 in [0, 1]. The training programs render on the fly with this."""
    xy = pixel_centres(size, size)

    def one(a, ti):
        return evaluate_points(a, ti, xy, size)[0].reshape(size, size, 3)

    return jax.vmap(one)(arr, t)


def to_uint8(frames) -> np.ndarray:
    return np.clip(np.rint(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Rendered:
    """A rendered scene: uint8 frames and every ground-truth map (NumPy)."""

    spec: SceneSpec
    frames: np.ndarray  # (T, H, W, 3) uint8
    frames_float: np.ndarray  # (T, H, W, 3) float32 in [0, 1] (before quantisation)
    masks: np.ndarray  # (T, n_objects, H, W) float visible coverage
    amodal: np.ndarray  # (T, n_objects, H, W) float own coverage (hidden parts included)
    layers: np.ndarray  # (T, H, W) int: 0 background, k = object k-1
    depth: np.ndarray  # (T, H, W) float in [0, 1], larger = nearer
    flow: np.ndarray  # (T-1, H, W, 2) forward flow (dx, dy) in pixels
    flow_valid: np.ndarray  # (T-1, H, W) bool: non-occluded, fully covered, stays in frame

    @property
    def background_mask(self) -> np.ndarray:
        """``(T, H, W)`` bool: pixels outside every object's (anti-aliased) coverage."""
        return np.all(self.amodal <= 0.0, axis=1)


def render(spec: SceneSpec) -> Rendered:
    """Render ``spec`` with its ground truth."""
    out = jax.device_get(_render(scene_arrays(spec), frames=spec.frames, size=spec.size))
    n = len(spec.objects)
    return Rendered(spec, to_uint8(out["frames"]), np.asarray(out["frames"], np.float32),
                    out["masks"][:, :n], out["amodal"][:, :n], out["layers"].astype(np.int32),
                    out["depth"], out["flow"], out["flow_valid"])


def evaluate(spec: SceneSpec, t: int, xy: np.ndarray):
    """NumPy convenience: ``(rgb, depth, coverage, visible)`` of frame ``t`` at points ``xy``."""
    arr = scene_arrays(spec)
    res = jax.jit(evaluate_points, static_argnames=("size",))(arr, t, jnp.asarray(xy, jnp.float32),
                                                             size=spec.size)
    return tuple(np.asarray(r) for r in res)
