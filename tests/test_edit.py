"""python -m jaxvedit.edit: the default demo CLI (playable mp4 with the source frame count and
fps), bad input, cross-frame attention, chunking, the features filter, adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvedit.adapters import (LoRAConfig, PromptTokenConfig, PromptTokens, apply_lora,
                               save_adapter)
from jaxvedit.data.video import probe_video, read_video, synthetic_frames, write_video
from jaxvedit.diffusion import BilateralFilterConfig
from jaxvedit.edit import main
from jaxvedit.editing import EditPredictor, Editor, chunk_indices
from jaxvedit.models import load_unet
from jaxvedit.models.tiny import TINY_UNET_CONFIG, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("edit") / "tiny")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames, _ = synthetic_frames(6, 64, seed=1)
    write_video(path, frames, 12)
    return path


@pytest.fixture(scope="module")
def editor(tiny) -> Editor:
    return Editor(str(tiny), batch_frames=8)


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(6, 64, seed=2)[0]


def _run(argv, capsys):
    """main(argv) -> (return code, stderr); argparse errors (SystemExit) count as code 2."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the default CLI


def test_default_demo_cli_writes_playable_video(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxvedit.edit", "--no-progress"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    demo = tmp_path / "runs" / "edit-demo"
    src, out = probe_video(demo / "source.mp4"), probe_video(demo / "edited.mp4")
    assert (src.num_frames, src.fps) == (16, 8.0)
    assert out.codec == "h264"
    assert (out.num_frames, out.fps, out.height, out.width) == (src.num_frames, src.fps, 128, 128)
    v = read_video(demo / "edited.mp4")  # decodes every frame: playable
    assert v.frames.shape == (16, 128, 128, 3) and v.fps == 8.0
    g = read_video(demo / "edited.gif")
    assert g.frames.shape == (16, 128, 128, 3) and abs(g.fps - 8.0) < 0.5
    assert "real weights" in proc.stderr and "--model" in proc.stderr
    # the world model's edit: the red circle turns blue, the striped background stays
    from jaxvedit.world import judge
    from jaxvedit.world.demo import demo_edit
    from jaxvedit.world.render import render

    target = render(demo_edit().target)
    colours = [judge.classify_colour(f) for f in v.frames]
    assert colours.count("blue") >= 14, colours
    assert all(judge.classify_background(f) == "striped" for f in v.frames)
    away = target.background_mask
    err = np.abs(v.frames.astype(float) - target.frames.astype(float)).max(-1)
    assert np.mean(err[away]) < 4.0  # the background is kept (0-255 units; measured 1.3)


# ---------------------------------------------------------------------------------------------
# bad input, each with its message


def test_unreadable_video(tmp_path, tiny, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    rc, err = _run(["--video", bad, "--model", tiny, "--prompt", "a cat", "--resolution", 64,
                    "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "unreadable or corrupt video file" in err and "broken.mp4" in err
    rc, err = _run(["--video", tmp_path / "nope.mp4", "--model", tiny, "--prompt", "a cat",
                    "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "video not found" in err


def test_empty_prompt(tmp_path, sample, tiny, capsys):
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "  ", "--out", tmp_path / "o.mp4"],
                   capsys)
    assert rc == 2 and "empty prompt" in err
    rc, err = _run(["--video", sample, "--model", tiny, "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "empty prompt" in err  # no --prompt at all (outside the demo)


def test_resolution_not_multiple_of_64(tmp_path, sample, tiny, capsys):
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "a cat", "--resolution", 60,
                    "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "resolution=60 must be a positive multiple of 64" in err


def test_output_in_missing_folder(tmp_path, sample, tiny, capsys):
    out = tmp_path / "missing" / "o.mp4"
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "a cat", "--out", out], capsys)
    assert rc == 2 and "output folder does not exist" in err and "missing" in err
    assert not out.parent.exists()
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "a cat", "--out", tmp_path / "o.gif"],
                   capsys)
    assert rc == 2 and "must end in one of" in err


def test_adapter_for_another_model_shape(tmp_path, sample, tiny, capsys):
    other = dict(TINY_UNET_CONFIG, block_out_channels=[16, 32], attention_head_dim=2)
    from jaxvedit.models.unet import UNet2DConditionModel

    unet = nnx.eval_shape(lambda: UNet2DConditionModel(other))
    lora = apply_lora(unet, LoRAConfig(rank=2, targets="all"), nnx.Rngs(0)).lora
    save_adapter(tmp_path / "adapter" / "lora", lora)
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "a cat", "--resolution", 64,
                    "--adapter", tmp_path / "adapter", "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "wrong shape" in err
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A" in err
    assert "file has (16, 2), model expects (32, 2)" in err
    rc, err = _run(["--video", sample, "--model", tiny, "--prompt", "a cat",
                    "--adapter", tmp_path / "nothing", "--out", tmp_path / "o.mp4"], capsys)
    assert rc == 2 and "adapter folder not found" in err


# ---------------------------------------------------------------------------------------------
# cross-frame attention


@pytest.fixture(scope="module")
def unet(tiny):
    return load_unet(tiny)


def _call(model, x, t, ctx):
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x, c: nnx.merge(graphdef, s)(x, t, c))(state, x, ctx))


