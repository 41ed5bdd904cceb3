"""Audio of edited videos: copy the source's audio stream into a written video (PyAV remux).

The edit writes H.264 frames only; :func:`copy_audio` then remuxes that file with the first
audio stream of the source: the video packets are copied as they are (no re-encode), the audio
packets of the edited span ``[start, start + duration)`` seconds are copied with their
timestamps shifted to start at 0. When the output container does not take the source's audio
codec (PCM into mp4, for instance) the span is decoded and encoded to AAC instead. Packet copies
trim at audio-packet granularity (AAC: 1024 samples, 23 ms at 44.1 kHz).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

__all__ = ["audio_info", "copy_audio"]


def _av():
    import av

    return av


def audio_info(path: str | os.PathLike) -> dict | None:
    """``{"codec", "rate", "channels", "duration"}`` of the first audio stream, or ``None``
    (no audio stream, a frame folder, or not a container)."""
    p = Path(path)
    if p.is_dir() or not p.is_file():
        return None
    av = _av()
    try:
        with av.open(str(p)) as c:
            if not c.streams.audio:
                return None
            s = c.streams.audio[0]
            dur = float(s.duration * s.time_base) if s.duration else (
                c.duration / 1e6 if c.duration else None)
            return {"codec": s.codec_context.name, "rate": int(s.rate or 0),
                    "channels": int(s.codec_context.channels), "duration": dur}
    except av.error.FFmpegError:
        return None


def _in_span(t: float, start: float, duration: float | None) -> bool:
    return t >= start - 1e-6 and (duration is None or t < start + duration - 1e-6)


def _remux(video: Path, source: Path, out: Path, start: float, duration: float | None,
           transcode: bool) -> None:
    av = _av()
    with av.open(str(video)) as iv, av.open(str(source)) as ia, av.open(str(out), "w") as oc:
        vin = iv.streams.video[0]
        vout = oc.add_stream_from_template(vin)
        ain = ia.streams.audio[0]
        t0 = ain.start_time or 0
        if transcode:
            rate = int(ain.rate or 44100)
            n = ain.codec_context.channels  # a layout by channel count ("1 channels" -> "mono")
            layout = {1: "mono", 2: "stereo"}.get(n, ain.layout.name)
            aout = oc.add_stream("aac", rate=rate, layout=layout, format="fltp")
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        else:
            aout = oc.add_stream_from_template(ain)
        for pkt in iv.demux(vin):
            if pkt.dts is None:
                continue
            pkt.stream = vout
            oc.mux(pkt)
        tb = ain.time_base
        shift = int(round(start / tb)) + t0
        if transcode:
            pts = 0
            for frame in ia.decode(ain):
                if frame.pts is None or not _in_span(float((frame.pts - t0) * tb), start, duration):
                    continue
                for f in resampler.resample(frame):
                    f.pts, f.time_base = pts, Fraction(1, rate)
                    pts += f.samples
                    for p in aout.encode(f):
                        oc.mux(p)
            for p in aout.encode(None):
                oc.mux(p)
        else:
            for pkt in ia.demux(ain):
                if pkt.dts is None or pkt.pts is None:
                    continue
                if not _in_span(float((pkt.pts - t0) * tb), start, duration):
                    continue
                pkt.pts -= shift
                pkt.dts -= shift
                pkt.stream = aout
                oc.mux(pkt)


def copy_audio(source: str | os.PathLike, video: str | os.PathLike, *, start: float = 0.0,
               duration: float | None = None) -> bool:
    """Put the first audio stream of ``source`` (seconds ``[start, start + duration)``) into
    ``video`` (rewritten in place; its video stream is copied). Returns ``False``, leaving the
    video untouched, when the source has no audio stream."""
    av = _av()
    source, video = Path(source), Path(video)
    if audio_info(source) is None:
        return False
    tmp = video.with_name(f".{video.stem}.audio-tmp{video.suffix}")
    try:
        try:
            _remux(video, source, tmp, float(start), duration, transcode=False)
        except (av.error.FFmpegError, ValueError):  # the container refuses the codec
            _remux(video, source, tmp, float(start), duration, transcode=True)
        os.replace(tmp, video)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True
