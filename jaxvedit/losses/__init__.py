"""Losses: temporal consistency (paper 004 eq. 21-22) and its cross-timestep variant."""
from jaxvedit.losses.temporal import (
    cross_timestep_loss,
    frame_similarities,
    temporal_consistency_loss,
)

__all__ = ["frame_similarities", "temporal_consistency_loss", "cross_timestep_loss"]

# diffusion and total losses (appended by the adapters/losses work)
from jaxvedit.losses.diffusion import diffusion_loss  # noqa: E402
from jaxvedit.losses.total import LossConfig, temporal_gate, temporal_term, total_loss  # noqa: E402

__all__ += ["diffusion_loss", "LossConfig", "temporal_gate", "temporal_term", "total_loss"]
