"""The on-disk clip store that ``python -m jaxvedit.prepare`` writes and the trainer reads.

Layout of a store folder (see ``docs/training.md``)::

    manifest.json                        what the store holds and how it was made
    shard-00000-of-00040.array_record    the records of shard 0 (ArrayRecord, group size 1)
    shard-00000-of-00040.json            shard 0's index; written last: the shard is complete
    ...
    validation.npz                       the frames and caption of one video (validation edits)
    report.json                          videos skipped while preparing, and why

Each shard holds up to ``videos_per_shard`` consecutive videos of the annotation list. For
every usable video the shard file has one **frame record** per decoded frame (its VAE latent,
its CLIP vision hidden states and its depth map when those were prepared) followed by one
**caption record** per caption (its token ids and its text). A record is a msgpack map of raw
array bytes; shapes and dtypes are fixed for the whole store and stored in the manifest. Frames
are single records so that a clip of T frames reads T small records at random positions
(ArrayRecord's random access; nothing else of the video is read).

A shard is written to ``*.tmp`` files and renamed when complete (array file first, then its
index), so an interrupted run never leaves a shard that looks done; a later run redoes exactly
the shards without an index, or whose sources changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "jaxvedit-clip-store"
VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"
VALIDATION = "validation.npz"

# the manifest keys that define what the records mean: a store is reused (resumed) only when
# they are equal, and the trainer checks them against its own model and settings
IDENTITY_KEYS = ("model_fingerprint", "vision_fingerprint", "dtype", "resolution", "max_frames", "vision_shape",
                 "depth", "depth_model_fingerprint", "token_length", "videos_per_shard", "num_shards",
                 "sources_fingerprint", "compression")


class StoreError(ValueError):
    """A store is missing, incomplete, or was made for another model or settings."""


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# record codec


def encode_frame(latent: np.ndarray, vision: np.ndarray | None = None,
                 depth: np.ndarray | None = None) -> bytes:
    import msgpack

    rec = {"latent": np.ascontiguousarray(latent).tobytes()}
    if vision is not None:
        rec["vision"] = np.ascontiguousarray(vision).tobytes()
    if depth is not None:
        rec["depth"] = np.ascontiguousarray(depth).tobytes()
    return msgpack.packb(rec)


def encode_caption(token_ids: np.ndarray, text: str) -> bytes:
    import msgpack

    return msgpack.packb({"ids": np.asarray(token_ids, np.int32).tobytes(), "text": text})


def decode_record(blob: bytes) -> dict:
    import msgpack

    return msgpack.unpackb(blob)


# ----------------------------------------------------------------------------------------------
# fingerprints


def file_fingerprint(path: Path, sample: int = 1 << 20) -> list:
    """Size and sha1 of the first and last ``sample`` bytes of a file: identifies weight files
    by content (not by path) without reading gigabytes."""
    size = path.stat().st_size
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > sample:
            f.seek(max(sample, size - sample))
            h.update(f.read(sample))
    return [path.name, size, h.hexdigest()]


def folder_fingerprint(folder: Path, patterns=("*.json", "*.safetensors", "*.txt")) -> list:
    files = sorted({p for pat in patterns for p in folder.glob(pat)
                    if p.is_file() and not p.name.endswith(".tmp")})
    return [file_fingerprint(p) for p in files]


def digest(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class VideoIndex:
    """Per-video arrays over the whole store (a few integers a video: bounded host memory)."""

    frame_key: np.ndarray  # (V,) int64: global record key of the video's first frame
    num_frames: np.ndarray  # (V,) int32
    caption_key: np.ndarray  # (V,) int64: global record key of its first caption
    num_captions: np.ndarray  # (V,) int32
    has_vision: np.ndarray  # (V,) bool
    has_depth: np.ndarray  # (V,) bool

    def __len__(self) -> int:
        return len(self.num_frames)


class ClipStore:
    """An opened store: manifest, shard files and the video index.

    Opening checks that every shard the manifest announces is complete; :meth:`check` compares
    the store with what a training run expects.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not self.path.is_dir():
            raise StoreError(f"store not found: {self.path}")
        if not mf.is_file():
            raise StoreError(f"{self.path} is no clip store (no {MANIFEST}): prepare one with "
                             f"python -m jaxvedit.prepare --data <videos> --out {self.path}")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise StoreError(f"{mf}: not a {FORMAT} version {VERSION} manifest "
                             f"(format {self.manifest.get('format')!r}, version "
                             f"{self.manifest.get('version')!r})")
        n = int(self.manifest["num_shards"])
        missing = [i for i in range(n) if not (self.path / f"{shard_name(i, n)}.json").is_file()
                   or not (self.path / f"{shard_name(i, n)}.array_record").is_file()]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise StoreError(
                f"store {self.path} is incomplete: {len(missing)} of {n} shards missing (shard "
                f"{shown}); finish it with python -m jaxvedit.prepare (same options; finished "
                "shards are kept)")
        self._build_index(n)

    # -- properties from the manifest
    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent_shape"])

    @property
    def vision_shape(self) -> tuple[int, ...] | None:
        v = self.manifest.get("vision_shape")
        return tuple(v) if v else None

    @property
    def depth_shape(self) -> tuple[int, ...] | None:
        v = self.manifest.get("depth_shape")
        return tuple(v) if v else None

    @property
    def token_length(self) -> int:
        return int(self.manifest["token_length"])

    @property
    def num_videos(self) -> int:
        return len(self.index)

    def shard_index(self, i: int) -> dict:
        """Shard ``i``'s index JSON (its videos and skipped entries), read from disk."""
        n = int(self.manifest["num_shards"])
        return json.loads((self.path / f"{shard_name(i, n)}.json").read_text())

    def record_paths(self) -> list[str]:
        """ArrayRecord read instructions ``file[0:n]`` (no file is opened to count records)."""
        n = int(self.manifest["num_shards"])
        return [f"{self.path / (shard_name(i, n) + '.array_record')}[0:{r}]"
                for i, r in enumerate(self.shard_records)]

    def _build_index(self, n: int) -> None:
        """One shard index at a time into a few integer arrays (the JSON is not kept)."""
        cols = {k: [] for k in ("frame_key", "num_frames", "caption_key", "num_captions",
                                "has_vision", "has_depth")}
        base, self.shard_records, self.skipped = 0, [], []
        for i in range(n):
            sh = self.shard_index(i)
            for v in sh["videos"]:
                cols["frame_key"].append(base + v["first"])
                cols["num_frames"].append(v["frames"])
                cols["caption_key"].append(base + v["first"] + v["frames"])
                cols["num_captions"].append(v["captions"])
                cols["has_vision"].append(v["vision"])
                cols["has_depth"].append(v["depth"])
            self.skipped += sh["skipped"]
            self.shard_records.append(int(sh["records"]))
            base += sh["records"]
        self.num_records = base
        self.index = VideoIndex(
            np.asarray(cols["frame_key"], np.int64), np.asarray(cols["num_frames"], np.int32),
            np.asarray(cols["caption_key"], np.int64), np.asarray(cols["num_captions"], np.int32),
            np.asarray(cols["has_vision"], bool), np.asarray(cols["has_depth"], bool))

    def video_names(self) -> list[str]:
        return [v["name"] for i in range(len(self.shard_records)) for v in self.shard_index(i)["videos"]]

    def check(self, *, model_fingerprint: str | None = None, vision_fingerprint: str | None = None,
              dtype: str | None = None, resolution: int | None = None,
              vision_dim: int | None = None, need_vision: bool = False) -> None:
        """Raise :class:`StoreError` naming what does not fit the run."""
        m = self.manifest
        if model_fingerprint is not None and m["model_fingerprint"] != model_fingerprint:
            raise StoreError(
                f"store {self.path} was prepared with another model (encoder fingerprint "
                f"{m['model_fingerprint']} from {m.get('model')!r}; this run's model gives "
                f"{model_fingerprint}): its latents and token ids belong to that model's VAE and "
                "tokenizer. Prepare a store with this --model")
        if dtype is not None and m["dtype"] != dtype:
            raise StoreError(
                f"store {self.path} holds {m['dtype']} latents, this run computes in {dtype}: "
                f"prepare a {dtype} store (python -m jaxvedit.prepare --dtype {dtype}) or train "
                f"with --dtype {m['dtype']}")
        if resolution is not None and m["resolution"] != resolution:
            raise StoreError(f"store {self.path} was prepared at resolution {m['resolution']}, "
                             f"this run asks for --resolution {resolution}")
        if need_vision:
            if self.vision_shape is None:
                raise StoreError(f"store {self.path} has no CLIP vision hidden states (prepared "
                                 "with --no-vision): the unshared prompt tokens need them; "
                                 "prepare with vision, or train with --no-unshared-tokens")
            if vision_fingerprint is not None and m.get("vision_fingerprint") != vision_fingerprint:
                raise StoreError(
                    f"store {self.path} holds the vision states of another CLIP vision tower "
                    f"(fingerprint {m.get('vision_fingerprint')} from {m.get('vision_model')!r}; "
                    f"this run's gives {vision_fingerprint}): prepare with this --vision-model")
            if vision_dim is not None and self.vision_shape[-1] != vision_dim:
                raise StoreError(f"store {self.path} holds vision states of width "
                                 f"{self.vision_shape[-1]}, the vision tower has {vision_dim}")


    def check_depth(self, controlnet: str) -> None:
        """A ControlNet run needs depth maps for every video: name the ones without, and why."""
        if bool(self.index.has_depth.all()):
            return
        missing = []
        for i in range(len(self.shard_records)):
            missing += [(v["source"], v.get("depth_problem")) for v in self.shard_index(i)["videos"]
                        if not v["depth"]]
        why = "; ".join(f"{m}: {p}" for m, p in missing[:3] if p)
        raise StoreError(f"--controlnet {controlnet} needs a depth map per frame, but {len(missing)} "
                         f"video(s) of store {self.path} have none (e.g. {[m for m, _ in missing[:3]]})"
                         + (f" [{why}]" if why else "") + ": put them in <data>/depth/{video stem} "
                         "or use --depth auto (python -m jaxvedit.prepare --depth-model ...)")


def open_store(path) -> ClipStore:
    return ClipStore(path)