def test_cross_frame_attention(unet):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((4, 7, 32)), jnp.float32)
    t = jnp.asarray(500, jnp.int32)
    plain = _call(unet, x, t, ctx)
    off = _call(EditPredictor(unet, cross_frame_group=0), x, t, ctx)
    np.testing.assert_array_equal(off, plain)  # off: bit-identical to the plain UNet
    on = _call(EditPredictor(unet, cross_frame_group=4), x, t, ctx)
    rel = np.abs(on - plain).max() / plain.std()
    assert rel > 1e-2  # on: the output changes ...
    np.testing.assert_allclose(on[0], plain[0], atol=1e-5 * plain.std())  # ... except the anchor's
    single = _call(EditPredictor(unet, cross_frame_group=1), x[:1], t, ctx[:1])
    np.testing.assert_allclose(single, plain[:1], atol=1e-5 * plain.std())  # one frame == off
    # groups (CFG branches) are independent: each attends to its own first frame
    two = _call(EditPredictor(unet, cross_frame_group=2), x, t, ctx)
    a = _call(EditPredictor(unet, cross_frame_group=2), x[:2], t, ctx[:2])
    b = _call(EditPredictor(unet, cross_frame_group=2), x[2:], t, ctx[2:])
    np.testing.assert_allclose(two, np.concatenate([a, b]), atol=1e-5 * plain.std())


def test_chunk_indices_cover_every_frame_once():
    for n, bf, carry in [(8, 4, True), (8, 4, False), (7, 3, True), (5, 8, True), (10, 2, True)]:
        chunks = chunk_indices(n, bf, carry)
        got = [idx[k] for idx, keep in chunks for k in keep]
        assert sorted(got) == list(range(n)), (n, bf, carry)
        assert len({len(idx) for idx, _ in chunks}) == 1  # one size: one compiled program
        if carry and n > bf:
            assert all(idx[0] == 0 for idx, _ in chunks)
    with pytest.raises(ValueError, match="batch_frames >= 2"):
        chunk_indices(5, 1, True)


def test_chunked_cross_frame_equals_one_chunk(editor, frames):
    """With the first frame carried, each frame's result depends only on itself and frame 0
    (latent filter: per frame), so chunks of 3 give what one chunk of 6 gives."""
    kw = dict(prompt="a blue circle", source_prompt="a red square", steps=3, guidance_scale=3.0,
              filter=BilateralFilterConfig.latent(), cross_frame=True, progress=False)
    editor.batch_frames = 6
    whole = editor.edit(frames, **kw)
    editor.batch_frames = 3
    chunked = editor.edit(frames, **kw)
    editor.batch_frames = 8
    assert chunked.timings["chunks"] == 3 and whole.timings["chunks"] == 1
    np.testing.assert_allclose(chunked.latents, whole.latents, atol=1e-4 * whole.latents.std())


