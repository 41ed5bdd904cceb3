"""Adapter training (kept as the import point of the old single-module trainer).

The trainer is split by concern: :mod:`jaxvedit.training.components` (model assembly),
:mod:`jaxvedit.training.step` (the loss of one micro-batch), :mod:`jaxvedit.training.loop` (the
loop, checkpoints, resume). This module re-exports their public names.
"""

from jaxvedit.training.components import AdapterModel, Components, prepare_demo
from jaxvedit.training.loop import train
from jaxvedit.training.step import make_loss_fn

__all__ = ["AdapterModel", "Components", "make_loss_fn", "prepare_demo", "train"]
