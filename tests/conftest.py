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


# CI runs the suite on two workers (pytest-xdist, ``-n 2 --dist loadfile`` in pyproject.toml):
# a test file's tests stay together on one worker, in order (its module-scoped fixtures are
# built once). (``--dist loadgroup`` would be finer, but with pytest 9 and xdist 3.8 its groups
# are not applied: xdist renames ``item._nodeid``, which pytest 9 no longer reads.) The
# full-size (``slow``) tests take one lock in the workers' shared temporary folder, so that no
# two full-size models are in memory at once.


@pytest.fixture(autouse=True)
def _one_full_size_test_at_a_time(request, tmp_path_factory):
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    import fcntl

    # each worker's base temp is <shared>/popen-gwN, so the lock lies in the folder they share;
    # without xdist it lies in the user's pytest folder (other pytest runs of the user share it)
    lock = tmp_path_factory.getbasetemp().parent / "jaxvedit-full-size-tests.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
