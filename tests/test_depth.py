"""The Flax Depth Anything port against transformers (random weights, fp32): tiny configs and the
real Depth-Anything-V2-Small config, PyTorch's interpolation, the image processor, the depth
pipeline's output format, and the named errors."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from flax import nnx
from reference import nchw, nhwc, randomize_, rel_err

from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

from jaxvedit.models.depth import (DepthEstimator, DepthProcessor, DepthProcessorConfig,
                                   check_depth_maps, depth_to_image)
from jaxvedit.models.depth_anything import load_depth_model
from jaxvedit.models.resize import interpolate
from jaxvedit.models.tiny_controlnet import TINY_DEPTH_PROCESSOR

TOL = 1e-4


def _random_depth_model(config, seed):
    ref = randomize_(DepthAnythingForDepthEstimation(config).eval(), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # layer scales, position embeddings and CLS far from their init
        for name, p in ref.named_parameters():
            if name.endswith(("lambda1", "position_embeddings", "cls_token")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g) + (1.0 if "lambda1" in name else 0.0))
    return ref


def _parity(tmp_path, config, shapes, seed):
    ref = _random_depth_model(config, seed)
    ref.save_pretrained(tmp_path / "depth")
    ours = load_depth_model(tmp_path / "depth")
    gd, st = nnx.split(ours)
    run = jax.jit(lambda s, x: nnx.merge(gd, s)(x))
    errs = []
    for hw in shapes:
        x = np.random.RandomState(0).randn(1, 3, *hw).astype(np.float32)
        with torch.no_grad():
            r = ref(torch.from_numpy(x)).predicted_depth.numpy()
        errs.append(rel_err(np.asarray(run(st, jnp.asarray(nhwc(x)))), r))
    return max(errs)


def test_interpolation_is_torch():
    x = np.random.RandomState(0).randn(2, 3, 7, 10).astype(np.float32)
    for mode in ("bilinear", "bicubic"):
        for ac in (False, True):
            for size in ((14, 20), (4, 5), (7, 10), (9, 3)):
                ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode,
                                                      align_corners=ac).numpy()
                out = nchw(interpolate(jnp.asarray(nhwc(x)), size, mode=mode, align_corners=ac))
                np.testing.assert_allclose(out, ref, atol=2e-6, err_msg=f"{mode} {ac} {size}")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                          align_corners=True).numpy()
    out = nchw(interpolate(jnp.asarray(nhwc(x)), scale_factor=2, mode="bilinear", align_corners=True))
    np.testing.assert_allclose(out, ref, atol=2e-6)


TINY_BACKBONE = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     image_size=28, patch_size=14, out_indices=[1, 2, 3, 4],
                     reshape_hidden_states=False, mlp_ratio=2)


@pytest.mark.parametrize("kind", ["relative", "metric"])
def test_tiny_depth_anything_matches_transformers(tmp_path, kind):
    """Square input at the pre-training grid (no position interpolation) and a non-square one
    (bicubic position-embedding interpolation)."""
    cfg = DepthAnythingConfig(backbone_config=TINY_BACKBONE, reassemble_hidden_size=32,
                              neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16,
                              head_hidden_size=8, depth_estimation_type=kind,
                              max_depth=20 if kind == "metric" else 1)
    err = _parity(tmp_path, cfg, [(28, 28), (42, 70)] if kind == "relative" else [(56, 42)], seed=3)
    print(f"Depth Anything tiny ({kind}): max|diff|/std = {err:.3e}")
    assert err <= TOL


@pytest.mark.slow
def test_depth_anything_v2_small_config_matches_transformers(tmp_path):
    """Depth-Anything-V2-Small's config (ViT-S/14 Dinov2, neck 48-384, fusion 64), random
    weights, a 518 x 392 input (position embeddings interpolated from 37 x 37 to 37 x 28)."""
    cfg = DepthAnythingConfig(backbone_config=dict(
        model_type="dinov2", hidden_size=384, num_attention_heads=6, num_hidden_layers=12,
        image_size=518, patch_size=14, out_indices=[9, 10, 11, 12], reshape_hidden_states=False,
        layerscale_value=1.0, mlp_ratio=4), reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
    err = _parity(tmp_path, cfg, [(518, 392)], seed=0)
    print(f"Depth Anything V2 Small config, 518x392: max|diff|/std = {err:.3e}")
    assert err <= TOL


def test_processor_matches_transformers():
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    ref = DPTImageProcessorPil(do_resize=True, size={"height": 518, "width": 518},
                               keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
                               do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225])
    ours = DepthProcessor(DepthProcessorConfig())
    rng = np.random.RandomState(0)
    for hw in ((64, 96), (300, 200), (512, 512)):
        frames = rng.randint(0, 256, (2, *hw, 3)).astype(np.uint8)
        want = ref(list(frames), return_tensors="np")["pixel_values"]
        got = ours(frames)
        assert got.shape == nhwc(want).shape, hw
        np.testing.assert_allclose(got, nhwc(want), atol=1e-5, err_msg=str(hw))


def test_estimator_matches_transformers_pipeline(tmp_path):
    """``DepthEstimator`` (processor, model, bicubic resize back, min-max to uint8) against
    transformers' ``depth-estimation`` pipeline on the same tiny random model."""
    import json

    from transformers import pipeline

    cfg = DepthAnythingConfig(backbone_config={**TINY_BACKBONE, "image_size": 56},
                              reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 24, 32],
                              fusion_hidden_size=16, head_hidden_size=8)
    ref = _random_depth_model(cfg, 11)
    with torch.no_grad():  # a positive head (ReLU): depth maps with a range
        ref.head.conv3.bias.fill_(0.5)
    ref.save_pretrained(tmp_path / "depth")
    (tmp_path / "depth" / "preprocessor_config.json").write_text(json.dumps(TINY_DEPTH_PROCESSOR))
    frames = np.random.RandomState(1).randint(0, 256, (3, 48, 64, 3)).astype(np.uint8)
    from PIL import Image

    pipe = pipeline("depth-estimation", model=str(tmp_path / "depth"), device="cpu")
    want = np.stack([np.asarray(pipe(Image.fromarray(f))["depth"]) for f in frames])
    got = DepthEstimator(tmp_path / "depth")(frames)
    assert got.shape == (3, 48, 64, 3) and got.dtype == np.uint8
    assert (got[..., 0] == got[..., 2]).all()
    diff = np.abs(got[..., 0].astype(int) - want.astype(int))
    print(f"depth maps vs transformers pipeline: max {diff.max()} grey levels, "
          f"{(diff > 0).mean():.2%} of pixels differ")
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_depth_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"3 depth map\(s\) for 4 video frame\(s\)"):
        check_depth_maps(np.zeros((3, 8, 8, 3)), 4, (8, 8))
    with pytest.raises(ValueError, match="maps of size 8x8 do not match the video frames' 8x16"):
        check_depth_maps(np.zeros((4, 8, 8, 3)), 4, (8, 16))
    check_depth_maps(np.zeros((4, 4, 8, 3)), 4, (8, 16))  # same aspect ratio: fine
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        DepthProcessor()(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="normalize must be one of"):
        depth_to_image(np.zeros((1, 4, 4)), "video")
    (tmp_path / "config.json").write_text('{"model_type": "dpt"}')
    with pytest.raises(ValueError, match="only Depth Anything"):
        load_depth_model(tmp_path)
