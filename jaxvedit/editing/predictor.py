"""The noise predictor the editor inverts and samples with: the UNet, an optional gated LoRA, an
optional DAPE (tuned norms + vision adapter) and optional cross-frame attention, as one NNX module (so ``ddim_invert`` / ``ddim_sample`` split it
once and pass its weights as arguments of their compiled loops)."""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
from flax import nnx

from jaxvedit.editing.cross_frame import cross_frame_attention


class EditPredictor(nnx.Module):
    """``eps = p(sample, timesteps, context, hooks=None)``.

    ``lora``: a :class:`jaxvedit.adapters.LoRA` for ``unet`` (unmerged), applied with the
    timestep gate ``t >= lora_tau * T`` and scale ``lora_ratio`` (SPEC §2 inference: 0.9, 0.5).
    ``dape``: a :class:`jaxvedit.adapters.dape.DAPE` for ``unet`` (eval mode: no dropout).
    ``cross_frame_group``: 0 = off; else cross-frame attention with groups of that many
    consecutive frames (the chunk size; the anchor is each group's first frame).
    ``lora_tau`` / ``lora_ratio`` are state (traced: new values reuse the compiled loops);
    ``cross_frame_group`` and whether a LoRA is present are static (the graph definition).
    """

    def __init__(self, unet, lora=None, *, lora_tau: float | None = 0.9, lora_ratio: float = 0.5,
                 cross_frame_group: int = 0, dape=None):
        self.unet = unet
        self.lora = lora
        self.dape = dape
        if lora is not None:
            tau = lora.config.tau if lora_tau is None else lora_tau
            self.lora_tau = nnx.Variable(jnp.asarray(tau or 0.0, jnp.float32))
            self.lora_ratio = nnx.Variable(jnp.asarray(lora_ratio, jnp.float32))
        self.cross_frame_group = int(cross_frame_group)

    def __call__(self, sample, timesteps, encoder_hidden_states, hooks=None, **unet_kwargs):
        # unet_kwargs: e.g. ControlNet residuals (jaxvedit.diffusion.control.ControlNetPredictor)
        kwargs = dict(unet_kwargs) if hooks is None else {"hooks": hooks, **unet_kwargs}
        with contextlib.ExitStack() as stack:
            if self.lora is not None and not self.lora.merged_ratio:
                # the gate of SPEC §2, t >= tau * T (tau = 0: always on), with tau traced
                t = jnp.broadcast_to(jnp.asarray(timesteps), (sample.shape[0],))
                n_train = self.lora.config.num_train_timesteps
                gate = (t >= self.lora_tau.value * n_train).astype(jnp.float32)
                stack.enter_context(self.lora.active(gate=gate, ratio=self.lora_ratio.value))
            if self.dape is not None:
                stack.enter_context(self.dape.active())
            if self.cross_frame_group:
                stack.enter_context(cross_frame_attention(self.cross_frame_group))
            return self.unet(sample, timesteps, encoder_hidden_states, **kwargs)
