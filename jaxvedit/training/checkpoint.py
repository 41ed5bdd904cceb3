"""Atomic training checkpoints with orbax: adapter state, optimizer state and a JSON of the run
position (optimizer step, micro-batch position, seed, config).

orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
or Ctrl-C during a save never leaves a checkpoint that looks finished but is not; the previous
one stays readable. ``keep`` bounds how many are kept.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        self.manager.wait_until_finished()  # never touch a checkpoint still being written
        if step in (self.manager.all_steps() or []):
            self.manager.delete(step)  # a re-save of the same step (e.g. final after periodic)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
            meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def latest_meta(self) -> dict | None:
        """The JSON metadata of the newest checkpoint (its position and config), or None."""
        step = self.manager.latest_step()
        if step is None:
            return None
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, params_like, opt_state_like):
        """``(params, opt_state, meta)`` of the newest checkpoint, or None when there is none.
        ``*_like`` give the structure, shapes and dtypes to restore into."""
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                              {"params": params_like, "opt_state": opt_state_like})
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"]["params"], restored["state"]["opt_state"], restored["meta"]
