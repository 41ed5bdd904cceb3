"""Depth maps for a depth ControlNet: the image processor of Depth Anything, the estimator, and
``compute_depth(frames) -> depth maps``.

Pre-processing is transformers' ``DPTImageProcessor`` as Depth Anything configures it
(``preprocessor_config.json``): resize to 518 (keeping the aspect ratio, each side a multiple of
14, the side that changes least decides: ``keep_aspect_ratio``, ``ensure_multiple_of``) with
PIL's bicubic filter, rescale by 1/255, normalise with the ImageNet mean/std. This is exactly the
PIL backend (``DPTImageProcessorPil``, what transformers uses without torchvision); the
torchvision backend resizes with torch's antialiased bicubic and differs by at most a grey
level or two on some pixels.

Post-processing is the ``depth-estimation`` pipeline's: the predicted relative depth is resized
back to the frame size (``post_process_depth_estimation``: bicubic, ``align_corners=False``),
min-max normalised and scaled to 0..255 (truncated to uint8), replicated to three channels: the
conditioning image format of SD1.5 depth ControlNets (``lllyasviel/sd-controlnet-depth``,
``control_v11f1p_sd15_depth``), near = bright. ``normalize="frame"`` (the pipeline's, per frame)
or ``"clip"`` (one min/max over the whole clip: no frame-to-frame flicker of the depth scale).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.models.depth_anything import DEFAULT_DEPTH_MODEL, load_depth_model, resolve_depth_folder
from jaxvedit.models.resize import interpolate

NORMALIZE = ("frame", "clip")


@dataclass(frozen=True)
class DepthProcessorConfig:
    """The ``preprocessor_config.json`` keys of Depth Anything's ``DPTImageProcessor``."""

    size: tuple = (518, 518)
    keep_aspect_ratio: bool = True
    ensure_multiple_of: int = 14
    resample: int = 3  # PIL bicubic
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, raw: dict) -> "DepthProcessorConfig":
        size = raw.get("size", {"height": 518, "width": 518})
        if isinstance(size, dict):
            if "height" not in size or "width" not in size:
                raise ValueError(f"depth processor size {size} must give height and width")
            size = (int(size["height"]), int(size["width"]))
        elif isinstance(size, int):
            size = (size, size)
        if raw.get("do_pad"):
            raise ValueError("depth processor do_pad=True is not supported (Depth Anything does not pad)")
        if raw.get("do_center_crop"):
            raise ValueError("depth processor do_center_crop=True is not supported")
        return cls(size=tuple(size), keep_aspect_ratio=bool(raw.get("keep_aspect_ratio", False)),
                   ensure_multiple_of=int(raw.get("ensure_multiple_of", 1) or 1),
                   resample=int(raw.get("resample", 3)), do_resize=bool(raw.get("do_resize", True)),
                   do_rescale=bool(raw.get("do_rescale", True)),
                   rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(raw.get("do_normalize", True)),
                   image_mean=tuple(raw.get("image_mean", (0.485, 0.456, 0.406))),
                   image_std=tuple(raw.get("image_std", (0.229, 0.224, 0.225))))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "DepthProcessorConfig":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():  # older hub copies may lack it: Depth Anything's values
            return cls()
        return cls.from_dict(json.loads(path.read_text()))


def _constrain(val: float, multiple: int) -> int:
    x = round(val / multiple) * multiple  # Python's round, as transformers
    if x < 0:
        x = math.ceil(val / multiple) * multiple
    return int(x)


class DepthProcessor:
    """``pixel_values (T, h, w, 3)`` float32 from uint8 frames ``(T, H, W, 3)``."""

    def __init__(self, config: DepthProcessorConfig | None = None):
        self.config = config or DepthProcessorConfig()

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' DPT ``get_resize_output_image_size``."""
        cfg = self.config
        if not cfg.do_resize:
            return height, width
        sh, sw = cfg.size[0] / height, cfg.size[1] / width
        if cfg.keep_aspect_ratio:
            if abs(1 - sw) < abs(1 - sh):
                sh = sw
            else:
                sw = sh
        return (_constrain(sh * height, cfg.ensure_multiple_of),
                _constrain(sw * width, cfg.ensure_multiple_of))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        from PIL import Image

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"depth estimation needs uint8 RGB frames (T, H, W, 3), got "
                             f"{frames.dtype} {frames.shape}")
        cfg = self.config
        h, w = self.output_size(*frames.shape[1:3])
        if (h, w) != frames.shape[1:3]:
            frames = np.stack([np.asarray(Image.fromarray(f).resize((w, h), resample=cfg.resample))
                               for f in frames])
        x = frames.astype(np.float32)
        if cfg.do_rescale:
            x = x * np.float32(cfg.rescale_factor)
        if cfg.do_normalize:
            x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
        return x.astype(np.float32)


