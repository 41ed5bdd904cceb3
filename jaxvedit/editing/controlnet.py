"""Depth-ControlNet editing: the source's depth maps (``--depth auto`` computed and cached, or
``--depth FOLDER`` read), and the ControlNet-conditioned predictors of an edit.

As in the authors' pipeline the ControlNet conditions both the inversion (with the source
prompt) and the sampling (with the target prompt) on the *source* video's depth maps (the edit
keeps the source's structure); ``control_inversion=False`` leaves the inversion plain.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from jaxvedit.diffusion.control import (ControlNetPredictor, check_guidance_window,
                                        control_keep_table, prepare_control_image)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_depth_cache() -> Path:
    """``$JAXVEDIT_CACHE/depth`` or ``~/.cache/jaxvedit/depth`` (``$XDG_CACHE_HOME`` honoured)."""
    from jaxvedit.models.loading import cache_root

    return cache_root() / "depth"


def auto_depth(frames: np.ndarray, *, model: str, normalize: str = "frame",
               cache_dir: str | os.PathLike | None = None, log=_log) -> np.ndarray:
    """Depth maps of ``frames`` (uint8 ``(T, H, W, 3)``), computed with ``model`` once and then
    read from the cache. The key hashes the frames' bytes (any other source, frame selection or
    resolution is another key), the depth model's files and ``normalize``."""
    from jaxvedit.models.depth import _fingerprint, compute_depth
    from jaxvedit.models.depth_anything import resolve_depth_folder

    frames = np.ascontiguousarray(np.asarray(frames, np.uint8))
    folder = resolve_depth_folder(model)
    h = hashlib.sha1(frames.tobytes())
    h.update(json.dumps([frames.shape, _fingerprint(folder), normalize]).encode())
    cache = Path(cache_dir) if cache_dir else default_depth_cache()
    path = cache / f"depth-{h.hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                maps = z["depth"]
            if maps.shape[:3] == frames.shape[:3]:
                log(f"depth: read {len(maps)} cached depth maps from {path}")
                return maps
        except Exception as err:  # a damaged entry is recomputed
            log(f"depth cache entry {path} unreadable ({err}); recomputing")
    log(f"depth: estimating {len(frames)} depth maps with {model}")
    maps = compute_depth(frames, model=str(model), normalize=normalize)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, depth=maps)
    os.replace(tmp, path)
    return maps


def read_depth_maps(path: str | os.PathLike, *, num_frames: int, source_size: tuple[int, int],
                    resolution: int, start: int = 0, stop: int | None = None, stride: int = 1,
                    max_frames: int | None = None) -> np.ndarray:
    """Depth maps from a folder of images or a video, one per *source* frame: the edit's frame
    selection (``start``/``stop``/``stride``/``max_frames``) and resize + center crop apply to
    them as to the source. Count and size are checked against the selected source frames."""
    from jaxvedit.data.video import read_video, resize_center_crop
    from jaxvedit.models.depth import check_depth_maps

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--depth {p}: no such folder or video of depth maps (or use "
                                "--depth auto)")
    maps = read_video(p, start=start, stop=stop, stride=stride, max_frames=max_frames).frames
    check_depth_maps(maps, num_frames, source_size, f"--depth {p}")
    return resize_center_crop(maps, resolution)


def source_depth(cfg, frames: np.ndarray, log=_log) -> np.ndarray | None:
    """The conditioning depth maps of an edit as configured (``EditConfig`` / ``CompareConfig``
    fields ``controlnet``, ``depth``, ``depth_model``, ``depth_cache``, ``video``, selection)."""
    if getattr(cfg, "controlnet", None) is None:
        if getattr(cfg, "depth", None):
            raise ValueError("--depth is given but no --controlnet: depth maps only condition a "
                             "ControlNet")
        return None
    if not cfg.depth:
        raise ValueError(f"missing conditioning image: --controlnet {cfg.controlnet} needs depth "
                         "maps: --depth auto (estimated) or --depth FOLDER (one map per frame)")
    if cfg.depth == "auto":
        return auto_depth(frames, model=cfg.depth_model, cache_dir=cfg.depth_cache, log=log)
    from jaxvedit.data.video import probe_video

    info = probe_video(cfg.video, fps=cfg.fps)
    return read_depth_maps(cfg.depth, num_frames=len(frames), source_size=(info.height, info.width),
                           resolution=cfg.resolution, start=cfg.start, stop=cfg.stop,
                           stride=cfg.stride, max_frames=cfg.max_frames)


class EditControl:
    """The ControlNet side of one edit: conditioning images checked against the frames, the
    keep table of the control guidance window, and the wrapped predictors (one per chunk size;
    :meth:`set_chunk` puts the chunk's depth maps in)."""

    def __init__(self, controlnet, control, *, num_frames: int, frame_size: tuple[int, int],
                 schedule, steps: int, conditioning_scale: float = 1.0, guess_mode: bool = False,
                 start: float = 0.0, end: float = 1.0, inversion: bool = True):
        if controlnet is None:
            if control is not None:
                raise ValueError("conditioning images given but the editor has no ControlNet "
                                 "(Editor(..., controlnet=PATH))")
            raise ValueError("EditControl needs a ControlNet")
        check_guidance_window(start, end)
        self.cond = prepare_control_image(control, size=tuple(frame_size))
        if len(self.cond) != num_frames:
            raise ValueError(f"{len(self.cond)} conditioning image(s) for {num_frames} frame(s): "
                             "one depth map per frame is needed")
        self.controlnet = controlnet
        self.keep = control_keep_table(schedule, steps, start, end)
        self.scale, self.guess_mode, self.inversion = float(conditioning_scale), bool(guess_mode), inversion
        self._pred = None

    def wrap(self, pred):
        """``(inversion predictor, sampling predictor)`` around the editor's ``pred``."""
        self._pred = ControlNetPredictor(pred, self.controlnet, self.cond[:1],
                                         conditioning_scale=self.scale, guess_mode=self.guess_mode,
                                         keep_table=self.keep)
        return (self._pred if self.inversion else pred), self._pred

    def set_chunk(self, idx) -> None:
        self._pred.set_condition(self.cond[np.asarray(idx)])


def edit_with_controlnet(editor, frames: np.ndarray, source_prompt: str, prompt: str, *,
                         depth="auto", depth_model: str | None = None, depth_cache=None,
                         **options) -> np.ndarray:
    """Benchmark-row form: ``(editor, frames (T, H, W, 3) uint8, source_prompt, prompt) ->
    edited frames``. ``editor``: a :class:`~jaxvedit.editing.pipeline.Editor` loaded with
    ``controlnet=``; ``depth``: ``"auto"`` or uint8 / ``[0, 1]`` maps ``(T, H, W[, 3])`` (e.g.
    the renderer's ground truth); ``options``: :meth:`Editor.edit` keywords
    (``controlnet_scale``, ``guess_mode``, ``control_start``, ``control_end``, ``steps``, ...)."""
    from jaxvedit.models.depth_anything import DEFAULT_DEPTH_MODEL

    if isinstance(depth, str):
        if depth != "auto":
            raise ValueError(f"depth must be 'auto' or an array of maps, got {depth!r}")
        depth = auto_depth(frames, model=depth_model or DEFAULT_DEPTH_MODEL, cache_dir=depth_cache)
    res = editor.edit(frames, prompt=prompt, source_prompt=source_prompt, control=depth, **options)
    return res.frames
