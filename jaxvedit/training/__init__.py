"""Adapter training (``python -m jaxvedit.train``)."""

from jaxvedit.training.config import TrainConfig
from jaxvedit.training.trainer import train

__all__ = ["TrainConfig", "train"]
