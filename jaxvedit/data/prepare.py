"""Prepare a clip store once (``python -m jaxvedit.prepare``): decode every video, encode VAE
latents and CLIP vision hidden states, tokenize the captions, and write sharded records.

The annotation list (``captions.jsonl`` or MSR-VTT, :func:`jaxvedit.data.dataset.find_records`)
is cut into shards of ``videos_per_shard`` consecutive videos. ``--shard i --num-shards n``
splits the *work*: process ``i`` writes the shards ``j`` with ``j % n == i``, so ``n`` processes
or hosts (each its own accelerator) prepare one store together, in one folder. A run is
resumable: a shard whose index exists and whose sources (video files, captions, depth maps) are
unchanged is kept; every other shard of the process is (re)written, atomically. Videos that are
missing, do not decode, or have fewer than ``min_frames`` frames are skipped and listed in the
shard index and in ``report.json``. Depth maps (for a depth ControlNet) are stored gray, one
channel, in the frame records: read from ``depth/<video>`` (checked against the video: one map a
frame, the frames' aspect ratio) or, with ``--depth-model``, computed where none are usable
(:func:`jaxvedit.models.depth.compute_depth`); a video whose maps are unusable is kept without
them, the reason in its index entry (``depth_problem``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from jaxvedit.data import store as st
from jaxvedit.data import video as vio
from jaxvedit.data.dataset import VideoRecord, find_records


def opt(default, help: str, group: str = "options"):
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True)
class PrepareConfig:
    """Decode, encode and tokenize a video dataset once into a sharded clip store (ArrayRecord)
    that python -m jaxvedit.train --data <store> reads with bounded host memory."""

    data: str | None = opt(None, "dataset folder: captions.jsonl or MSR-VTT layout", "data")
    out: str | None = opt(None, "store folder (default: <data>/.jaxvedit_store/<key of model, "
                          "dtype and settings>)", "data")
    model: str | None = opt(None, "SD1.5 weights for the VAE and tokenizer: a diffusers folder, a "
                            "Hugging Face repo id or a single-file checkpoint (with --tokenizer)", "model")
    tokenizer: str | None = opt(None, "tokenizer source for a single-file --model: a folder or repo "
                                "id with tokenizer/ (default: the model folder's)", "model")
    vision_model: str | None = opt(None, "CLIP vision tower for the unshared tokens (default: the "
                                   "model folder's image_encoder/, else openai/clip-vit-base-patch32)",
                                   "model")
    vision: bool = opt(True, "store CLIP vision hidden states of every frame", "model")
    depth: bool = opt(True, "store the depth maps of depth/<video> when the dataset has them", "model")
    depth_model: str | None = opt(None, "compute the depth maps missing from depth/<video> (or "
                                  "unusable there) with this Depth Anything model: transformers "
                                  "folder or repo id (train's --depth auto; default: none computed)",
                                  "model")
    dtype: Literal["bfloat16", "float32"] = opt("bfloat16", "encoder compute dtype and stored dtype "
                                                "of latents and vision states", "model")
    resolution: int = opt(512, "frames are resized and center-cropped to this square size", "video")
    max_frames: int = opt(64, "decode at most this many frames of each video", "video")
    min_frames: int = opt(3, "skip videos with fewer decoded frames (3: the shortest clip the "
                          "temporal loss takes)", "video")
    videos_per_shard: int = opt(256, "videos per shard file (the unit of resuming)", "store")
    compression: str = opt("zstd:1", "ArrayRecord chunk compression: zstd:N, brotli:N, snappy or "
                           "uncompressed", "store")
    shard: int = opt(0, "this process's part of the work: it writes shards j with "
                     "j %% num_shards == shard", "work split")
    num_shards: int = opt(1, "number of processes preparing the store together", "work split")
    batch_frames: int = opt(16, "frames per encoder call", "run")
    progress: bool = opt(True, "show a progress bar", "run")

    def __post_init__(self):
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution} must be a multiple of 8")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"--shard {self.shard} must be in [0, --num-shards {self.num_shards})")
        for name in ("max_frames", "min_frames", "videos_per_shard", "batch_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames={self.min_frames} exceeds max_frames={self.max_frames}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def store_key(encoders_fingerprint: str, cfg: PrepareConfig) -> str:
    """The default store folder's name: a digest of everything the records depend on (the
    encoders, the dtype, the frame settings)."""
    return st.digest({"encoders": encoders_fingerprint, "dtype": cfg.dtype,
                      "resolution": cfg.resolution, "max_frames": cfg.max_frames,
                      "min_frames": cfg.min_frames, "vision": cfg.vision, "depth": cfg.depth,
                      **({"depth_model": depth_model_fingerprint(cfg.depth_model)}
                         if cfg.depth_model else {}), "version": st.VERSION})


def depth_model_fingerprint(source: str | None) -> str | None:
    """The Depth Anything model's fingerprint (its files), part of the store's identity."""
    if source is None:
        return None
    from jaxvedit.models.depth import _fingerprint
    from jaxvedit.models.depth_anything import resolve_depth_folder

    return _fingerprint(resolve_depth_folder(source))


def default_store_path(data: str | os.PathLike, key: str) -> Path:
    return Path(data) / ".jaxvedit_store" / key


def _stat(path: Path | None):
    """Size and mtime of a video file, or of every frame of a frame folder."""
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.iterdir()) if p.is_file()]
    s = path.stat()
    return [s.st_size, s.st_mtime_ns]


def _shard_sources(folder: Path, recs: list[VideoRecord], use_depth: bool) -> str:
    rows = []
    for r in recs:
        rows.append([os.path.relpath(r.path, folder), _stat(r.path), r.captions,
                     [os.path.relpath(r.depth, folder), _stat(r.depth)] if (use_depth and r.depth) else None])
    return st.digest(rows)


def _read_depth(path: Path, max_frames: int, resolution: int, video) -> np.ndarray:
    from jaxvedit.models.depth import check_depth_maps

    d = vio.read_video(path, max_frames=max_frames).frames
    check_depth_maps(d, video.num_frames, video.frames.shape[1:3], str(path))
    return np.ascontiguousarray(vio.resize_center_crop(d, resolution)[:, :, :, :1])  # gray: one channel


class _Skip(Exception):
    pass


def _encode_video(rec: VideoRecord, cfg: PrepareConfig, enc, folder: Path):
    if not rec.path.exists():  # a video file or a folder of frames
        raise _Skip("listed in the annotations but the video file is missing")
    try:
        video = vio.read_video(rec.path, max_frames=cfg.max_frames)
    except Exception as err:  # corrupt, truncated, unknown codec: reported, not fatal
        raise _Skip(f"does not decode ({type(err).__name__}: {err})") from None
    if video.num_frames < cfg.min_frames:
        raise _Skip(f"has {video.num_frames} frames, fewer than --min-frames {cfg.min_frames}")
    frames = vio.resize_center_crop(video.frames, cfg.resolution)
    depth, problem = None, None
    if cfg.depth and rec.depth is not None:
        try:
            depth = _read_depth(rec.depth, cfg.max_frames, cfg.resolution, video)
        except Exception as err:  # the video is kept; a ControlNet run names it (check_depth)
            problem = f"depth maps {rec.depth} unusable ({type(err).__name__}: {err})"
    if depth is None and cfg.depth_model:  # train's --depth auto
        from jaxvedit.models.depth import compute_depth

        depth = np.ascontiguousarray(np.asarray(compute_depth(frames, model=cfg.depth_model),
                                                np.uint8)[..., :1])  # gray, repeated in 3
        problem = None
    lat = enc.latents(frames)
    vis = enc.vision(frames) if enc.vision is not None else None
    ids = enc.tokenize(rec.captions)
    return frames, video.fps, lat, vis, depth, problem, ids


def _write_shard(j: int, recs: list[VideoRecord], cfg: PrepareConfig, enc, out: Path, folder: Path,
                 n_shards: int, sources: str, log, bar) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter

    name = st.shard_name(j, n_shards)
    final = out / f"{name}.array_record"
    tmp = out / f"{name}.array_record.tmp"
    writer = ArrayRecordWriter(str(tmp), f"group_size:1,{cfg.compression}")
    videos, skipped, n_rec = [], [], 0
    try:
        for rec in recs:
            try:
                frames, fps, lat, vis, depth, problem, ids = _encode_video(rec, cfg, enc, folder)
            except _Skip as s:
                skipped.append({"video": str(rec.path), "reason": str(s)})
                log(f"skipping {rec.path}: {s}")
                bar.update()
                continue
            first = n_rec
            for i in range(len(lat)):
                writer.write(st.encode_frame(lat[i], None if vis is None else vis[i],
                                             None if depth is None else depth[i]))
            for cap, tid in zip(rec.captions, ids):
                writer.write(st.encode_caption(tid, cap))
            n_rec += len(lat) + len(rec.captions)
            videos.append({"name": rec.path.stem, "source": os.path.relpath(rec.path, folder),
                           "first": first, "frames": int(len(lat)), "captions": len(rec.captions),
                           "vision": vis is not None, "depth": depth is not None, "fps": float(fps),
                           **({"depth_problem": problem} if problem else {})})
            if problem:
                log(f"{rec.path}: {problem}; kept without depth maps")
            if not (out / st.VALIDATION).is_file():  # the first usable video: validation clip
                _write_validation(out / st.VALIDATION, frames, rec, fps)
            bar.update()
    finally:
        writer.close()
    os.replace(tmp, final)
    index = {"shard": j, "num_shards": n_shards, "sources": sources, "records": n_rec,
             "videos": videos, "skipped": skipped}
    st.write_json_atomic(out / f"{name}.json", index)
    return index


def _write_validation(path: Path, frames, rec: VideoRecord, fps: float, n: int = 16) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, frames=frames[:n], caption=np.asarray(rec.captions[0]), name=np.asarray(rec.path.stem),
             fps=np.asarray(fps))
    os.replace(tmp, path)


def _manifest(cfg: PrepareConfig, enc, records, folder: Path, layout: str) -> dict:
    n_shards = max(1, -(-len(records) // cfg.videos_per_shard))
    has_depth = bool(cfg.depth_model) or (cfg.depth and any(r.depth is not None for r in records))
    return {
        "format": st.FORMAT, "version": st.VERSION,
        "model": enc.model, "vision_model": enc.vision_model, "model_fingerprint": enc.fingerprint,
        "vision_fingerprint": enc.vision_fingerprint,
        "dtype": cfg.dtype, "resolution": cfg.resolution, "max_frames": cfg.max_frames,
        "min_frames": cfg.min_frames, "latent_shape": list(enc.latent_shape),
        "vision_shape": list(enc.vision_shape) if enc.vision_shape else None,
        "depth": has_depth, "depth_shape": [cfg.resolution, cfg.resolution, 1] if has_depth else None,
        "depth_model": cfg.depth_model, "depth_model_fingerprint": depth_model_fingerprint(cfg.depth_model),
        "token_length": enc.token_length, "num_shards": n_shards,
        "videos_per_shard": cfg.videos_per_shard, "num_videos_listed": len(records),
        "sources_fingerprint": st.digest([[os.path.relpath(r.path, folder), r.captions] for r in records]),
        "compression": cfg.compression, "data": str(folder), "layout": layout,
    }


def prepare_store(cfg: PrepareConfig, encoders=None, *, log: Callable[[str], None] = _log) -> dict:
    """Write (or finish) this process's shards of the store; returns a summary."""
    from tqdm.auto import tqdm

    if cfg.data is None:
        raise ValueError("give --data (a folder with captions.jsonl or the MSR-VTT layout)")
    folder = Path(cfg.data)
    records, layout = find_records(folder)
    if encoders is None:
        if cfg.model is None:
            raise ValueError("give --model (the SD1.5 weights whose VAE and tokenizer encode the store)")
        from jaxvedit.data.encoders import build_encoders, resolve_sources

        src = resolve_sources(cfg.model, tokenizer=cfg.tokenizer, vision_model=cfg.vision_model,
                              need_vision=cfg.vision)
        encoders = build_encoders(src, dtype=cfg.dtype, resolution=cfg.resolution,
                                  batch=cfg.batch_frames, model_name=cfg.model)
    if not cfg.vision:
        encoders = dataclasses.replace(encoders, vision=None, vision_shape=None, vision_model=None,
                                       vision_fingerprint=None)
    out = Path(cfg.out) if cfg.out else default_store_path(
        folder, store_key(f"{encoders.fingerprint}/{encoders.vision_fingerprint}", cfg))
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(cfg, encoders, records, folder, layout)
    mf = out / st.MANIFEST
    if mf.is_file():
        old = json.loads(mf.read_text())
        diff = [k for k in st.IDENTITY_KEYS if old.get(k) != manifest.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in diff)
            raise st.StoreError(f"store {out} was prepared with other settings or sources ({shown}): "
                                "choose another --out, or delete the folder to rebuild it")
    tmp = out / f"{st.MANIFEST}.{os.getpid()}.tmp"  # several processes may write it: same content
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mf)
    n_shards, vps = manifest["num_shards"], cfg.videos_per_shard
    mine = [j for j in range(n_shards) if j % cfg.num_shards == cfg.shard]
    todo, kept = [], 0
    for j in mine:
        recs = records[j * vps:(j + 1) * vps]
        sources = _shard_sources(folder, recs, cfg.depth)
        idx = out / f"{st.shard_name(j, n_shards)}.json"
        arr = out / f"{st.shard_name(j, n_shards)}.array_record"
        if idx.is_file() and arr.is_file() and json.loads(idx.read_text()).get("sources") == sources:
            kept += 1
            continue
        idx.unlink(missing_ok=True)  # stale: its sources changed
        todo.append((j, recs, sources))
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(r) for _, r, _ in todo), unit="video", desc="prepare",
               disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
    written = []
    try:
        for j, recs, sources in todo:
            written.append(_write_shard(j, recs, cfg, encoders, out, folder, n_shards, sources, log, bar))
    finally:
        bar.close()
    report = write_report(out, n_shards)
    summary = {"store": str(out), "shards": n_shards, "this_process": mine, "written": len(written),
               "kept": kept, "videos": sum(len(w["videos"]) for w in written),
               "skipped": sum(len(w["skipped"]) for w in written), "seconds": time.perf_counter() - t0,
               "complete": report["complete"]}
    log(f"store {out}: {len(written)} shard(s) written, {kept} kept "
        f"({summary['videos']} videos encoded, {summary['skipped']} skipped); "
        + ("complete" if report["complete"] else
           f"{len(report['missing_shards'])} shard(s) still to be prepared by other processes"))
    return summary


def write_report(out: Path, n_shards: int) -> dict:
    """``report.json``: per store, the videos kept and skipped (with reasons) so far."""
    skipped, missing, videos = [], [], 0
    for j in range(n_shards):
        idx = out / f"{st.shard_name(j, n_shards)}.json"
        if not idx.is_file():
            missing.append(j)
            continue
        sh = json.loads(idx.read_text())
        videos += len(sh["videos"])
        skipped += sh["skipped"]
    report = {"complete": not missing, "missing_shards": missing, "videos": videos,
              "skipped": skipped}
    tmp = out / f"{st.REPORT}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / st.REPORT)
    return report
