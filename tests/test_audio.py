"""jaxvedit.data.audio: the source's audio span copied into an edited video (stream copy, and
AAC when the container refuses the codec)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from av_clips import write_clip_with_audio
from jaxvedit.data.audio import audio_info, copy_audio
from jaxvedit.data.video import probe_video, read_video, write_video


def _samples(path):
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])


@pytest.mark.parametrize("codec,suffix,copied", [("aac", ".mp4", "aac"), ("pcm_alaw", ".avi", "aac")])
def test_copy_audio_span(tmp_path, codec, suffix, copied):
    frames = np.zeros((12, 64, 128, 3), np.uint8)
    src = write_clip_with_audio(tmp_path / f"src{suffix}", frames, 12, codec=codec)
    assert audio_info(src)["codec"] == codec and abs(audio_info(src)["duration"] - 1.0) < 0.03
    out = tmp_path / "edited.mp4"
    write_video(out, frames[3:9], 12)
    assert copy_audio(src, out, start=0.25, duration=0.5)
    info = audio_info(out)
    assert info["codec"] == copied and info["channels"] == 1 and info["rate"] == 44100
    assert abs(info["duration"] - 0.5) < 0.05  # trimmed at packet granularity (1024 samples)
    assert np.abs(_samples(out)).max() > 0.2  # the tone, not silence
    v = probe_video(out)
    assert (v.num_frames, v.fps, v.height, v.width) == (6, 12.0, 64, 128)
    assert read_video(out).frames.shape == (6, 64, 128, 3)  # the video stream survived the remux


def test_no_audio_leaves_the_video(tmp_path):
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    write_video(tmp_path / "silent.mp4", frames, 8)
    write_video(tmp_path / "out.mp4", frames, 8)
    before = (tmp_path / "out.mp4").read_bytes()
    assert audio_info(tmp_path / "silent.mp4") is None
    assert not copy_audio(tmp_path / "silent.mp4", tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == before
