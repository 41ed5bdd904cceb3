"""LoRA-Edit (paper 003) on SD1.5: random training masks against diffusers' script, the
inpainting fine-tune step, mask handling and named errors, and an end-to-end run of
``python -m jaxvedit.edit --method lora-edit`` on a tiny random inpainting model."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image, ImageDraw

from jaxvedit.adapters import load_adapter
from jaxvedit.data.video import read_video, synthetic_frames, write_frames, write_video
from jaxvedit.edit import main
from jaxvedit.editing import Editor
from jaxvedit.editing.lora_edit import LoRAEditOptions, keep_mask, lora_edit
from jaxvedit.models.inpaint import inpainting_unet_from_text_unet
from jaxvedit.models.tiny import make_tiny_model
from jaxvedit.models.unet import UNet2DConditionModel
from jaxvedit.training.inpaint import (inpaint_loss, make_inpaint_batch, make_inpaint_finetune_step,
                                       random_mask, random_masks)
from jaxvedit.training.lora_edit import LoRAEditTrainConfig, appearance_schedule, video_clip_indices

T, SIZE = 6, 64


# ---------------------------------------------------------------------------------------------
# the reference: diffusers examples/research_projects/dreambooth_inpaint/train_dreambooth_inpaint.py


def reference_random_mask(im_shape, ratio=1, mask_full_image=False):
    mask = Image.new("L", im_shape, 0)
    draw = ImageDraw.Draw(mask)
    size = (random.randint(0, int(im_shape[0] * ratio)), random.randint(0, int(im_shape[1] * ratio)))
    # use this to always mask the whole image
    if mask_full_image:
        size = (int(im_shape[0] * ratio), int(im_shape[1] * ratio))
    limits = (im_shape[0] - size[0] // 2, im_shape[1] - size[1] // 2)
    center = (random.randint(size[0] // 2, limits[0]), random.randint(size[1] // 2, limits[1]))
    draw_type = random.randint(0, 1)
    if draw_type == 0 or mask_full_image:
        draw.rectangle(
            (center[0] - size[0] // 2, center[1] - size[1] // 2, center[0] + size[0] // 2, center[1] + size[1] // 2),
            fill=255,
        )
    else:
        draw.ellipse(
            (center[0] - size[0] // 2, center[1] - size[1] // 2, center[0] + size[0] // 2, center[1] + size[1] // 2),
            fill=255,
        )

    return mask


@pytest.mark.parametrize("ratio,full", [(1, False), (0.5, False), (1, True)])
def test_random_mask_matches_diffusers_inpainting_script(ratio, full):
    for seed in range(20):
        random.seed(seed)
        ref = np.asarray(reference_random_mask((48, 40), ratio, full), np.float32) / 255.0
        ours = random_mask(40, 48, random.Random(seed), ratio=ratio, full_image=full)
        np.testing.assert_array_equal(ours, ref)
    masks = random_masks(400, 16, 16, 0)
    full_share = float(np.mean(masks.reshape(400, -1).min(axis=1) == 1.0))
    assert 0.17 < full_share < 0.33, full_share  # SD-inpainting: "in 25% mask everything"
    assert set(np.unique(masks)) <= {0.0, 1.0}


def test_keep_mask_conventions_and_training_schedules():
    m = np.zeros((2, 4, 4), np.uint8)
    m[:, :2] = 255
    np.testing.assert_array_equal(keep_mask(m, "keep"), m > 0)
    np.testing.assert_array_equal(keep_mask(m, "edit"), m == 0)
    with pytest.raises(ValueError, match="mask_mode"):
        keep_mask(m, "white")
    rng = np.random.default_rng(0)
    idx = video_clip_indices(20, 5, rng)
    assert idx[0] == 0 and len(idx) == 5 and idx == sorted(set(idx))
    assert video_clip_indices(4, 8, rng) == [0, 1, 2, 3]
    sched = appearance_schedule(2, 19, 9, rng)  # one epoch: video once, each frame 9 times
    assert sorted(sched) == sorted([-1] + [0] * 9 + [1] * 9)
    o = LoRAEditOptions.from_kwargs(steps=3, train_steps=5, rank=8, seed=2, cross_frame=False)
    assert (o.steps, o.seed, o.cross_frame) == (3, 2, False)
    assert (o.train.train_steps, o.train.rank, o.train.seed, o.train.cross_frame) == (5, 8, 2, False)
    t = LoRAEditTrainConfig(rank=4)
    o = LoRAEditOptions.from_kwargs(seed=9, train=t)
    assert o.seed == 9 and o.train is not t and o.train == t  # an explicit train config is kept
    assert t.lora_config().alpha == 4.0 and t.lora_config().tau is None  # alpha = rank, ungated


#: the smallest UNet of the supported block types (one level): a cheap compile
MIN_UNET = {"block_out_channels": [16], "layers_per_block": 1, "down_block_types": ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"], "cross_attention_dim": 16, "attention_head_dim": 2,
            "norm_num_groups": 4, "in_channels": 4, "out_channels": 4}
MIN_VAE = {"block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4,
           "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


def _random(build, seed):
    """A model with random weights, without eager per-layer initialisation (slow on CPU)."""
    from jaxvedit.models.tiny import random_torch_state_dict
    from jaxvedit.models.weights import load_torch_state_dict

    model = nnx.eval_shape(build)
    load_torch_state_dict(model, random_torch_state_dict(build, seed), what="random model")
    return model


def test_inpaint_finetune_step_learns_the_new_channels():
    from jaxvedit.diffusion import NoiseSchedule
    from jaxvedit.models.vae import AutoencoderKL

    text_unet = _random(lambda: UNet2DConditionModel(MIN_UNET), 0)
    unet = inpainting_unet_from_text_unet(text_unet)
    vae = _random(lambda: AutoencoderKL(MIN_VAE), 1)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ctx = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    batch = make_inpaint_batch(vae, images, ctx, 0, key=jax.random.key(0), uncond_context=ctx[:1] * 0)
    assert batch["mask"].shape == (2, 8, 8, 1) and batch["masked_latents"].shape == (2, 8, 8, 4)
    state, step = make_inpaint_finetune_step(unet, optax.adam(3e-3), uncond_prob=0.1)
    assert not np.asarray(state.params["conv_in"]["kernel"].value)[:, :, 4:].any()
    losses = [float(state.step(step, batch, jax.random.key(7))[0]) for _ in range(4)]
    print("inpainting fine-tune losses (same batch and key):", [f"{x:.4f}" for x in losses])
    assert losses[-1] < losses[0]
    text_w = np.asarray(text_unet.mid_block.resnets[0].conv1.kernel.value).copy()
    state.write_back(unet)
    assert np.abs(np.asarray(unet.conv_in.kernel.value)[:, :, 4:]).max() > 0  # the new channels learn
    assert not np.array_equal(np.asarray(unet.mid_block.resnets[0].conv1.kernel.value), text_w)
    np.testing.assert_array_equal(np.asarray(text_unet.mid_block.resnets[0].conv1.kernel.value),
                                  text_w)  # the text-to-image UNet it was made from is untouched
    with pytest.raises(ValueError, match="uncond_context"):
        inpaint_loss(unet, {k: v for k, v in batch.items() if k != "uncond_context"},
                     jax.random.key(0), NoiseSchedule.sd15(), uncond_prob=0.5)
    with pytest.raises(ValueError, match="needs an inpainting UNet"):
        make_inpaint_finetune_step(text_unet)


# ---------------------------------------------------------------------------------------------
# inputs, errors, end to end


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A clip (mp4) whose coloured square is to be regenerated, its mask (PNG folder, white =
    keep), the edited first frame (square painted blue) and an edited later frame."""
    root = tmp_path_factory.mktemp("lora-edit")
    frames, _ = synthetic_frames(T, SIZE, seed=3, color="red", shape="square", direction="right")
    write_video(root / "clip.mp4", frames, 8)
    frames = read_video(root / "clip.mp4").frames  # what the CLI reads (lossy)
    shape = np.abs(frames.astype(np.int32) - (220, 40, 40)).sum(-1) < 90
    region = np.stack([cv2.dilate(s.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for s in shape])
    keep = ~region
    write_frames(root / "mask", keep.astype(np.uint8)[..., None].repeat(3, -1) * 255)
    first = frames[0].copy()
    first[shape[0]] = (40, 80, 220)
    Image.fromarray(first).save(root / "first.png")
    (root / "later").mkdir()
    later = frames[3].copy()
    later[shape[3]] = (40, 80, 220)
    Image.fromarray(later).save(root / "later" / "00003.png")
    return {"root": root, "frames": frames, "keep": keep, "first": first}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_tiny_model(root / "inpaint", inpainting=True), make_tiny_model(root / "t2i")


@pytest.fixture(scope="module")
def editor(models):
    return Editor(str(models[0]), batch_frames=4)


def _run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def _argv(clip, model, out, **over):
    args = {"--method": "lora-edit", "--model": model, "--video": clip["root"] / "clip.mp4",
            "--mask": clip["root"] / "mask", "--edited-first-frame": clip["root"] / "first.png",
            "--prompt": "a blue square", "--source-prompt": "a red square", "--resolution": SIZE,
            "--out": out, "--no-progress": None, **over}
    return [x for k, v in args.items() for x in ((k,) if v is None else (k, v))]


def test_named_errors_programmatic(editor, clip):
    frames, keep, first = clip["frames"], clip["keep"], clip["first"]
    kw = dict(mask=keep, edited_first_frame=first)
    with pytest.raises(ValueError, match="mask has 5 frames, the video 6"):
        lora_edit(editor, frames, "", "a blue square", **{**kw, "mask": keep[:5]})
    with pytest.raises(ValueError, match="mask frames are 64x32.*video frames 64x64"):
        lora_edit(editor, frames, "", "a blue square", **{**kw, "mask": keep[:, :, :32]})
    with pytest.raises(ValueError, match="edited first frame is 32x64.*video frames 64x64"):
        lora_edit(editor, frames, "", "a blue square", **{**kw, "edited_first_frame": first[:32]})
    with pytest.raises(ValueError, match="edited frame 2 is 64x48"):
        lora_edit(editor, frames, "", "a blue square", edited_frames={2: first[:, :48]}, **kw)
    with pytest.raises(ValueError, match="edited frame index 0 is outside the later frames"):
        lora_edit(editor, frames, "", "a blue square", edited_frames={0: first}, **kw)
    with pytest.raises(ValueError, match="unknown LoRA-Edit option 'rnak'"):
        lora_edit(editor, frames, "", "a blue square", rnak=4, **kw)


def test_named_errors_cli(models, clip, tmp_path, capsys):
    root = clip["root"]
    out = tmp_path / "out.mp4"
    short = tmp_path / "short-mask"
    write_frames(short, np.repeat(clip["keep"][:4, ..., None].astype(np.uint8) * 255, 3, -1))
    rc, err = _run(_argv(clip, models[0], out, **{"--mask": short}), capsys)
    assert rc == 2 and "has 4 frames, the video 6" in err
    small = tmp_path / "small-mask"
    write_frames(small, np.zeros((T, 32, 32, 3), np.uint8))
    rc, err = _run(_argv(clip, models[0], out, **{"--mask": small}), capsys)
    assert rc == 2 and "mask must have the video's size" in err
    Image.fromarray(clip["first"][:48, :48]).save(tmp_path / "small.png")
    rc, err = _run(_argv(clip, models[0], out, **{"--edited-first-frame": tmp_path / "small.png"}), capsys)
    assert rc == 2 and "edited first frame" in err and "is 48x48 (HxW), the video frames 64x64" in err
    argv = _argv(clip, models[0], out)
    i = argv.index("--edited-first-frame")
    rc, err = _run(argv[:i] + argv[i + 2:], capsys)
    assert rc == 2 and "needs --edited-first-frame" in err
    rc, err = _run(_argv(clip, models[1], out), capsys)  # a text-to-image model
    assert rc == 2 and "--method lora-edit" in err and "needs an inpainting UNet" in err
    assert "in_channels=4" in err
    assert not out.exists()
    assert root.is_dir()


def test_end_to_end_train_edit_write(models, clip, editor, tmp_path, capsys):
    """The CLI trains (video + appearance stage), edits and writes the video and the LoRA; the
    programmatic edit with that LoRA gives the same frames and keeps the unedited latents."""
    from jaxvedit.diffusion.inpaint import resize_mask_nearest

    out, frames_out, lora_dir = tmp_path / "edited.mp4", tmp_path / "frames", tmp_path / "lora"
    rc, err = _run(_argv(clip, models[0], out, **{
        "--edited-frames": clip["root"] / "later", "--lora-edit-steps": 3,
        "--lora-edit-appearance-steps": 2, "--lora-edit-rank": 4, "--steps": 4,
        "--batch-frames": 4, "--frames-out": frames_out, "--lora-edit-save": lora_dir}), capsys)
    assert rc == 0, err[-3000:]
    video = read_video(out)
    assert video.frames.shape == (T, SIZE, SIZE, 3) and video.fps == 8.0
    edited = read_video(frames_out).frames  # lossless copy of the output
    lora = load_adapter(lora_dir, editor.unet)
    assert lora.config.rank == 4 and lora.config.tau is None
    assert max(float(np.abs(np.asarray(layer.lora_B.value)).max()) for layer in lora.layers) > 0

    res = lora_edit(editor, clip["frames"], "a red square", "a blue square", mask=clip["keep"],
                    edited_first_frame=clip["first"], lora=lora, steps=4)
    assert res.frames.shape == (T, SIZE, SIZE, 3) and res.latents.shape == (T, 8, 8, 4)
    assert np.abs(res.frames.astype(int) - edited.astype(int)).max() <= 1  # CLI == programmatic
    # unedited latents are the source's exactly; the first frame is the edited one's
    src = clip["frames"].copy()
    src[0] = clip["first"]
    src_lat = editor.encode_frames(src)
    regen = resize_mask_nearest((~res.keep)[..., None].astype(np.float32), (8, 8))[..., 0] > 0
    assert not regen[0].any() and regen[1:].any()
    np.testing.assert_array_equal(res.latents[~regen], src_lat[~regen])
    assert np.abs(res.latents[regen] - src_lat[regen]).mean() > 0.1  # regenerated
    # pixels: the VAE round trip of the source where kept. A random VAE decoder is not local (its
    # GroupNorm statistics and mid-block attention see the regenerated latents too), so later
    # frames are compared two latent cells away from any regenerated one, against the error in
    # the regenerated region (measured: ~18 vs ~74 on 0-255)
    roundtrip = editor.decode_latents(src_lat).astype(np.float64)
    diff = np.abs(res.frames.astype(np.float64) - roundtrip).mean(-1)
    near = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) for m in regen]) > 0
    far = np.kron(~near, np.ones((8, 8))) > 0
    err_regen = diff[1:][np.kron(regen, np.ones((8, 8)))[1:] > 0].mean()
    err_far = diff[1:][far[1:]].mean()
    print(f"mean |edited - VAE round trip| (0-255): first frame {diff[0].mean():.2f}, kept "
          f"pixels >= 2 latent cells from the mask {err_far:.2f}, regenerated pixels {err_regen:.2f}")
    assert diff[0].max() == 0  # frame 0: every latent kept
    assert err_far < err_regen / 2
