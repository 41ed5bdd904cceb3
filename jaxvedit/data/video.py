"""Video input / output, frame preprocessing, clip sampling and a tiny synthetic sample.

Frames are channels-last ``uint8`` arrays ``(T, H, W, 3)`` (RGB) everywhere in this module.

Reading (:func:`read_video`, :func:`probe_video`) goes through PyAV for containers (mp4, webm,
mkv, mov, avi, gif, ...) and through OpenCV for a folder of image frames (png / jpg / bmp /
webp / tif, sorted naturally: ``frame2.png`` before ``frame10.png``).

Writing: :func:`write_video` (H.264 in mp4 / mkv / mov, ``yuv420p``), :func:`write_gif`,
:func:`write_frames` (PNG folder) and :func:`save_video`, which picks one of them from the path.
Writers never create missing parent folders: an output path whose folder does not exist is a
``FileNotFoundError`` naming that folder (a typo in an output path should not scatter files
into new deep directories). :func:`write_frames` and :func:`make_sample_dataset` create their
output folder itself when its parent exists, like ``mkdir`` without ``-p``.

See ``docs/video_and_metrics.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from fractions import Fraction
from pathlib import Path
import numpy as np

__all__ = [
    "DEFAULT_FOLDER_FPS", "IMAGE_EXTENSIONS", "Video", "VideoInfo", "clip_span", "extract_clip",
    "from_model_range", "make_sample_dataset", "make_sample_video", "probe_video", "random_clip",
    "read_video", "resize_center_crop", "sample_clip_starts", "save_video", "synthetic_frames",
    "to_model_range", "write_frames", "write_gif", "write_video",
]

DEFAULT_FOLDER_FPS = 8.0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
H264_EXTENSIONS = (".mp4", ".mkv", ".mov")
GIF_MAX_FPS = 50.0


@dataclasses.dataclass
class Video:
    """Decoded frames ``(T, H, W, 3)`` uint8 RGB and their frame rate (frames per second)."""

    frames: np.ndarray
    fps: float
    path: str | None = None

    def __repr__(self) -> str:
        return (f"Video({self.num_frames} frames, {self.height}x{self.width}, fps={self.fps:g}, "
                f"path={self.path!r})")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def __len__(self) -> int:
        return self.num_frames


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found. ``exact`` is False when ``num_frames`` is the
    container's claim (not checked by decoding)."""

    num_frames: int
    fps: float
    height: int
    width: int
    codec: str
    exact: bool


