"""The world's conditioned models on CPU: a smoke run of the ControlNet and inpainting stages on a
tiny world pipeline whose exports load in ours and in diffusers; the masks and conditioning images
the stages draw; the shipped depth ControlNet and inpainting pipeline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvedit.world.train_conditioned import (MASK_SHARES, ConditionedTrainConfig, depth_condition,
                                              dilate, inpaint_masks, random_shape_masks,
                                              train_conditioned)


@pytest.fixture(scope="module")
def tiny_world(tiny_world_run):
    return tiny_world_run[0] / "pipeline"  # conftest: a tiny world pipeline, trained once


def test_stages_train_only_their_model_and_export_loadable_folders(tiny_world, tmp_path):
    torch = pytest.importorskip("torch")
    from diffusers import ControlNetModel as TorchControlNet
    from diffusers import UNet2DConditionModel as TorchUNet

    from jaxvedit.models.controlnet import controlnet_from_unet
    from jaxvedit.models.controlnet_io import load_controlnet
    from jaxvedit.models.loading import load_unet

    cfg = ConditionedTrainConfig(output_dir=str(tmp_path / "run"), base=str(tiny_world), scenes=8,
                                 frames=4, controlnet_steps=3, controlnet_batch=2, inpaint_steps=3,
                                 inpaint_batch=2, progress=False, dtype="float32")
    summary = train_conditioned(cfg)
    assert set(summary["stage_seconds"]) == {"controlnet", "inpaint", "export"}
    for stage in ("controlnet", "inpaint"):
        rows = [json.loads(line) for line in (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(np.isfinite(r["loss"]) for r in rows)
    base = load_unet(tiny_world)
    cn = load_controlnet(summary["exported"]["controlnet"])
    init = controlnet_from_unet(base, seed=cfg.seed + 11)
    moved = [float(jnp.max(jnp.abs(a - b.astype(a.dtype)))) for a, b in
             zip(jax.tree.leaves(nnx.state(init, nnx.Param)), jax.tree.leaves(nnx.state(cn, nnx.Param)))]
    assert max(moved) > 0  # the ControlNet trained (its zero convolutions too)
    # the UNet stayed as it was: the run never writes the base pipeline
    again = load_unet(tiny_world)
    for a, b in zip(jax.tree.leaves(nnx.state(base, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    u9 = load_unet(summary["exported"]["inpaint_unet"], subfolder=None)
    assert u9.config.in_channels == 9 and u9.config.out_channels == 4
    # both load in diffusers; the exported weights are float16, as shipped
    from safetensors import safe_open

    tcn = TorchControlNet.from_pretrained(summary["exported"]["controlnet"], torch_dtype=torch.float32)
    tu9 = TorchUNet.from_pretrained(summary["exported"]["inpaint_unet"], torch_dtype=torch.float32)
    assert tcn.config.conditioning_channels == 3 and tu9.config.in_channels == 9
    for folder in summary["exported"].values():
        with safe_open(f"{folder}/diffusion_pytorch_model.safetensors", "np") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"float16"}


def test_inpaint_masks_are_the_documented_kinds():
    from jaxvedit.world.data import pool_arrays, training_scenes
    from jaxvedit.world.render import render_maps_batch

    arr = {k: jnp.asarray(v) for k, v in pool_arrays(training_scenes(64, frames=4)).items()}
    rgb, depth, vis = render_maps_batch(arr, jnp.zeros(64, jnp.int32), size=128)
    assert rgb.shape == (64, 128, 128, 3) and depth.shape == (64, 128, 128) and vis.shape[-1] == 2
    masks = np.asarray(inpaint_masks(jax.random.key(0), vis, 128))
    assert masks.shape == (64, 128, 128) and set(np.unique(masks)) <= {0.0, 1.0}
    objects = np.asarray(jnp.any(vis > 0, axis=-1))
    full = masks.reshape(64, -1).all(axis=1)
    assert 0.05 < full.mean() < 0.5  # 25 % by construction (and a random shape may cover all)
    # a background mask regenerates no object pixel; an object mask covers one object entirely
    kinds = []
    for m, o, v in zip(masks, objects, np.asarray(vis)):
        if m.all():
            kinds.append("full")
        elif not (m.astype(bool) & o).any() and m.sum() > 0.5 * (~o).sum():
            kinds.append("background")
        elif any(((v[..., k] > 0) <= m.astype(bool)).all() and (v[..., k] > 0).any() for k in range(2)):
            kinds.append("object-or-covering-shape")
    assert "background" in kinds and "object-or-covering-shape" in kinds
    shapes = np.asarray(random_shape_masks(jax.random.key(1), 32, 64))
    assert shapes.shape == (32, 64, 64) and (shapes.reshape(32, -1).sum(1) > 0).all()
    assert abs(sum(MASK_SHARES.values()) - 1.0) < 1e-9


def test_depth_condition_is_the_datasets_png_depth():
    from PIL import Image

    from jaxvedit.world.render import render
    from jaxvedit.world.scene import sample_scene

    r = render(sample_scene(3, frames=2))
    cond = np.asarray(depth_condition(jnp.asarray(r.depth)))
    assert cond.shape == r.depth.shape + (3,)
    png = np.asarray(Image.fromarray(np.round(r.depth[0] * 255).astype(np.uint8)), np.float32) / 255.0
    np.testing.assert_allclose(cond[0, ..., 0], png, atol=1e-6)
    m = np.zeros((1, 9, 9), np.float32)
    m[0, 4, 4] = 1
    assert np.asarray(dilate(jnp.asarray(m), 1)).sum() == 9


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="unknown stage"):
        ConditionedTrainConfig(stages=("controlnet", "vae"))
    with pytest.raises(ValueError, match="dtype"):
        ConditionedTrainConfig(dtype="float16")
