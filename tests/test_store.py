"""The clip store (python -m jaxvedit.prepare) and its Grain loader: shards, resume, the skip
report, depth in the records, bad stores named, and a draw that is a pure function of
(seed, position) split exactly across processes."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from jaxvedit.data import store as st
from jaxvedit.data.encoders import StoreEncoders
from jaxvedit.data.loader import MicroBatchSource, make_dataset
from jaxvedit.data.prepare import PrepareConfig, prepare_store
from jaxvedit.data.video import make_sample_dataset, make_sample_video, write_video


def _fake_encoders(calls, fingerprint="fake-v1"):
    """Numpy stand-ins for the VAE / vision tower / tokenizer (the store does not care)."""

    def latents(frames):
        calls.append(len(frames))
        return (frames[:, ::8, ::8, :].astype(np.float32)[..., [0, 1, 2, 0]] / 255.0)

    def vision(frames):
        return np.repeat(frames.mean(axis=(1, 2))[:, None, :2].astype(np.float32), 5, axis=1)

    def tokenize(caps):
        return np.asarray([[len(c)] + [ord(x) for x in c[:7].ljust(7)] for c in caps], np.int32)

    return StoreEncoders(latents, vision, tokenize, fingerprint, "fake-vision", (4, 4, 4), (5, 2), 8,
                         model="fake")


@pytest.fixture
def dataset(tmp_path):
    """5 good clips, one corrupt, one missing, one too short; depth maps for clip1 (and too few
    for clip2)."""
    folder = tmp_path / "data"
    make_sample_dataset(folder, n_videos=5, frames=6, size=32)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    make_sample_video(folder / "short.mp4", frames=2, size=32, seed=7)
    (folder / "depth").mkdir()
    depth = np.repeat(np.linspace(0, 255, 6, dtype=np.uint8)[:, None, None, None], 32, 1).repeat(32, 2).repeat(3, 3)
    write_video(folder / "depth" / "clip1.mp4", depth, 8.0)
    write_video(folder / "depth" / "clip2.mp4", depth[:3], 8.0)  # 3 maps for 6 frames: unusable
    with open(folder / "captions.jsonl", "a") as f:
        for v in ("broken.mp4", "gone.mp4", "short.mp4"):
            f.write(json.dumps({"video": v, "caption": f"caption of {v}"}) + "\n")
        f.write(json.dumps({"video": "clip0.mp4", "caption": "a second caption of clip0"}) + "\n")
    return folder


def _cfg(folder, out, **kw):
    return PrepareConfig(data=str(folder), out=str(out), resolution=32, max_frames=8,
                         videos_per_shard=3, progress=False, dtype="float32", **kw)


def test_prepare_shards_split_resume_report_and_depth(dataset, tmp_path):
    out, calls, log = tmp_path / "store", [], []
    # two processes' worth of work, the second one not yet done: the store is incomplete
    s0 = prepare_store(_cfg(dataset, out, shard=0, num_shards=2), _fake_encoders(calls), log=log.append)
    assert s0["this_process"] == [0, 2] and not s0["complete"]
    with pytest.raises(st.StoreError, match=r"incomplete: 1 of 3 shards missing \(shard 1\)"):
        st.ClipStore(out)
    s1 = prepare_store(_cfg(dataset, out, shard=1, num_shards=2), _fake_encoders(calls), log=log.append)
    assert s1["this_process"] == [1] and s1["complete"]
    store = st.ClipStore(out)
    assert store.num_videos == 5 and sum(calls) == 5 * 6
    reasons = {s["video"].split("/")[-1]: s["reason"] for s in store.skipped}
    assert reasons["broken.mp4"].startswith("does not decode")
    assert reasons["gone.mp4"] == "listed in the annotations but the video file is missing"
    assert reasons["short.mp4"] == "has 2 frames, fewer than --min-frames 3"
    report = json.loads((out / st.REPORT).read_text())
    assert report["complete"] and len(report["skipped"]) == 3 and report["videos"] == 5
    m = store.manifest
    assert (m["dtype"], m["resolution"], m["model_fingerprint"], m["num_shards"]) == ("float32", 32, "fake-v1", 3)
    assert m["depth"] and store.index.has_depth.tolist() == [False, True, False, False, False]
    assert store.index.num_captions.tolist() == [2, 1, 1, 1, 1]
    # a ControlNet run needs depth maps for every video: the ones without are named, with the reason
    assert "clip2.mp4: 3 depth map(s) for 6 video frame(s)" in " ".join(log)
    with pytest.raises(st.StoreError, match=r"--controlnet cn needs a depth map per frame, but 4 video\(s\)"
                       r".*clip0\.mp4.*clip2\.mp4: depth maps .*unusable .*3 depth map\(s\) for 6"):
        store.check_depth("cn")
    assert (out / st.VALIDATION).is_file()

    # resumable: a rerun keeps every finished shard and encodes nothing
    n = sum(calls)
    again = prepare_store(_cfg(dataset, out), _fake_encoders(calls), log=log.append)
    assert (again["written"], again["kept"], sum(calls)) == (0, 3, n)
    # a crash mid-shard leaves only *.tmp (no index): exactly that shard is redone
    name = st.shard_name(2, 3)
    (out / f"{name}.json").unlink()
    (out / f"{name}.array_record").rename(out / f"{name}.array_record.tmp")
    redo = prepare_store(_cfg(dataset, out), _fake_encoders(calls), log=log.append)
    assert (redo["written"], redo["kept"]) == (1, 2)
    # a changed source video: only its shard is re-encoded
    make_sample_video(dataset / "clip4.mp4", frames=6, size=32, seed=11)
    n = sum(calls)
    changed = prepare_store(_cfg(dataset, out), _fake_encoders(calls), log=log.append)
    assert changed["written"] == 1 and sum(calls) - n == 12  # shard 1 again: clip3 and clip4
    # another encoder or dtype for the same folder is refused, naming the keys
    with pytest.raises(st.StoreError, match="other settings or sources \\(model_fingerprint: 'fake-v1' -> 'fake-v2'"):
        prepare_store(_cfg(dataset, out), _fake_encoders(calls, "fake-v2"))
    with pytest.raises(st.StoreError, match="dtype: 'float32' -> 'bfloat16'"):
        prepare_store(dataclasses.replace(_cfg(dataset, out), dtype="bfloat16"), _fake_encoders(calls))

    # depth maps live in the frame records of the same video
    src = MicroBatchSource(store, seed=0, frames=4, batch_size=2, fields=("latents", "depth", "token_ids"))
    b = src[0]
    assert b["depth"].shape == (2, 4, 32, 32, 1) and b["depth"].dtype == np.uint8
    assert abs(float(b["depth"][0, 1].mean()) - float(b["depth"][0, 0].mean()) - 51) < 6  # the ramp


def test_store_checks_name_the_problem(dataset, tmp_path):
    with pytest.raises(st.StoreError, match="store not found"):
        st.ClipStore(tmp_path / "nowhere")
    with pytest.raises(st.StoreError, match="is no clip store \\(no manifest.json\\)"):
        st.ClipStore(dataset)
    out = tmp_path / "store"
    prepare_store(_cfg(dataset, out, vision=False), _fake_encoders([]), log=lambda m: None)
    store = st.ClipStore(out)
    store.check(model_fingerprint="fake-v1", dtype="float32", resolution=32)
    with pytest.raises(st.StoreError, match="prepared with another model \\(encoder fingerprint fake-v1"):
        store.check(model_fingerprint="other")
    with pytest.raises(st.StoreError, match="holds float32 latents, this run computes in bfloat16"):
        store.check(dtype="bfloat16")
    with pytest.raises(st.StoreError, match="prepared at resolution 32, this run asks for --resolution 64"):
        store.check(resolution=64)
    with pytest.raises(st.StoreError, match="has no CLIP vision hidden states"):
        store.check(need_vision=True)
    with pytest.raises(st.StoreError, match="no video has a clip of 9 frames"):
        MicroBatchSource(store, seed=0, frames=9, batch_size=2)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / f"{st.shard_name(1, 3)}.array_record").unlink()
    with pytest.raises(st.StoreError, match="1 of 3 shards missing \\(shard 1\\).*python -m jaxvedit.prepare"):
        st.ClipStore(broken)


def test_loader_is_pure_in_seed_and_position_and_splits_by_rows(dataset, tmp_path):
    out = tmp_path / "store"
    prepare_store(_cfg(dataset, out), _fake_encoders([]), log=lambda m: None)
    store = st.ClipStore(out)
    fields = ("latents", "token_ids", "vision")
    full = MicroBatchSource(store, seed=3, frames=3, stride=2, batch_size=4, fields=fields, length=12)
    b5 = full[5]
    assert b5["latents"].shape == (4, 3, 4, 4, 4) and b5["vision"].shape == (4, 3, 5, 2)
    assert b5["token_ids"].shape == (4, 8) and b5["token_ids"].dtype == np.int32
    again = MicroBatchSource(st.ClipStore(out), seed=3, frames=3, stride=2, batch_size=4, fields=fields)
    for k in fields:
        np.testing.assert_array_equal(b5[k], again[5][k])
    assert not np.array_equal(b5["latents"], full[6]["latents"])
    other_seed = MicroBatchSource(store, seed=4, frames=3, stride=2, batch_size=4, fields=fields)
    assert not np.array_equal(b5["latents"], other_seed[5]["latents"])
    # frames of a clip are adjacent (stride 2) frames of one video: latents follow the frames
    v, start, cap = full.draw(5)
    first = full.frame_key[v[0]] + start[0]
    ref = st.decode_record(full.source[int(first) + 2])["latent"]
    np.testing.assert_array_equal(np.frombuffer(ref, np.float32).reshape(4, 4, 4), b5["latents"][0, 1])
    # two processes' rows together are the one-process batch
    halves = [MicroBatchSource(store, seed=3, frames=3, stride=2, batch_size=4, rows=r, fields=fields)[5]
              for r in ((0, 2), (2, 4))]
    for k in fields:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), b5[k])
    # the Grain pipeline (threads, and worker processes) yields source[start], source[start+1], ...
    for workers in (0, 1):
        got = list(make_dataset(full, start=7, stop=11, threads=2, prefetch=2, workers=workers))
        assert len(got) == 4
        for i, g in enumerate(got):
            np.testing.assert_array_equal(g["latents"], full[7 + i]["latents"])
            np.testing.assert_array_equal(g["token_ids"], full[7 + i]["token_ids"])


def test_prepare_cli_errors(tmp_path, capsys):
    from jaxvedit.prepare import main

    assert main(["--data", str(tmp_path / "nope"), "--model", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    make_sample_dataset(tmp_path / "d", n_videos=1, frames=4, size=32)
    assert main(["--data", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "give --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "d"), "--shard", "2", "--num-shards", "2"])
    assert "--shard 2 must be in [0, --num-shards 2)" in capsys.readouterr().err
