"""ControlNets in training: a ControlNet trained by filter (only its parameters move, the UNet
stays frozen, from a ``from_unet`` start), and adapter training with a frozen ControlNet and
``--depth auto`` through ``python -m jaxvedit.train``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from tiny_training import tiny_config


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from jaxvedit.models.tiny_controlnet import make_tiny_controlnet, make_tiny_depth_model
    root = tmp_path_factory.mktemp("cn_train")
    cfg = tiny_config(root / "base")
    return cfg, make_tiny_controlnet(root / "cn"), make_tiny_depth_model(root / "depth"), root


def test_train_controlnet_updates_only_the_controlnet():
    from jaxvedit.models.controlnet import ControlNetParam, controlnet_from_unet
    from jaxvedit.training.controlnet import array_batches, init_controlnet_training, train_controlnet

    from jaxvedit.models.tiny import random_torch_state_dict
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.models.weights import load_torch_state_dict

    # a one-level UNet (the smallest graph: the compile dominates this test)
    ucfg = {"block_out_channels": [32], "layers_per_block": 1, "down_block_types":
            ["CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D"],
            "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8}
    unet = nnx.eval_shape(lambda: UNet2DConditionModel(ucfg))
    load_torch_state_dict(unet, random_torch_state_dict(lambda: UNet2DConditionModel(ucfg), 0))
    cn = controlnet_from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    before_unet = jax.tree.map(np.asarray, nnx.state(unet, nnx.Param))
    before_cn = jax.tree.map(np.asarray, nnx.state(cn, nnx.Param))
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    text = rng.standard_normal((4, 7, 32)).astype(np.float32)
    cond = rng.integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    _, state = init_controlnet_training(unet, cn)
    n_cn = len(jax.tree.leaves(nnx.state(cn, ControlNetParam)))
    assert len(jax.tree.leaves(state.params)) == n_cn  # the filter selects the ControlNet
    assert not any(isinstance(v, ControlNetParam) for v in
                   jax.tree.leaves(state.frozen, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    hist = train_controlnet(unet, cn, array_batches(lat, text, cond, 2), steps=3,
                            tx=__import__("optax").adam(1e-3))
    assert len(hist["losses"]) == 3 and np.isfinite(hist["losses"]).all()
    after_unet = jax.tree.map(np.asarray, nnx.state(unet, nnx.Param))
    for a, b in zip(jax.tree.leaves(before_unet), jax.tree.leaves(after_unet)):
        np.testing.assert_array_equal(a, b)  # frozen
    moved = [float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(before_cn), jax.tree.leaves(nnx.state(cn, nnx.Param)))]
    assert sum(m > 0 for m in moved) > 0.9 * len(moved)  # the ControlNet trains (zero convs too)
    assert np.abs(np.asarray(cn.controlnet_mid_block.kernel.value)).max() > 0


def test_adapter_training_with_frozen_controlnet_and_auto_depth(demo):
    from jaxvedit.training.trainer import train

    cfg, cn_dir, depth_dir, root = demo
    run = dataclasses.replace(cfg, output_dir=str(root / "run"), steps=1, accumulate=1,
                              controlnet=str(cn_dir), depth="auto", depth_model=str(depth_dir),
                              cache_dir=str(root / "cache"), unshared_tokens=False)
    summary = train(run)
    assert summary["steps"] == 1 and np.isfinite(summary["last_loss"])
    # the depth maps were computed and stored in the frame records, beside the latents
    from jaxvedit.data.loader import MicroBatchSource
    from jaxvedit.data.prepare import depth_model_fingerprint
    from jaxvedit.data.store import ClipStore

    store = ClipStore(root / "cache")
    assert store.manifest["depth_model_fingerprint"] == depth_model_fingerprint(str(depth_dir))
    assert store.index.has_depth.all() and store.depth_shape == (64, 64, 1)
    batch = MicroBatchSource(store, seed=0, frames=run.frames, batch_size=2,
                             fields=("latents", "depth", "token_ids"))[0]
    assert batch["depth"].shape == (2, run.frames, 64, 64, 1) and batch["depth"].dtype == np.uint8
    assert batch["depth"].std() > 0  # a depth map, not a constant


# a store without usable depth maps for a ControlNet run: tests/test_store.py
