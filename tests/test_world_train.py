"""World training on CPU: a smoke run of every stage (tiny preset) whose pipeline loads in ours
and in diffusers, and exact resume of an interrupted stage."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxvedit.world import models as wm
from jaxvedit.world.fit import FitConfig, TrainingInterrupted, fit
from jaxvedit.world.train import WorldTrainConfig, vae_loss


def test_every_stage_runs_and_the_pipeline_loads(tiny_world_run):
    torch = pytest.importorskip("torch")
    from diffusers import StableDiffusionPipeline

    from jaxvedit.models import load_components

    run, summary = tiny_world_run  # conftest: train_world on the tiny preset, every stage
    root = run / "pipeline"
    index = json.loads((root / "model_index.json").read_text())
    assert index["jaxvedit_world"]["version"] == wm.WORLD_VERSION and wm.is_world_model(root)
    for stage in ("vae", "clip", "unet"):
        assert (run / stage / "metrics.jsonl").read_text().strip()
    comps = load_components(root, ("unet", "vae", "text_encoder"))
    assert comps["vae"].config.scaling_factor != 1.0  # set from the latent statistics
    pipe = StableDiffusionPipeline.from_pretrained(root, torch_dtype=torch.float32)
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == wm.MAX_TOKENS
    assert set(summary["stage_seconds"]) == {"vae", "clip", "unet", "export"}


def test_interrupted_stage_resumes_to_the_uninterrupted_result(tmp_path):
    from jaxvedit.models.vae import AutoencoderKL
    from jaxvedit.world.data import pool_arrays, training_scenes

    data = {k: jax.numpy.asarray(v) for k, v in pool_arrays(training_scenes(8, frames=4)).items()}
    loss = lambda m, k, d: vae_loss(m, k, d, batch=2, frames=4, size=128)
    fcfg = FitConfig(steps=6, learning_rate=1e-3, warmup=2, checkpoint_every=100, progress=False,
                     log_every=1)

    def fresh():
        return AutoencoderKL(wm.vae_config("tiny"), rngs=nnx.Rngs(0))

    whole = fit("vae", fresh(), loss, data, fcfg, tmp_path / "a")
    with pytest.raises(TrainingInterrupted) as info:
        fit("vae", fresh(), loss, data, fcfg, tmp_path / "b", stop_at=3)
    assert info.value.step == 3 and info.value.code == 130
    resumed = fit("vae", fresh(), loss, data, fcfg, tmp_path / "b")
    a, b = nnx.state(whole, nnx.Param), nnx.state(resumed, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    la = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 6


def test_bad_train_config_is_named():
    with pytest.raises(ValueError, match="unknown stage"):
        WorldTrainConfig(stages=("vae", "gan"))
    with pytest.raises(ValueError, match="multiples of 32"):
        WorldTrainConfig(size=120)
