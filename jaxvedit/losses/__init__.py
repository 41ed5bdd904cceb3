"""Losses: temporal consistency (paper 004 eq. 21-22) and its cross-timestep variant."""
from jaxvedit.losses.temporal import (
    cross_timestep_loss,
    frame_similarities,
    temporal_consistency_loss,
)

__all__ = ["frame_similarities", "temporal_consistency_loss", "cross_timestep_loss"]
