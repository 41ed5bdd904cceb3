"""Depth-ControlNet editing: ``edit --controlnet PATH --depth auto|FOLDER`` and ``compare`` on the
tiny random models, the depth cache, the programmatic (benchmark-row) form, and the named
errors (a ControlNet that does not fit the UNet, depth maps of the wrong count or size, a missing
conditioning image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxvedit.data.video import synthetic_frames, write_frames, write_video
from jaxvedit.editing.config import EditConfig

COMMON = ["--resolution", "64", "--steps", "3", "--batch-frames", "4", "--filter", "none",
          "--guidance-scale", "1", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from jaxvedit.models.tiny import make_tiny_model
    from jaxvedit.models.tiny_controlnet import make_tiny_controlnet, make_tiny_depth_model

    root = tmp_path_factory.mktemp("cn_edit")
    frames, _ = synthetic_frames(6, 64, seed=2)
    write_video(root / "clip.mp4", frames, 8)
    return {"root": root, "model": make_tiny_model(root / "tiny"),
            "cn": make_tiny_controlnet(root / "cn"), "depth": make_tiny_depth_model(root / "depth"),
            "video": root / "clip.mp4"}


def test_edit_cli_with_controlnet_and_auto_depth(setup, capsys, monkeypatch):
    from jaxvedit.edit import main

    s, out = setup, setup["root"] / "edited.mp4"
    rc = main(["--model", str(s["model"]), "--video", str(s["video"]), "--prompt", "a blue square",
               "--out", str(out), "--controlnet", str(s["cn"]), "--depth", "auto", "--depth-model",
               str(s["depth"]), "--depth-cache", str(s["root"] / "cache"), "--guess-mode",
               "--control-end", "0.7", *COMMON])
    assert rc == 0 and out.is_file()
    summary = json.loads(capsys.readouterr().out.split("\n\nwrote")[0])
    assert summary["controlnet"] == str(s["cn"]) and summary["depth"] == "auto"
    cached = list((s["root"] / "cache").glob("depth-*.npz"))
    assert len(cached) == 1
    # a second request for the same frames reads the cache (the estimator is not called)
    from jaxvedit.editing import controlnet as ec
    from jaxvedit.editing.pipeline import load_source_frames

    frames, _ = load_source_frames(EditConfig(video=str(s["video"]), prompt="x", resolution=64))
    monkeypatch.setattr("jaxvedit.models.depth.compute_depth", lambda *a, **k: 1 / 0)
    maps = ec.auto_depth(frames, model=str(s["depth"]), cache_dir=s["root"] / "cache", log=print)
    assert maps.shape == (6, 64, 64, 3) and maps.dtype == np.uint8
    assert "cached depth maps" in capsys.readouterr().out


def test_compare_with_controlnet_variant(setup):
    from jaxvedit.compare import CompareConfig, run_compare

    s = setup
    cfg = CompareConfig(video=str(s["video"]), model=str(s["model"]), prompt="a blue square",
                        resolution=64, steps=3, batch_frames=4, guidance_scale=1.0,
                        variants=("controlnet",), controlnet=str(s["cn"]), depth="auto",
                        depth_model=str(s["depth"]), depth_cache=str(s["root"] / "cache"),
                        guess_mode=True, control_end=0.7, output_dir=str(s["root"] / "cmp"),
                        progress=False)
    res = run_compare(cfg)
    (row,) = res["variants"]
    assert row["variant"] == "controlnet" and row["controlnet"] and np.isfinite(row["recon_psnr"])
    assert (s["root"] / "cmp" / "results.md").is_file()
    with pytest.raises(ValueError, match=r"need --controlnet"):
        run_compare(CompareConfig(video=str(s["video"]), model=str(s["model"]), prompt="x",
                                  resolution=64, variants=("latent+controlnet",),
                                  output_dir=str(s["root"] / "cmp2")))


def test_programmatic_row_and_editor_errors(setup):
    """The benchmark-row form with given depth maps; the editor's named errors."""
    from jaxvedit.editing.controlnet import edit_with_controlnet
    from jaxvedit.editing.pipeline import Editor, load_source_frames

    s = setup
    frames, _ = load_source_frames(EditConfig(video=str(s["video"]), prompt="x", resolution=64))
    editor = Editor(str(s["model"]), controlnet=str(s["cn"]), batch_frames=4)
    depth = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None, None],
                            (6, 64, 64, 3))
    out = edit_with_controlnet(editor, frames, "", "a blue square", depth=depth, steps=3,
                               guidance_scale=1.0, guess_mode=True, control_end=0.7, progress=False)
    assert out.shape == frames.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="missing conditioning image"):
        editor.edit(frames, prompt="x", steps=3)
    with pytest.raises(ValueError, match=r"5 conditioning image\(s\) for 6 frame\(s\)"):
        editor.edit(frames, prompt="x", steps=3, control=depth[:5])
    with pytest.raises(ValueError, match="conditioning images are 32x32, the frames 64x64"):
        editor.edit(frames, prompt="x", steps=3, control=depth[:, :32, :32])


def test_controlnet_for_another_unet_is_refused(setup, tmp_path):
    from safetensors.numpy import save_file

    from jaxvedit.editing.pipeline import Editor
    from jaxvedit.models.controlnet import ControlNetModel
    from jaxvedit.models.tiny import random_torch_state_dict
    from jaxvedit.models.tiny_controlnet import TINY_CONTROLNET_CONFIG

    cfg = {**TINY_CONTROLNET_CONFIG, "block_out_channels": [16, 32]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(random_torch_state_dict(lambda: ControlNetModel(cfg), 0),
              str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="does not fit the UNet: block_out_channels"):
        Editor(str(setup["model"]), controlnet=str(tmp_path))  # refused before any edit


def test_depth_folder_count_size_and_missing(setup, tmp_path, capsys):
    from jaxvedit.edit import main
    from jaxvedit.editing.controlnet import source_depth

    s = setup
    base = dict(video=str(s["video"]), prompt="x", resolution=64, controlnet=str(s["cn"]))
    good = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    write_frames(tmp_path / "good", good)
    maps = source_depth(EditConfig(**base, depth=str(tmp_path / "good")), np.zeros((6, 64, 64, 3)))
    assert maps.shape == (6, 64, 64, 3)  # half-size maps, same aspect ratio: resized
    write_frames(tmp_path / "few", good[:4])
    with pytest.raises(ValueError, match=r"4 depth map\(s\) for 6 video frame\(s\)"):
        source_depth(EditConfig(**base, depth=str(tmp_path / "few")), np.zeros((6, 64, 64, 3)))
    write_frames(tmp_path / "wide", np.zeros((6, 32, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="maps of size 32x64 do not match the video frames' 64x64"):
        source_depth(EditConfig(**base, depth=str(tmp_path / "wide")), np.zeros((6, 64, 64, 3)))
    with pytest.raises(ValueError, match="missing conditioning image"):
        source_depth(EditConfig(**base), np.zeros((6, 64, 64, 3)))
    rc = main(["--model", str(s["model"]), "--video", str(s["video"]), "--prompt", "x",
               "--out", str(tmp_path / "o.mp4"), "--controlnet", str(s["cn"]), *COMMON])
    assert rc == 2 and "missing conditioning image" in capsys.readouterr().err
    rc = main(["--model", str(s["model"]), "--video", str(s["video"]), "--prompt", "x",
               "--out", str(tmp_path / "o.mp4"), "--depth", "auto", *COMMON])
    assert rc == 2 and "no --controlnet" in capsys.readouterr().err