def depth_to_image(depth, normalize: str = "frame") -> np.ndarray:
    """Relative depth ``(T, H, W)`` -> uint8 ``(T, H, W, 3)`` conditioning images (the depth
    pipeline's ``(d - min) / (max - min) * 255`` truncated; constant depth gives zeros)."""
    if normalize not in NORMALIZE:
        raise ValueError(f"depth normalize must be one of {NORMALIZE}, got {normalize!r}")
    d = np.asarray(depth, np.float32)
    axes = (1, 2) if normalize == "frame" else (0, 1, 2)
    lo, hi = d.min(axis=axes, keepdims=True), d.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    img = ((d - lo) / span * 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1)


def _fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors"))
    ident = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha1(json.dumps([str(folder.resolve()), ident]).encode()).hexdigest()[:16]


class DepthEstimator:
    """A loaded Depth Anything model and its processor.

    ``estimator.predict(frames)``: relative depth ``(T, H, W)`` float32 at the frames' size;
    ``estimator(frames)``: uint8 conditioning images (:func:`depth_to_image`).
    Frames go through the model in batches of ``batch`` (one compiled program per frame size).
    """

    def __init__(self, source: str | os.PathLike = DEFAULT_DEPTH_MODEL, *, batch: int = 8,
                 dtype=jnp.float32):
        folder = resolve_depth_folder(source)
        self.source = str(source)
        self.model = load_depth_model(folder, dtype=dtype)
        self.processor = DepthProcessor(DepthProcessorConfig.from_folder(folder))
        self.batch = max(1, int(batch))
        self.fingerprint = _fingerprint(folder)
        graphdef, state = nnx.split(self.model)

        def run(state, x, size):
            depth = nnx.merge(graphdef, state)(x)
            # post_process_depth_estimation: bicubic back to the frame size
            return interpolate(depth[..., None], size, mode="bicubic", align_corners=False)[..., 0]

        self._state = state
        self._run = jax.jit(run, static_argnums=2)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        size = tuple(frames.shape[1:3])
        x = self.processor(frames)
        out = []
        for i in range(0, len(x), self.batch):
            part = x[i:i + self.batch]
            pad = self.batch - len(part) if len(x) > self.batch else 0
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            out.append(np.asarray(self._run(self._state, jnp.asarray(part), size))[:len(part) - pad])
        return np.concatenate(out)

    def __call__(self, frames: np.ndarray, normalize: str = "frame") -> np.ndarray:
        return depth_to_image(self.predict(frames), normalize)


@functools.lru_cache(maxsize=2)
def get_depth_estimator(source: str = DEFAULT_DEPTH_MODEL) -> DepthEstimator:
    """One :class:`DepthEstimator` per model source and process (loading is the slow part)."""
    return DepthEstimator(source)


def compute_depth(frames: np.ndarray, *, model: str = DEFAULT_DEPTH_MODEL,
                  normalize: str = "frame", estimator: DepthEstimator | None = None) -> np.ndarray:
    """Depth maps of ``frames (T, H, W, 3) uint8``: ``(T, H, W, 3)`` uint8 conditioning images.

    The training-data hook: a data store calls this once per video and caches the result.
    ``model``: a Depth Anything transformers folder or hub id (default
    :data:`~jaxvedit.models.depth_anything.DEFAULT_DEPTH_MODEL`)."""
    est = estimator if estimator is not None else get_depth_estimator(str(model))
    return est(frames, normalize)


def check_depth_maps(depth: np.ndarray, num_frames: int, frame_size: tuple[int, int],
                     what: str = "depth maps") -> None:
    """Depth maps given as files must match the video: one map per frame, and the frames' size
    (or the same aspect ratio, so that the same resize and center crop line them up)."""
    depth = np.asarray(depth)
    if depth.ndim not in (3, 4):
        raise ValueError(f"{what}: expected (T, H, W[, C]) maps, got shape {depth.shape}")
    if len(depth) != num_frames:
        raise ValueError(f"{what}: {len(depth)} depth map(s) for {num_frames} video frame(s) "
                         "(one map per frame is needed)")
    dh, dw = depth.shape[1:3]
    fh, fw = frame_size
    if (dh, dw) != (fh, fw) and abs(dh * fw - dw * fh) > max(dh, dw, fh, fw):
        raise ValueError(f"{what}: maps of size {dh}x{dw} do not match the video frames' "
                         f"{fh}x{fw} (another aspect ratio: they would not line up)")
