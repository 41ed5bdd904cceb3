"""Metrics (``jaxvedit.metrics``) with known answers.

Figures (observed):
- static video: flicker 0, warp error 0 (exact).
- a smooth random texture rolled 2 px per frame (64x80, 6 frames): Farneback finds the shift
  (median x-flow -2.000 px); warp error (MSE, [0, 1] units) ~5e-6 with flow vs ~1.2e-2 for
  the plain frame difference (no flow), a ratio > 1000. Bars: < 5e-5 and > 5e-3.
- PSNR / SSIM equal scikit-image's to <= 1e-12 (uint8, float64) / 1e-6 (float32, which
  scikit-image computes in float32).
- CLIP: cosines from our towers equal transformers' PyTorch ``CLIPModel`` on the same random
  weights to 1e-5; our preprocessing is within 1/255 (smooth frames) and 3/255 (uniform noise)
  of transformers' ``CLIPImageProcessorPil``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from jaxvedit import metrics as M  # noqa: E402
from jaxvedit.data import synthetic_frames  # noqa: E402


def _texture(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    n = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.float32), (0, 0), 2)
    n = (n - n.min()) / (n.max() - n.min())
    return np.stack([n, n**2, 1 - n], -1)


def _rolled(shift=2, frames=6):
    tex = _texture()
    return np.stack([np.roll(tex, shift * t, axis=1) for t in range(frames)])


# ----------------------------------------------------------------------------------------------
# flicker / warp error


def test_static_video():
    still = np.stack([_texture()] * 4)
    assert M.flicker(still) == 0.0
    assert M.warp_error(still, still) == 0.0
    assert M.warp_error(still, still, use_flow=False) == 0.0
    u8 = (still * 255).astype(np.uint8)
    assert M.flicker(u8) == 0.0 and M.warp_error(u8, u8) == 0.0


def test_flicker_known_value():
    v = np.zeros((3, 4, 4, 3), np.uint8)
    v[1] = 51  # 0 -> 0.2 -> 0
    assert M.flicker(v) == pytest.approx(0.2)
    assert M.flicker(v.astype(np.float64) / 255) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.flicker(v[:1])


def test_flow_direction():
    vid = _rolled()
    fb = M.optical_flow(vid[1], vid[0])  # t+1 -> t: content came from 2 px to the left
    assert np.median(fb[..., 0]) == pytest.approx(-2.0, abs=0.01)
    assert abs(np.median(fb[..., 1])) < 0.01
    warped = M.warp(vid[0], fb)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(warped[inner] - vid[1][inner]).mean() < 3e-3


def test_warp_error_translation():
    vid = _rolled()
    with_flow = M.warp_error(vid, vid)
    no_flow = M.warp_error(vid, vid, use_flow=False)
    assert with_flow < 5e-5, with_flow
    assert no_flow > 5e-3, no_flow
    # an "edit" that keeps the motion stays low; one that flickers does not
    edited = 0.5 * vid + 0.25
    assert M.warp_error(edited, vid) < 5e-5
    flick = edited + 0.1 * (np.arange(6) % 2)[:, None, None, None]
    assert M.warp_error(flick, vid) > 5e-3
    assert M.warp_error(vid, vid, reduction="mae") < 2e-3


def test_occlusion_mask():
    h, w = 20, 30
    fb = np.zeros((h, w, 2), np.float32)
    fb[..., 0] = -2.0
    fw = -fb
    keep = M.occlusion_mask(fb, fw)
    assert not keep[:, :2].any() and keep[:, 2:].all()  # p + w_b outside the frame
    fw_bad = fw.copy()
    fw_bad[5:10, 5:10] = 3.0  # inconsistent forward flow there
    keep = M.occlusion_mask(fb, fw_bad)
    assert not keep[5:10, 7:12].any() and keep[15:, 15:].all()


def test_warp_error_errors():
    vid = _rolled()
    with pytest.raises(ValueError, match="same shape"):
        M.warp_error(vid, vid[:, :32])
    with pytest.raises(ValueError, match="reduction must be"):
        M.warp_error(vid, vid, reduction="l1")
    with pytest.raises(ValueError, match=r"must be \(T, H, W, 3\)"):
        M.warp_error(vid[0], vid[0])


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM against scikit-image


@pytest.mark.parametrize("dtype", ["uint8", "float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_ssim_match_skimage(dtype, seed):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(seed)
    shape = (37 + 10 * seed, 45, 3)
    a = rng.random(shape)
    b = np.clip(a + (0.05 + 0.1 * seed) * rng.standard_normal(shape), 0, 1)
    if dtype == "uint8":
        a, b, dr = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8), 255
    else:
        a, b, dr = a.astype(dtype), b.astype(dtype), 1.0
    tol = 1e-6 if dtype == "float32" else 1e-12
    ref_p = skm.peak_signal_noise_ratio(a, b, data_range=dr)
    ref_s = skm.structural_similarity(a, b, channel_axis=-1, data_range=dr)
    assert abs(M.psnr(a, b, dr) - ref_p) <= tol * abs(ref_p)
    assert abs(M.ssim(a, b, dr) - ref_s) <= tol
    assert M.psnr(a, b) == pytest.approx(ref_p, rel=1e-6)  # default data_range: 255 / 1.0
    # a clip: mean of per-frame values
    clip_a, clip_b = np.stack([a, b]), np.stack([b, b[::-1]])
    per = [skm.structural_similarity(x, y, channel_axis=-1, data_range=dr) for x, y in zip(clip_a, clip_b)]
    assert abs(M.ssim(clip_a, clip_b, dr) - np.mean(per)) <= tol


def test_psnr_ssim_edge_cases():
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert M.psnr(a, a) == np.inf and M.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(a, a[:4])
    with pytest.raises(ValueError, match="smaller than the 7x7 SSIM window"):
        M.ssim(a[:6], a[:6])
    with pytest.raises(ValueError, match="mixed dtypes"):
        M.psnr(a, a / 255.0)


# ----------------------------------------------------------------------------------------------
# CLIP


def _write_tiny_tokenizer(folder):
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
             "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
             "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxvedit.models import clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=23, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=22,
                         bos_token_id=21, pad_token_id=22),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    ref = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # CLIP's init leaves LayerNorms / biases trivial: perturb them
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape))
    ref.save_pretrained(str(folder), safe_serialization=True)
    _write_tiny_tokenizer(folder / "tokenizer")
    text = clip.CLIPTextModelWithProjection.from_pretrained(folder)
    vision = clip.CLIPVisionModelWithProjection.from_pretrained(folder)
    tok = clip.load_tokenizer(folder)
    return ref, text, vision, tok


def _torch_embeds(ref, pixels=None, ids=None):
    import torch

    with torch.no_grad():
        if pixels is not None:
            x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
            e = ref.visual_projection(ref.vision_model(pixel_values=x).pooler_output)
        else:
            x = torch.from_numpy(ids.astype(np.int64))
            e = ref.text_projection(ref.text_model(input_ids=x).pooler_output)
    e = e.numpy().astype(np.float64)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def test_clip_metrics_match_transformers(tiny_clip):
    from jaxvedit.models.clip import tokenize

    ref, text, vision, tok = tiny_clip
    frames, _ = synthetic_frames(5, (48, 64), seed=4)
    img = _torch_embeds(ref, pixels=M.clip_preprocess(frames, 32))
    ids = tokenize(tok, ["lower newer"], max_length=16)
    txt = _torch_embeds(ref, ids=ids)[0]

    ours_img = M.clip_image_embeddings(frames, vision, batch_size=2)  # batches: 2 + 2 + (1 + pad)
    np.testing.assert_allclose(ours_img, img, atol=1e-5)
    cons = M.clip_frame_consistency(frames, vision, batch_size=2)
    assert cons == pytest.approx(float(np.mean(np.sum(img[1:] * img[:-1], -1))), abs=1e-5)
    align = M.clip_text_alignment(frames, "lower newer", text, vision, tok, batch_size=2)
    assert align == pytest.approx(float(np.mean(img @ txt)), abs=1e-5)
    still = np.stack([frames[0]] * 3)
    assert M.clip_frame_consistency(still, vision, batch_size=2) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.clip_frame_consistency(frames[:1], vision)


def test_clip_preprocess_matches_image_processor():
    pil = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    frames, _ = synthetic_frames(3, (64, 96), seed=1)
    noise = np.random.default_rng(0).integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    for x, size, levels in [(frames, 32, 1), (frames, 224, 1), (noise, 24, 3)]:
        proc = pil.CLIPImageProcessorPil(size={"shortest_edge": size},
                                         crop_size={"height": size, "width": size})
        ref = np.asarray(proc(list(x), return_tensors="np")["pixel_values"]).transpose(0, 2, 3, 1)
        ours = M.clip_preprocess(x, size)
        assert ours.shape == ref.shape == (len(x), size, size, 3)
        assert np.max(np.abs(ours - ref) * M.CLIP_STD * 255) <= levels + 1e-3


def test_metrics_on_non_square_frames():
    """Edits may be non-square (e.g. 672x384): the metrics take (T, H, W, 3) of any H, W."""
    skm = pytest.importorskip("skimage.metrics")
    tex = _texture(h=48, w=112)  # 7:3, about 672x384
    vid = np.stack([np.roll(tex, 2 * t, axis=1) for t in range(4)]).astype(np.float64)
    assert M.warp_error(vid, vid) < 5e-5 and M.warp_error(vid, vid, use_flow=False) > 5e-3
    assert M.flicker(vid) == pytest.approx(np.abs(np.diff(vid, axis=0)).mean())
    other = np.clip(vid + 0.05 * np.random.default_rng(0).standard_normal(vid.shape), 0, 1)
    ref = np.mean([skm.structural_similarity(a, b, channel_axis=-1, data_range=1.0)
                   for a, b in zip(vid, other)])
    assert abs(M.ssim(vid, other, 1.0) - ref) <= 1e-12
    assert M.clip_preprocess(vid, 32).shape == (4, 32, 32, 3)
