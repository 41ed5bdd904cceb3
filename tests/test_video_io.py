"""Video I/O (``jaxvedit.data.video``): round trips through mp4 (H.264), GIF and PNG folders,
error cases, preprocessing and clip sampling.

H.264 (yuv420p, crf 17) on the 64x64 synthetic clip: mean |error| ~2.3-2.6 of 255 and PSNR
~31-32 dB (chroma subsampling smears the saturated shape edges; flat areas are within 1-2
levels). Bars: mean |error| < 4, PSNR > 28 dB. GIF and PNG round trips of the synthetic clip
(< 256 colours) are exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from jaxvedit.data import video as V  # noqa: E402


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def clip():
    frames, caption = V.synthetic_frames(8, 64, seed=1)
    return frames, caption


# ----------------------------------------------------------------------------------------------
# round trips


def test_mp4_round_trip(tmp_path, clip):
    frames, _ = clip
    out = V.write_video(tmp_path / "a.mp4", frames, fps=8)
    v = V.read_video(out)
    assert v.frames.shape == frames.shape and v.frames.dtype == np.uint8
    assert v.fps == 8.0 and v.num_frames == 8 and (v.height, v.width) == (64, 64)
    err = np.abs(v.frames.astype(np.int32) - frames).mean()
    assert err < 4.0, err
    assert _psnr(frames, v.frames) > 28.0
    info = V.probe_video(out)
    assert (info.num_frames, info.fps, info.height, info.width, info.codec) == (8, 8.0, 64, 64, "h264")


def test_mp4_non_square_fractional_fps_and_selection(tmp_path):
    frames, _ = V.synthetic_frames(10, (48, 80), seed=2)
    V.write_video(tmp_path / "b.mkv", frames, fps=29.97)
    v = V.read_video(tmp_path / "b.mkv")
    assert v.frames.shape == (10, 48, 80, 3) and abs(v.fps - 29.97) < 1e-6
    sub = V.read_video(tmp_path / "b.mkv", start=1, stop=8, stride=2)
    assert sub.num_frames == 4 and abs(sub.fps - 29.97 / 2) < 1e-6  # frames 1, 3, 5, 7
    np.testing.assert_array_equal(sub.frames, v.frames[1:8:2])
    assert V.read_video(tmp_path / "b.mkv", start=2, max_frames=3).num_frames == 3


def test_webm_probe_falls_back_to_decoding(tmp_path, clip):
    frames, _ = clip
    with av.open(str(tmp_path / "a.webm"), "w") as c:  # VP9; WebM states no frame count
        s = c.add_stream("libvpx-vp9", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.options = {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = V.probe_video(tmp_path / "a.webm")
    assert (info.num_frames, info.fps, info.codec, info.exact) == (8, 8.0, "vp9", True)
    v = V.read_video(tmp_path / "a.webm")
    assert v.frames.shape == frames.shape and v.fps == 8.0
    assert _psnr(frames, v.frames) > 25.0


def test_gif_round_trip(tmp_path, clip):
    frames, _ = clip
    V.write_gif(tmp_path / "a.gif", frames, fps=8)
    v = V.read_video(tmp_path / "a.gif")
    assert v.fps == 8.0
    np.testing.assert_array_equal(v.frames, frames)  # < 256 colours: exact
    assert V.probe_video(tmp_path / "a.gif").num_frames == 8


def test_gif_many_colours(tmp_path):
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur((rng.random((3, 40, 48, 3)) * 255).astype(np.float32).reshape(3 * 40, 48, 3),
                              (0, 0), 3).reshape(3, 40, 48, 3)
    frames = np.clip(np.round(smooth * 3 - 255), 0, 255).astype(np.uint8)
    assert len(np.unique(frames.reshape(-1, 3), axis=0)) > 256
    V.write_gif(tmp_path / "m.gif", frames, fps=10)
    v = V.read_video(tmp_path / "m.gif")
    assert v.fps == 10.0 and v.frames.shape == frames.shape
    err = np.abs(v.frames.astype(np.int32) - frames).mean()
    assert err < 4.0, err  # median-cut palette, no dithering


def test_frame_folder_round_trip(tmp_path, clip):
    frames, _ = clip
    paths = V.write_frames(tmp_path / "frames", frames)
    assert [p.name for p in paths][:2] == ["frame_00000.png", "frame_00001.png"]
    v = V.read_video(tmp_path / "frames")
    assert v.fps == V.DEFAULT_FOLDER_FPS
    np.testing.assert_array_equal(v.frames, frames)
    assert V.read_video(tmp_path / "frames", fps=24, stride=3).fps == 8.0
    assert V.probe_video(tmp_path / "frames") == V.VideoInfo(8, 8.0, 64, 64, "images", True)
    with pytest.raises(ValueError, match="already holds 8 image files"):
        V.write_frames(tmp_path / "frames", frames)
    V.write_frames(tmp_path / "frames", frames[:2], overwrite=True)


def test_frame_folder_natural_sort_and_formats(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    frames = np.stack([np.full((6, 4, 3), 10 * i, np.uint8) for i in range(12)])
    for i, f in enumerate(frames):  # frame2 must come before frame10
        ext = ".jpg" if i == 5 else ".png"
        cv2.imwrite(str(folder / f"frame{i}{ext}"), f)
    (folder / "notes.txt").write_text("not a frame")
    v = V.read_video(folder)
    assert v.num_frames == 12
    np.testing.assert_allclose(v.frames[:, 0, 0, 0], 10 * np.arange(12), atol=2)  # jpg: lossy
    cv2.imwrite(str(folder / "frame99.png"), np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        V.read_video(folder)


def test_save_video_dispatch_and_sample_files(tmp_path):
    frames, caption = V.make_sample_video(tmp_path / "s.mp4", frames=6, size=32, seed=3)
    assert frames.shape == (6, 32, 32, 3) and caption.split()[-2] == "moving"
    assert V.read_video(tmp_path / "s.mp4").num_frames == 6
    V.make_sample_video(tmp_path / "s.gif", frames=4, size=32)
    V.make_sample_video(tmp_path / "sf", frames=4, size=32)
    assert V.read_video(tmp_path / "sf").num_frames == 4
    with pytest.raises(ValueError, match="unknown output format '.avi'"):
        V.save_video(tmp_path / "x.avi", frames, 8)


def test_synthetic_is_deterministic_and_moves():
    a, cap = V.synthetic_frames(8, 64, seed=5, color="red", shape="square", direction="right")
    b, _ = V.synthetic_frames(8, 64, seed=5, color="red", shape="square", direction="right")
    np.testing.assert_array_equal(a, b)
    assert cap == "a red square moving right"
    red = np.all(a == (220, 40, 40), axis=-1)  # the square's columns move right
    cols = [np.nonzero(red[t].any(0))[0].mean() for t in range(8)]
    assert all(np.diff(cols) > 0)
    assert V.synthetic_frames(2, 16, color="orange")[1].startswith("an orange")
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        V.synthetic_frames(color="pink")


def test_sample_dataset(tmp_path):
    recs = V.make_sample_dataset(tmp_path / "ds", n_videos=3, frames=4, size=32)
    lines = [json.loads(s) for s in (tmp_path / "ds" / "captions.jsonl").read_text().splitlines()]
    assert lines == recs and [r["video"] for r in recs] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert len({r["caption"] for r in recs}) == 3
    for r in recs:
        assert V.probe_video(tmp_path / "ds" / r["video"]).num_frames == 4
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        V.make_sample_dataset(tmp_path / "no" / "ds")


# ----------------------------------------------------------------------------------------------
# errors


def test_read_errors(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="video not found: .*missing.mp4"):
        V.read_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="video not found"):
        V.probe_video(tmp_path / "missing.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match="unreadable or corrupt video file .*garbage.mp4"):
        V.read_video(tmp_path / "garbage.mp4")
    # truncated: moov atom at the end (the default) -> unreadable; at the start -> decode fails
    frames = np.concatenate([clip[0]] * 2)
    V.write_video(tmp_path / "full.mp4", frames, 8)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable or corrupt video file .*trunc.mp4"):
        V.read_video(tmp_path / "trunc.mp4")
    with av.open(str(tmp_path / "fs.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "fs_trunc.mp4").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="corrupt or truncated video .*fs_trunc.mp4"):
        V.read_video(tmp_path / "fs_trunc.mp4")
    # audio only
    with av.open(str(tmp_path / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for i in range(3):
            fr.pts = i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(ValueError, match="no video stream in .*audio.mp4 \\(streams: audio\\)"):
        V.read_video(tmp_path / "audio.mp4")
    # an empty folder / nothing selected
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames .* in folder .*empty"):
        V.read_video(tmp_path / "empty")
    with pytest.raises(ValueError, match="no frames selected from .*full.mp4: it has 16 frames, start=20"):
        V.read_video(tmp_path / "full.mp4", start=20)
    with pytest.raises(ValueError, match="stop \\(3\\) must be > start \\(3\\)"):
        V.read_video(tmp_path / "full.mp4", start=3, stop=3)
    assert repr(V.read_video(tmp_path / "full.mp4", max_frames=2)).startswith("Video(2 frames, 64x64, fps=8")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        V.read_video(tmp_path / "full.mp4", stride=0)


def test_zero_decodable_frames(tmp_path):
    # a valid container whose H.264 stream holds only packets of zeros (no NAL units): the
    # decoder returns nothing, without an error
    with av.open(str(tmp_path / "zeros.mkv"), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        list(s.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        list(s.encode())
        for i in range(3):
            p = av.Packet(bytes(64))
            p.stream, p.pts, p.dts = s, i, i
            c.mux(p)
    with pytest.raises(ValueError, match="no decodable frames in .*zeros.mkv"):
        V.read_video(tmp_path / "zeros.mkv")
    # a header-only mp4 (the stream never got a frame): no video stream
    with av.open(str(tmp_path / "empty.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    with pytest.raises(ValueError, match="no video stream in .*empty.mp4"):
        V.read_video(tmp_path / "empty.mp4")


def test_write_errors(tmp_path, clip):
    frames, _ = clip
    with pytest.raises(FileNotFoundError, match="output folder does not exist: .*nowhere"):
        V.write_video(tmp_path / "nowhere" / "deep" / "a.mp4", frames, 8)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        V.write_gif(tmp_path / "nowhere" / "a.gif", frames, 8)
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        V.write_frames(tmp_path / "nowhere" / "frames", frames)
    with pytest.raises(ValueError, match="needs even width and height, got 63x64"):
        V.write_video(tmp_path / "odd.mp4", frames[:, :, :63], 8)
    V.write_video(tmp_path / "odd.mp4", frames[:, :63, :63], 8, odd_size="pad")
    assert V.probe_video(tmp_path / "odd.mp4").width == 64
    with pytest.raises(ValueError, match="must be \\(T, H, W, 3\\)"):
        V.write_video(tmp_path / "a.mp4", frames[0], 8)
    with pytest.raises(ValueError, match="no frames to write"):
        V.write_video(tmp_path / "a.mp4", frames[:0], 8)
    with pytest.raises(ValueError, match="float frames must lie in \\[0, 1\\]"):
        V.write_video(tmp_path / "a.mp4", frames / 127.5 - 1, 8)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        V.write_video(tmp_path / "a.mp4", frames, 0)
    with pytest.raises(ValueError, match="fps 60 > 50"):
        V.write_gif(tmp_path / "a.gif", frames, 60)
    with pytest.raises(ValueError, match="write_video writes H.264"):
        V.write_video(tmp_path / "a.gif", frames, 8)
    with pytest.raises(ValueError, match="output path is a directory"):
        V.write_video(tmp_path, frames, 8)
    V.write_video(tmp_path / "f.mp4", frames.astype(np.float32) / 255, 8)  # float [0, 1] accepted


# ----------------------------------------------------------------------------------------------
# preprocessing


def test_resize_center_crop():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 60, 100, 3), dtype=np.uint8)
    out = V.resize_center_crop(frames, 30)  # 60x100 -> 30x50 (INTER_AREA) -> crop cols 10..40
    assert out.shape == (2, 30, 30, 3) and out.dtype == np.uint8
    ref = cv2.resize(frames[1], (50, 30), interpolation=cv2.INTER_AREA)[:, 10:40]
    np.testing.assert_array_equal(out[1], ref)
    up = V.resize_center_crop(frames[0], (90, 120))  # one frame, enlarged: 60x100 -> 90x150
    ref = cv2.resize(frames[0], (150, 90), interpolation=cv2.INTER_CUBIC)[:, 15:135]
    np.testing.assert_array_equal(up, ref)
    same = V.resize_center_crop(frames, (60, 80))  # scale 1: crop only
    np.testing.assert_array_equal(same, frames[:, :, 10:90])
    f = V.resize_center_crop(frames.astype(np.float32) / 255, 32)
    assert f.dtype == np.float32 and f.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(V.resize_center_crop(frames, 30), out)  # deterministic


def test_model_range():
    x = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    y = V.to_model_range(x)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_array_equal(V.from_model_range(y), x)
    np.testing.assert_array_equal(V.from_model_range([-3.0, 3.0]), [0, 255])
    np.testing.assert_allclose(V.to_model_range(np.array([0.0, 0.5, 1.0])), [-1, 0, 1])


# ----------------------------------------------------------------------------------------------
# clips


def test_clip_sampling():
    np.testing.assert_array_equal(V.sample_clip_starts(8, 4), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(V.sample_clip_starts(8, 8), [0])
    np.testing.assert_array_equal(V.sample_clip_starts(8, 4, stride=2), [0, 1])  # span 7
    np.testing.assert_array_equal(V.sample_clip_starts(8, 1), np.arange(8))
    with pytest.raises(ValueError, match="a clip of 9 frames needs at least 9 frames, but the video has 8"):
        V.sample_clip_starts(8, 9)
    with pytest.raises(ValueError, match="a clip of 4 frames \\(stride 3 spans 10\\) needs at least "
                                         "10 frames, "
                                         "but the video has 8"):
        V.sample_clip_starts(8, 4, stride=3)
    with pytest.raises(ValueError, match="clip_len must be >= 1"):
        V.sample_clip_starts(8, 0)
    frames = np.arange(10)
    np.testing.assert_array_equal(V.extract_clip(frames, 3, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(V.extract_clip(frames, 1, 3, stride=4), [1, 5, 9])
    with pytest.raises(ValueError, match="clip start 7 out of range: .* starts at 0..6"):
        V.extract_clip(frames, 7, 4)
    with pytest.raises(ValueError, match="needs at least 16 frames, but the video has 10"):
        V.extract_clip(frames, 0, 16)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = V.random_clip(frames, 4, rng, stride=2)
        assert len(c) == 4 and np.all(np.diff(c) == 2)
