"""Video-caption datasets for adapter training: annotation formats, latent cache, clip sampling.

Two layouts are read (see ``docs/training.md``):

* ``captions.jsonl``: one JSON object a line, ``{"video": "relative/or/absolute.mp4",
  "caption": "..."}``; several lines may name the same video (its captions are pooled).
* MSR-VTT: an annotation JSON with ``"sentences": [{"video_id": "video0", "caption": ...}]``
  (20 a clip; e.g. ``train_val_videodatainfo.json`` or ``MSRVTT_data.json``) and the videos as
  ``{video_id}.mp4`` in ``videos/``, ``TrainValVideo/``, ``videos/all/`` or the folder itself.

Optional depth maps (for a depth ControlNet) are read from ``depth/{video stem}`` (a video file
of any container or a folder of frames) when present.

Each usable video is decoded once (at most ``max_frames`` frames), resized and center-cropped,
encoded by the frozen encoders (VAE latents, and CLIP vision hidden states for the unshared
prompt tokens) and cached on disk as ``.npz``. The cache key hashes the video's path, size and
modification time, the preprocessing settings and the encoders' fingerprint: a changed source
or setting gives a new key, so stale entries are never read. A video that is missing, does not
decode, or is shorter than one clip is reported and skipped; only when no video is usable is
it an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxvedit.data import video as vio

_VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif")
_MSRVTT_VIDEO_DIRS = ("videos", "TrainValVideo", "videos/all", "TestVideo", ".")


class DatasetError(ValueError):
    """The dataset cannot be used at all (no folder, no annotations, no usable video)."""


@dataclasses.dataclass
class VideoRecord:
    path: Path
    captions: list[str]
    depth: Path | None = None


def _depth_for(folder: Path, video: Path) -> Path | None:
    depth_dir = folder / "depth"
    if not depth_dir.is_dir():
        return None
    if (depth_dir / video.stem).is_dir():
        return depth_dir / video.stem
    for ext in _VIDEO_EXTS:
        if (depth_dir / (video.stem + ext)).is_file():
            return depth_dir / (video.stem + ext)
    return None


def _read_jsonl(folder: Path, path: Path) -> list[VideoRecord]:
    by_video: dict[Path, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or "video" not in row or "caption" not in row:
                raise DatasetError(f"{path}:{lineno}: each line needs 'video' and 'caption' keys")
            video = Path(row["video"])
            video = video if video.is_absolute() else folder / video
            by_video.setdefault(video, []).append(str(row["caption"]))
    return [VideoRecord(v, caps, _depth_for(folder, v)) for v, caps in by_video.items()]


def _find_msrvtt_json(folder: Path) -> Path | None:
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("annotation*/*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                head = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(head, dict) and isinstance(head.get("sentences"), list):
            return path
    return None


def _read_msrvtt(folder: Path, path: Path) -> list[VideoRecord]:
    with open(path, encoding="utf-8") as f:
        ann = json.load(f)
    captions: dict[str, list[str]] = {}
    for s in ann["sentences"]:
        captions.setdefault(str(s["video_id"]), []).append(str(s["caption"]))
    video_dir = next((folder / d for d in _MSRVTT_VIDEO_DIRS
                      if (folder / d).is_dir() and any((folder / d).glob("*.mp4"))), folder / "videos")
    records = []
    for vid, caps in captions.items():
        v = video_dir / f"{vid}.mp4"
        records.append(VideoRecord(v, caps, _depth_for(folder, v)))
    return records


def find_records(folder: str | os.PathLike) -> tuple[list[VideoRecord], str]:
    """The dataset's videos and captions, and which layout was found."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"data folder not found: {folder}")
    if (folder / "captions.jsonl").is_file():
        return _read_jsonl(folder, folder / "captions.jsonl"), "captions.jsonl"
    ann = _find_msrvtt_json(folder)
    if ann is not None:
        return _read_msrvtt(folder, ann), f"MSR-VTT ({ann.name})"
    raise DatasetError(f"no captions.jsonl or MSR-VTT annotation JSON (with a 'sentences' list) "
                       f"in data folder {folder}")