def test_negative_prompt(editor, frames):
    kw = dict(prompt="a blue circle", source_prompt="a red square", steps=3, guidance_scale=3.0,
              filter=BilateralFilterConfig.none(), progress=False)
    plain = editor.edit(frames, **kw)
    neg = editor.edit(frames, negative_prompt="blurry, low res", **kw)
    np.testing.assert_array_equal(neg.inverted, plain.inverted)  # the inversion does not use it
    assert np.abs(neg.latents - plain.latents).max() > 1e-3  # the guidance does
    with pytest.raises(ValueError, match="negative prompt needs guidance_scale != 1"):
        editor.edit(frames, **{**kw, "guidance_scale": 1.0}, negative_prompt="blurry")


def test_features_filter_path_runs(editor, frames):
    kw = dict(prompt="a blue circle", source_prompt="a red square", steps=3, guidance_scale=3.0,
              progress=False, reconstruct=True)
    feat = editor.edit(frames, filter=BilateralFilterConfig.features(), **kw)
    none = editor.edit(frames, filter=BilateralFilterConfig.none(), **kw)
    assert feat.frames.shape == frames.shape and feat.frames.dtype == np.uint8
    assert np.isfinite(feat.inverted).all()
    assert np.abs(feat.inverted - none.inverted).max() > 1e-4  # the filter acted
    assert feat.reconstruction.shape == frames.shape


# ---------------------------------------------------------------------------------------------
# adapters


def _write_adapter(folder: Path, tiny: Path, with_tokens: bool) -> Path:
    lora = apply_lora(load_unet(tiny), LoRAConfig(rank=2, targets="all", tau=0.5), nnx.Rngs(1)).lora
    rng = np.random.default_rng(3)
    for layer in lora.layers:  # B = 0 at init would be a no-op adapter
        layer.lora_B.value = jnp.asarray(0.5 * rng.standard_normal(layer.lora_B.value.shape), jnp.float32)
    save_adapter(folder / "lora", lora)
    if with_tokens:
        tokens = PromptTokens(PromptTokenConfig(n_share=2, vision_dim=32, context_dim=32,
                                                pooling="stride:2"), rngs=nnx.Rngs(2))
        save_adapter(folder / "prompt_tokens", tokens)
    return folder


def test_adapter_round_trip_cli(tmp_path, sample, tiny, capsys):
    adapter = _write_adapter(tmp_path / "adapter", tiny, with_tokens=True)
    out = tmp_path / "edited.mp4"
    rc, err = _run(["--video", sample, "--model", tiny, "--adapter", adapter, "--prompt", "a cat",
                    "--resolution", 64, "--steps", 3, "--out", out, "--frames-out", tmp_path / "frames",
                    "--no-progress"], capsys)
    assert rc == 0, err
    info = probe_video(out)
    assert (info.num_frames, info.fps) == (6, 12.0)
    assert len(list((tmp_path / "frames").glob("*.png"))) == 6


def test_adapter_gate_and_effect(tmp_path, tiny, frames):
    adapter = _write_adapter(tmp_path / "adapter", tiny, with_tokens=False)
    ed = Editor(str(tiny), adapter=str(adapter), batch_frames=8)
    assert ed.lora is not None and ed.tokens is None
    kw = dict(prompt="a blue circle", source_prompt="a red square", steps=3, guidance_scale=3.0,
              progress=False)
    plain = ed.edit(frames, use_adapter=False, **kw)
    closed = ed.edit(frames, lora_tau=1.0, **kw)  # t >= 1000 never: the gate never opens
    np.testing.assert_array_equal(closed.latents, plain.latents)
    acting = ed.edit(frames, lora_tau=0.0, **kw)
    assert np.abs(acting.latents - plain.latents).max() > 1e-3
