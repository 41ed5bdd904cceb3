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


# CI runs the suite on two workers (pytest-xdist, ``-n 2 --dist loadgroup`` in pyproject.toml).
# Groups keep together what must share a process: a test file's tests (its module-scoped
# fixtures are built once), the files that use the session's tiny world (trained once), and all
# full-size (``slow``) tests, which run one after another on one worker so that no two
# full-size models are in memory at once.
_TINY_WORLD_FILES = {"test_world_conditioned.py", "test_world_train.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow"):
            group = "slow"
        elif item.path.name in _TINY_WORLD_FILES:
            group = "tiny-world"
        else:
            group = item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