@dataclasses.dataclass
class Encoders:
    """Frozen per-frame encoders the cache stores the outputs of.

    ``latents(frames_uint8 (N, H, W, 3)) -> (N, h, w, 4)`` scaled VAE latents;
    ``vision(frames_uint8) -> (N, L, D)`` CLIP vision hidden states, or None when unused;
    ``fingerprint``: identifies the encoders' weights (part of the cache key).
    """

    latents: Callable[[np.ndarray], np.ndarray]
    vision: Callable[[np.ndarray], np.ndarray] | None
    fingerprint: str


@dataclasses.dataclass
class CachedVideo:
    record: VideoRecord
    latents: np.ndarray  # (N, h, w, 4) float32
    vision: np.ndarray | None  # (N, L, D) float32
    depth: np.ndarray | None  # (N, H, W, 3) uint8, when depth maps were given
    fps: float


def _cache_key(record: VideoRecord, settings: dict, fingerprint: str) -> str:
    st = record.path.stat()
    payload = {"path": str(record.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
               "settings": settings, "encoders": fingerprint}
    if record.depth is not None:
        dst = record.depth.stat()
        payload["depth"] = [str(record.depth.resolve()), dst.st_size, dst.st_mtime_ns]
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ClipDataset:
    """Cached, encoded videos and a deterministic sampler of T-frame clips.

    ``batch(position, batch_size)`` returns the clips of micro-batch number ``position``: the
    draw depends only on ``(seed, position)``, so a resumed run continues with exactly the
    batches an uninterrupted run would have seen.
    """

    def __init__(self, folder, *, encoders: Encoders, frames: int, resolution: int,
                 frame_stride: int = 1, max_frames: int = 64, cache_dir=None, seed: int = 0,
                 log: Callable[[str], None] = print,
                 depth_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        if frames < 3:
            raise ValueError(f"clips need at least 3 frames for the temporal loss, got frames={frames}")
        self.folder = Path(folder)
        records, self.layout = find_records(self.folder)
        self.frames, self.stride, self.seed = frames, frame_stride, seed
        span = vio.clip_span(frames, frame_stride)
        if max_frames < span:
            raise ValueError(f"max_frames={max_frames} is shorter than one clip "
                             f"({frames} frames, stride {frame_stride} span {span})")
        self.cache_dir = Path(cache_dir) if cache_dir else self.folder / ".jaxvedit_cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        settings = {"resolution": resolution, "max_frames": max_frames, "version": 1}
        if depth_fn is not None:  # computed depth maps are part of the cache entry
            settings["depth_fn"] = getattr(depth_fn, "fingerprint", "auto")
        self.videos: list[CachedVideo] = []
        self.skipped: list[str] = []
        self.depth_problems: dict[str, str] = {}  # video -> why its depth maps were not used
        hits = 0
        for rec in records:
            if not rec.path.exists():  # a video file or a folder of frames
                self._skip(log, f"{rec.path}: listed in the annotations but the video file is missing")
                continue
            key = _cache_key(rec, settings, encoders.fingerprint)
            cache_file = self.cache_dir / f"{rec.path.stem}-{key}.npz"
            if cache_file.is_file():
                try:
                    cached = self._load_cache(cache_file, rec)
                except Exception as err:  # a damaged cache entry is rebuilt
                    log(f"cache entry {cache_file.name} unreadable ({err}); re-encoding")
                else:
                    hits += 1
                    if len(cached.latents) < span:
                        self._skip(log, self._too_short(rec, len(cached.latents), span))
                    else:
                        self.videos.append(cached)
                    continue
            try:
                video = vio.read_video(rec.path, max_frames=max_frames)
            except Exception as err:
                self._skip(log, f"{rec.path}: does not decode ({err})")
                continue
            if video.num_frames < span:
                self._skip(log, self._too_short(rec, video.num_frames, span))
                continue
            frames_rgb = vio.resize_center_crop(video.frames, resolution)
            depth = None
            if rec.depth is not None:
                try:
                    from jaxvedit.models.depth import check_depth_maps

                    d = vio.read_video(rec.depth, max_frames=max_frames).frames
                    check_depth_maps(d, video.num_frames, video.frames.shape[1:3], str(rec.depth))
                    depth = vio.resize_center_crop(d, resolution)
                except Exception as err:
                    self.depth_problems[str(rec.path)] = str(err)
                    log(f"{rec.depth}: depth maps unusable ({err}); training without them")
            if depth is None and depth_fn is not None:  # --depth auto
                depth = np.asarray(depth_fn(frames_rgb), np.uint8)
            lat = np.asarray(encoders.latents(frames_rgb), np.float32)
            vis = None if encoders.vision is None else np.asarray(encoders.vision(frames_rgb), np.float32)
            self._write_cache(cache_file, lat, vis, depth, video.fps)
            self.videos.append(CachedVideo(rec, lat, vis, depth, video.fps))
        if not self.videos:
            raise DatasetError(f"no usable video in {self.folder} ({len(self.skipped)} skipped: "
                               + "; ".join(self.skipped[:5]) + ")")
        log(f"dataset {self.folder} ({self.layout}): {len(self.videos)} videos "
            f"({hits} from cache), {len(self.skipped)} skipped")

    def _too_short(self, rec: VideoRecord, n: int, span: int) -> str:
        return (f"{rec.path}: has {n} frames, fewer than one clip of {self.frames} frames "
                f"(stride {self.stride} spans {span})")

    def _skip(self, log, message: str) -> None:
        self.skipped.append(message)
        log(f"skipping {message}")

    @staticmethod
    def _write_cache(path: Path, lat, vis, depth, fps) -> None:
        tmp = path.with_suffix(".tmp.npz")
        arrays = {"latents": lat, "fps": np.asarray(fps, np.float64)}
        if vis is not None:
            arrays["vision"] = vis
        if depth is not None:
            arrays["depth"] = depth
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written entry

    @staticmethod
    def _load_cache(path: Path, rec: VideoRecord) -> CachedVideo:
        with np.load(path) as z:
            return CachedVideo(rec, z["latents"], z["vision"] if "vision" in z else None,
                               z["depth"] if "depth" in z else None, float(z["fps"]))

    @property
    def captions(self) -> list[str]:
        return sorted({c for v in self.videos for c in v.record.captions})

    def batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        """Micro-batch ``position``: ``latents (B, T, h, w, 4)``, ``vision (B, T, L, D)`` (when
        encoded), ``caption_index (B,)`` into :attr:`captions`."""
        rng = np.random.default_rng([self.seed, position])
        index = {c: i for i, c in enumerate(self.captions)}
        lat, vis, cap, dep = [], [], [], []
        for _ in range(batch_size):
            v = self.videos[int(rng.integers(len(self.videos)))]
            starts = vio.sample_clip_starts(len(v.latents), self.frames, self.stride)
            s = int(starts[int(rng.integers(len(starts)))])
            sel = slice(s, s + vio.clip_span(self.frames, self.stride), self.stride)
            lat.append(v.latents[sel])
            if v.vision is not None:
                vis.append(v.vision[sel])
            if v.depth is not None:
                dep.append(v.depth[sel])
            cap.append(index[v.record.captions[int(rng.integers(len(v.record.captions)))]])
        out = {"latents": np.stack(lat), "caption_index": np.asarray(cap, np.int32)}
        if vis:
            out["vision"] = np.stack(vis)
        if dep and len(dep) == batch_size:  # depth maps (B, T, H, W, 3) uint8, for a ControlNet
            out["depth"] = np.stack(dep)
        return out
