"""Test videos with an audio stream, written with PyAV (H.264 frames + a 440 Hz tone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_clip_with_audio(path: Path, frames: np.ndarray, fps: int, *, codec: str = "aac",
                          rate: int = 44100, seconds: float | None = None) -> Path:
    """``frames (T, H, W, 3)`` uint8 at ``fps`` plus ``seconds`` (default: the video's length)
    of a mono tone in ``codec`` (``aac``, ``pcm_alaw`` in ``.avi``, ...)."""
    import av

    seconds = len(frames) / fps if seconds is None else seconds
    fmt = {"aac": "fltp"}.get(codec, "s16")
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        aus = c.add_stream(codec, rate=rate)
        aus.layout = "mono"
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        total = int(rate * seconds)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)
        for s in range(0, total, 1024):
            chunk = tone[s:s + 1024]
            arr = (chunk[None] * 32767).astype(np.int16) if fmt == "s16" else chunk[None].astype(np.float32)
            fr = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
            fr.rate, fr.pts = rate, s
            for p in aus.encode(fr):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    return Path(path)
