import os
import sys

# tests import their helpers (reference.py) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
# the hub is unreachable on CI: never wait on it
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world_run(tmp_path_factory):
    """A tiny world pipeline trained once per session (every stage, a few steps, float32):
    ``(run folder, summary)``; its ``pipeline/`` is the exported diffusers folder."""
    from jaxvedit.world.train import WorldTrainConfig, train_world

    out = tmp_path_factory.mktemp("tiny-world") / "run"
    cfg = WorldTrainConfig(output_dir=str(out), preset="tiny", scenes=24, latent_scenes=6, frames=4,
                           vae_steps=4, clip_steps=3, unet_steps=4, vae_batch=2, clip_batch=4,
                           unet_batch=4, progress=False, dtype="float32")
    return out, train_world(cfg)