# ----------------------------------------------------------------------------------------------
# reading


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of the video tools
        raise ImportError("reading and writing video files needs PyAV: pip install av") from e
    return av


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover
        raise ImportError("this needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_range(start: int, stop: int | None, stride: int, max_frames: int | None) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if stop is not None and stop <= start:
        raise ValueError(f"stop ({stop}) must be > start ({start}): the selection is empty")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def _selected(i: int, start: int, stride: int) -> bool:
    return i >= start and (i - start) % stride == 0


def _read_image(path: Path) -> np.ndarray:
    cv2 = _cv2()
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 8-bit BGR; greyscale / alpha converted
    if img is None:
        raise ValueError(f"unreadable image frame: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_folder(folder: Path, start, stop, stride, max_frames, fps) -> Video:
    files = _image_files(folder)
    if not files:
        raise ValueError(f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    files = files[start:stop:stride][:max_frames]
    if not files:
        raise ValueError(f"no frames selected from {folder}: it has {len(_image_files(folder))} "
                         f"frames, start={start}")
    frames = [_read_image(p) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        bad = next(p for p, f in zip(files, frames) if f.shape != frames[0].shape)
        raise ValueError(f"frames of {folder} differ in size: {files[0].name} is "
                         f"{frames[0].shape[:2]}, {bad.name} is {_read_image(bad).shape[:2]}")
    src_fps = DEFAULT_FOLDER_FPS if fps is None else float(fps)
    return Video(np.stack(frames), src_fps / stride, str(folder))


def _stream_fps(stream) -> float | None:
    # guessed_rate (r_frame_rate) is right for constant-rate video and for GIF, whose
    # average_rate is skewed by centisecond rounding of the delays
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _open(path: Path):
    av = _av()
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"unreadable or corrupt video file {path}: {e}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise ValueError(f"no video stream in {path} (streams: {', '.join(kinds)})")
    return container


def read_video(path: str | os.PathLike, *, start: int = 0, stop: int | None = None, stride: int = 1,
               max_frames: int | None = None, fps: float | None = None) -> Video:
    """Decode frames ``start, start + stride, ...`` (below ``stop``; at most ``max_frames``).

    ``path`` is a video file (anything FFmpeg demuxes: mp4, webm, mkv, gif, ...) or a folder of
    image frames (natural sort order). The returned ``fps`` is the rate of the *returned*
    frames, ``source fps / stride``, so the clip plays at the source's speed. ``fps`` gives the
    source rate of an image folder (default 8) and overrides a container's rate.

    Errors (naming the path): ``FileNotFoundError`` for a missing path, ``ValueError`` for an
    unreadable / corrupt / truncated file, a file with no video stream, or no decodable frames.
    """
    _check_range(start, stop, stride, max_frames)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video not found: {p}")
    if p.is_dir():
        return _read_folder(p, start, stop, stride, max_frames, fps)
    av = _av()
    frames: list[np.ndarray] = []
    n = 0  # frames decoded so far
    with _open(p) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = float(fps) if fps is not None else _stream_fps(stream)
        try:
            for frame in container.decode(stream):
                i, n = n, n + 1
                if stop is not None and i >= stop:
                    break
                if _selected(i, start, stride):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
        except av.error.FFmpegError as e:
            raise ValueError(f"corrupt or truncated video {p}: decoding failed after {n} frames: {e}") from e
    if not frames:
        if n == 0:
            raise ValueError(f"no decodable frames in {p}")
        raise ValueError(f"no frames selected from {p}: it has {n} frames, start={start}")
    if src_fps is None:
        src_fps = DEFAULT_FOLDER_FPS
    return Video(np.stack(frames), src_fps / stride, str(p))


def probe_video(path: str | os.PathLike, *, fps: float | None = None) -> VideoInfo:
    """Frame count, fps and size. Uses the container's frame count when it states one
    (``exact=False``); otherwise counts by decoding (``exact=True``). For an image folder:
    the number of image files and the first one's size (``fps``: as in :func:`read_video`)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video not found: {p}")
    if p.is_dir():
        files = _image_files(p)
        if not files:
            raise ValueError(f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in folder {p}")
        h, w = _read_image(files[0]).shape[:2]
        return VideoInfo(len(files), DEFAULT_FOLDER_FPS if fps is None else float(fps), h, w,
                         "images", True)
    av = _av()
    with _open(p) as container:
        stream = container.streams.video[0]
        rate = float(fps) if fps is not None else (_stream_fps(stream) or DEFAULT_FOLDER_FPS)
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        if stream.frames and ctx.width and ctx.height:
            return VideoInfo(int(stream.frames), rate, int(ctx.height), int(ctx.width), codec, False)
        n, h, w = 0, 0, 0
        try:
            for frame in container.decode(stream):
                if n == 0:
                    h, w = frame.height, frame.width
                n += 1
        except av.error.FFmpegError as e:
            raise ValueError(f"corrupt or truncated video {p}: decoding failed after {n} frames: {e}") from e
    if n == 0:
        raise ValueError(f"no decodable frames in {p}")
    return VideoInfo(n, rate, h, w, codec, True)


# ----------------------------------------------------------------------------------------------
# writing


def _as_uint8_frames(frames, what: str = "frames") -> np.ndarray:
    """``(T, H, W, 3)`` uint8, or float in [0, 1] (rounded to uint8)."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{what} must be (T, H, W, 3), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"no {what} to write (T = 0)")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.min(a)), float(np.max(a))
        if lo < 0.0 or hi > 1.0 or not np.isfinite(lo + hi):
            raise ValueError(f"float {what} must lie in [0, 1], got [{lo:g}, {hi:g}] "
                             "(use from_model_range for [-1, 1] model outputs)")
        return np.round(a * 255.0).astype(np.uint8)
    raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {a.dtype}")


def _check_output_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"output path is a directory: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (writing {p}); "
                                "create it first")
    return p


def _make_output_folder(folder: str | os.PathLike) -> Path:
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise ValueError(f"output folder is a file: {p}")
    if not p.exists():
        if not p.parent.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {p.parent} (creating {p}); "
                                    "create it first")
        p.mkdir()
    return p


def _check_fps(fps) -> Fraction:
    f = float(fps)
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    return Fraction(f).limit_denominator(1001)


def write_video(path: str | os.PathLike, frames, fps: float, *, crf: int = 17,
                preset: str = "medium", odd_size: str = "error") -> Path:
    """Write H.264 (libx264, ``yuv420p``) to ``.mp4`` / ``.mkv`` / ``.mov``.

    ``yuv420p`` subsamples chroma 2x2, so width and height must be even: ``odd_size="error"``
    (default) refuses odd sizes; ``"pad"`` repeats the last row / column (the file is then one
    pixel larger). ``crf`` 17 is visually lossless (0 would be lossless in luma, but players
    reject high-profile lossless files). Frames: uint8, or float in [0, 1].
    """
    p = _check_output_file(path)
    if p.suffix.lower() not in H264_EXTENSIONS:
        raise ValueError(f"write_video writes H.264 to {'/'.join(H264_EXTENSIONS)}, not "
                         f"'{p.suffix or p.name}' (use write_gif, write_frames or save_video)")
    a = _as_uint8_frames(frames)
    rate = _check_fps(fps)
    _, h, w, _ = a.shape
    if h % 2 or w % 2:
        if odd_size == "error":
            raise ValueError(f"H.264 yuv420p needs even width and height, got {w}x{h} for {p}: "
                             "crop / resize, or pass odd_size='pad'")
        if odd_size != "pad":
            raise ValueError(f"odd_size must be 'error' or 'pad', got {odd_size!r}")
        a = np.pad(a, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        _, h, w, _ = a.shape
    av = _av()
    with av.open(str(p), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": preset}
        for frame in a:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p


def _median_cut_palette(pixels: np.ndarray, n: int = 256) -> np.ndarray:
    """Deterministic median-cut palette (n, 3) of ``pixels`` (N, 3) uint8."""
    boxes = [pixels]
    while len(boxes) < n:
        # split the box with the widest channel range (ties: the more populous one)
        ranges = [int(np.ptp(b, axis=0).max()) if len(b) > 1 else -1 for b in boxes]
        k = max(range(len(boxes)), key=lambda j: (ranges[j], len(boxes[j])))
        if ranges[k] <= 0:
            break
        b = boxes.pop(k)
        ch = int(np.argmax(np.ptp(b, axis=0)))
        b = b[np.argsort(b[:, ch], kind="stable")]
        mid = len(b) // 2
        boxes += [b[:mid], b[mid:]]
    return np.stack([np.round(b.mean(axis=0)) for b in boxes]).astype(np.uint8)


def _palettize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 -> (indices (T, H, W) uint8, palette (256, 3) uint8): exact when the
    clip has at most 256 colours, else a median-cut palette with nearest-colour mapping through
    a 5-bit-per-channel lookup table (no dithering)."""
    code = (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]
    colors, inverse = np.unique(code.ravel(), return_inverse=True)
    palette = np.zeros((256, 3), np.uint8)
    if len(colors) <= 256:
        palette[: len(colors)] = np.stack([(colors >> 16) & 255, (colors >> 8) & 255, colors & 255], -1)
        return inverse.reshape(code.shape).astype(np.uint8), palette
    flat = a.reshape(-1, 3)
    step = max(1, len(flat) // 200_000)
    pal = _median_cut_palette(flat[::step])
    palette[: len(pal)] = pal
    grid = (np.arange(32, dtype=np.float32) * 8 + 4)  # 5-bit cell centres
    lut_rgb = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    pf = pal.astype(np.float32)
    lut = np.empty(len(lut_rgb), np.uint8)
    for s in range(0, len(lut_rgb), 4096):
        d = ((lut_rgb[s:s + 4096, None, :] - pf[None]) ** 2).sum(-1)
        lut[s:s + 4096] = np.argmin(d, axis=1)
    q = a >> 3
    idx = lut[(q[..., 0].astype(np.int32) << 10) | (q[..., 1].astype(np.int32) << 5) | q[..., 2]]
    return idx, palette


def write_gif(path: str | os.PathLike, frames, fps: float, *, loop: int = 0) -> Path:
    """Write an animated GIF (PyAV's GIF encoder, one global 256-colour palette).

    Clips with at most 256 distinct colours are stored exactly; others get a deterministic
    median-cut palette (no dithering). GIF frame delays are whole centiseconds, so the
    stored rate is approximate (8 fps -> delays of 12/13 cs); ``fps`` above 50 is refused
    (viewers clamp delays under 2 cs). ``loop=0`` loops forever.
    """
    p = _check_output_file(path)
    if p.suffix.lower() != ".gif":
        raise ValueError(f"write_gif writes '.gif' files, not '{p.suffix or p.name}'")
    a = _as_uint8_frames(frames)
    rate = _check_fps(fps)
    if float(rate) > GIF_MAX_FPS:
        raise ValueError(f"GIF frame delays are whole 1/100 s and viewers clamp delays under "
                         f"0.02 s: fps {float(fps):g} > {GIF_MAX_FPS:g} is not representable")
    idx, palette = _palettize(a)
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), palette], axis=1)
    av = _av()
    _, h, w, _ = a.shape
    with av.open(str(p), "w", options={"loop": str(int(loop))}) as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        for i, frame_idx in enumerate(idx):
            frame = av.VideoFrame.from_ndarray((np.ascontiguousarray(frame_idx), argb), format="pal8")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p


def write_frames(folder: str | os.PathLike, frames, *, prefix: str = "frame_",
                 overwrite: bool = False) -> list[Path]:
    """Write ``folder/{prefix}00000.png``, ... (lossless). ``folder`` is created when missing
    (its parent must exist). A folder that already holds image files is refused unless
    ``overwrite=True`` (stale frames from a longer clip would otherwise be read back)."""
    a = _as_uint8_frames(frames)
    p = _make_output_folder(folder)
    old = _image_files(p)
    if old and not overwrite:
        raise ValueError(f"output folder {p} already holds {len(old)} image files "
                         f"(e.g. {old[0].name}); choose an empty folder or pass overwrite=True")
    cv2 = _cv2()
    digits = max(5, len(str(len(a) - 1)))
    paths = []
    for i, frame in enumerate(a):
        out = p / f"{prefix}{i:0{digits}d}.png"
        if not cv2.imwrite(str(out), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write frame {out}")
        paths.append(out)
    return paths


def save_video(path: str | os.PathLike, frames, fps: float, **kwargs):
    """Write by the path's form: ``.gif`` -> :func:`write_gif`; ``.mp4`` / ``.mkv`` / ``.mov``
    -> :func:`write_video`; no suffix -> :func:`write_frames` (a PNG folder; ``fps`` unused)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".gif":
        return write_gif(p, frames, fps, **kwargs)
    if suffix in H264_EXTENSIONS:
        return write_video(p, frames, fps, **kwargs)
    if suffix == "":
        write_frames(p, frames, **kwargs)
        return p
    raise ValueError(f"unknown output format '{suffix}' for {p}: use .mp4/.mkv/.mov, .gif, "
                     "or a folder name without suffix (PNG frames)")


# ----------------------------------------------------------------------------------------------
# preprocessing


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def resize_center_crop(frames, size: int | tuple[int, int]) -> np.ndarray:
    """Scale so the frame covers ``size`` (``int`` -> square: the short side becomes ``size``),
    then crop the centre to ``(h, w)``. Works on ``(T, H, W, C)`` or one ``(H, W, C)`` frame,
    uint8 or float (dtype kept).

    Resampling is OpenCV's, deterministic: ``INTER_AREA`` when shrinking (area averaging, i.e.
    antialiased), ``INTER_CUBIC`` when enlarging (uint8 saturates to [0, 255]; float may
    overshoot slightly at edges), none when the scale is 1. The crop offset is
    ``(excess // 2)`` from the top-left.
    """
    cv2 = _cv2()
    a = np.asarray(frames)
    single = a.ndim == 3
    if single:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, C) or (H, W, C), got shape {np.shape(frames)}")
    h, w = _hw(size)
    H, W = a.shape[1:3]
    scale = max(h / H, w / W)
    nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
    if (nh, nw) != (H, W):
        interp = cv2.INTER_AREA if nh * nw < H * W else cv2.INTER_CUBIC
        out = []
        for f in a:
            r = cv2.resize(f, (nw, nh), interpolation=interp)
            out.append(r.reshape(nh, nw, -1))
        a = np.stack(out)
    top, left = (nh - h) // 2, (nw - w) // 2
    a = np.ascontiguousarray(a[:, top:top + h, left:left + w])
    return a[0] if single else a


def to_model_range(frames) -> np.ndarray:
    """uint8 [0, 255] (or float [0, 1]) -> float32 [-1, 1], the VAE's input range."""
    a = np.asarray(frames)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1.0
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32) * 2.0 - 1.0
    raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {a.dtype}")


def from_model_range(x) -> np.ndarray:
    """float [-1, 1] -> uint8 (clipped, rounded): the inverse of :func:`to_model_range`."""
    a = np.asarray(x, dtype=np.float32)
    return np.clip(np.round((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# clips


def clip_span(clip_len: int, stride: int = 1) -> int:
    """Frames of the source covered by a clip: ``(clip_len - 1) * stride + 1``."""
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return (clip_len - 1) * stride + 1


def sample_clip_starts(num_frames: int, clip_len: int, stride: int = 1) -> np.ndarray:
    """Every valid start index of a clip of ``clip_len`` frames taken every ``stride`` frames:
    ``0 .. num_frames - span`` (int64). A clip longer than the video is a ``ValueError``."""
    span = clip_span(clip_len, stride)
    if num_frames < span:
        extra = f" (stride {stride} spans {span})" if stride > 1 else ""
        raise ValueError(f"a clip of {clip_len} frames{extra} needs at least {span} frames, but "
                         f"the video has {num_frames}")
    return np.arange(num_frames - span + 1, dtype=np.int64)


def extract_clip(frames, start: int, clip_len: int, stride: int = 1):
    """``frames[start : start + span : stride]``: ``clip_len`` adjacent (``stride`` apart) frames."""
    n = len(frames)
    starts = sample_clip_starts(n, clip_len, stride)
    if not 0 <= start <= starts[-1]:
        raise ValueError(f"clip start {start} out of range: a clip of {clip_len} frames "
                         f"(stride {stride}) in a {n}-frame video starts at 0..{starts[-1]}")
    return frames[start:start + clip_span(clip_len, stride):stride]


def random_clip(frames, clip_len: int, rng: np.random.Generator, stride: int = 1):
    """A clip at a uniformly drawn valid start (``rng``: a numpy ``Generator``)."""
    starts = sample_clip_starts(len(frames), clip_len, stride)
    return extract_clip(frames, int(rng.choice(starts)), clip_len, stride)


# ----------------------------------------------------------------------------------------------
# synthetic sample

_COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 205, 40), "purple": (150, 60, 190), "orange": (240, 135, 30),
}
_SHAPES = ("square", "circle")
_DIRECTIONS = ("right", "left", "down", "up")


def _combos():
    return [(c, s, d) for c in _COLORS for s in _SHAPES for d in _DIRECTIONS]


def synthetic_frames(num_frames: int = 8, size: int | tuple[int, int] = 64, seed: int = 0, *,
                     color: str | None = None, shape: str | None = None,
                     direction: str | None = None) -> tuple[np.ndarray, str]:
    """A deterministic synthetic clip and its caption: a coloured square or circle moving
    across a smooth two-colour diagonal gradient (plus a small static disc, so the scene is not
    empty where the shape has passed). Unset ``color`` / ``shape`` / ``direction`` are drawn
    from ``seed``. Returns ``(frames (T, H, W, 3) uint8, "a red square moving right")``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    h, w = _hw(size)
    if min(h, w) < 8:
        raise ValueError(f"synthetic clips need a size of at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    c0, s0, d0 = _combos()[int(rng.integers(len(_combos())))]
    color, shape, direction = color or c0, shape or s0, direction or d0
    if color not in _COLORS:
        raise ValueError(f"unknown color {color!r}; one of {sorted(_COLORS)}")
    if shape not in _SHAPES:
        raise ValueError(f"unknown shape {shape!r}; one of {list(_SHAPES)}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; one of {list(_DIRECTIONS)}")

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = ((yy / max(h - 1, 1) + xx / max(w - 1, 1)) / 2.0)[..., None]
    ca, cb = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    background = (1 - g) * ca + g * cb
    # a static disc somewhere in the background
    dr = max(2, min(h, w) // 10)
    dy, dx = rng.uniform(dr, h - dr), rng.uniform(dr, w - dr)
    disc = (yy - dy) ** 2 + (xx - dx) ** 2 <= dr * dr
    background[disc] = 255.0 - background[disc]

    s = max(4, min(h, w) // 4)  # shape size
    margin = max(1, min(h, w) // 16)
    axis_len = w if direction in ("right", "left") else h
    travel = axis_len - s - 2 * margin
    across = (h if direction in ("right", "left") else w) - s
    other = float(rng.uniform(margin, max(margin, across - margin)))
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    rgb = np.asarray(_COLORS[color], np.float32)
    for t in range(num_frames):
        frac = t / max(num_frames - 1, 1)
        pos = margin + frac * travel if direction in ("right", "down") else margin + (1 - frac) * travel
        y0, x0 = (other, pos) if direction in ("right", "left") else (pos, other)
        y0, x0 = round(y0), round(x0)
        img = background.copy()
        if shape == "square":
            img[y0:y0 + s, x0:x0 + s] = rgb
        else:
            r = s / 2.0
            mask = (yy - (y0 + r - 0.5)) ** 2 + (xx - (x0 + r - 0.5)) ** 2 <= r * r
            img[mask] = rgb
        frames[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    article = "an" if color[0] in "aeiou" else "a"
    return frames, f"{article} {color} {shape} moving {direction}"


def make_sample_video(path: str | os.PathLike, *, frames: int = 8, size: int | tuple[int, int] = 64,
                      fps: float = 8, seed: int = 0, **kwargs) -> tuple[np.ndarray, str]:
    """Write :func:`synthetic_frames` to ``path`` via :func:`save_video` (``.mp4`` H.264,
    ``.gif``, or a PNG folder when the path has no suffix). ``kwargs``: ``color``, ``shape``,
    ``direction``. Returns ``(frames as generated (before any lossy coding), caption)``."""
    arr, caption = synthetic_frames(frames, size, seed, **kwargs)
    save_video(path, arr, fps)
    return arr, caption


def make_sample_dataset(folder: str | os.PathLike, n_videos: int = 3, *, frames: int = 8,
                        size: int | tuple[int, int] = 64, fps: float = 8, seed: int = 0,
                        ext: str = ".mp4") -> list[dict]:
    """``folder/clip{i}{ext}`` for ``i < n_videos`` (distinct colour / shape / direction while
    there are enough combinations: 48) plus ``folder/captions.jsonl`` with one line per clip,
    ``{"video": "clip0.mp4", "caption": "a red square moving right"}``. ``folder`` is created
    when missing (its parent must exist). Returns the caption records."""
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos}")
    ext = ext if ext.startswith(".") else "." + ext
    out = _make_output_folder(folder)
    combos = _combos()
    order = np.random.default_rng(seed).permutation(len(combos))
    records = []
    for i in range(n_videos):
        color, shape, direction = combos[int(order[i % len(combos)])]
        name = f"clip{i}{ext}"
        _, caption = make_sample_video(out / name, frames=frames, size=size, fps=fps, seed=seed + i,
                                       color=color, shape=shape, direction=direction)
        records.append({"video": name, "caption": caption})
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records

