"""The training objective of one micro-batch (SPEC §3): noise, timesteps, text dropout, the
adapter-conditioned UNet with tapped features, and the total loss. The jitted step around it
is :func:`jaxvedit.adapters.make_adapter_train_step`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvedit.adapters import drop_text_condition
from jaxvedit.diffusion.ddim import add_noise
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.losses.total import LossConfig, total_loss
from jaxvedit.models.hooks import FeatureHooks
from jaxvedit.training.components import AdapterModel
from jaxvedit.training.config import TrainConfig


def make_loss_fn(cfg: TrainConfig, schedule: NoiseSchedule, empty_text: jax.Array | None = None, *,
                 empty_ids=None):
    """``loss_fn(model, batch, key) -> (loss, parts)`` for one micro-batch.

    ``batch``: ``latents (B, T, h, w, C)``; the caption as ``token_ids (B, L)`` int32, encoded
    here by ``model.text_encoder`` (the empty prompt's ids ``empty_ids (L,)`` give the dropout
    embedding), or as precomputed embeddings ``text (B, L, D)`` (with ``empty_text (L, D)``);
    ``vision (B, T, N, Dv)`` CLIP vision states for the unshared tokens; ``depth (B, T, H, W, C)``
    uint8 depth maps (C = 1: the store's gray maps, repeated to 3) for ``model.controlnet``.
    """
    loss_cfg = LossConfig(w_diff=cfg.diffusion_weight, lambda_temporal=cfg.temporal_weight,
                          tau=cfg.tau, num_train_timesteps=schedule.num_train_timesteps,
                          temporal_form=cfg.temporal_form, temporal_mode=cfg.temporal_mode)
    n_train = schedule.num_train_timesteps

    def loss_fn(model: AdapterModel, batch, key):
        lat = batch["latents"].astype(jnp.float32)  # (B, T, h, w, C), stored bf16 or f32
        b, t_frames = lat.shape[:2]
        k_t, k_noise, k_drop, k_t2 = jax.random.split(key, 4)
        t = jax.random.randint(k_t, (b,), 0, n_train)  # one timestep per clip
        if cfg.temporal_form == "cross_timestep":
            # the authors' variant: one adjacent pair at two timesteps -> 2 x 2 frames per clip
            t2 = jax.random.randint(k_t2, (b,), 0, n_train)
            lat = jnp.concatenate([lat[:, :2], lat[:, :2]], axis=1)
            tt = jnp.concatenate([jnp.repeat(t[:, None], 2, 1), jnp.repeat(t2[:, None], 2, 1)], 1)
            t_frames = 4
        else:
            tt = jnp.repeat(t[:, None], t_frames, axis=1)
        noise = jax.random.normal(k_noise, lat.shape, jnp.float32)
        flat = lambda a: a.reshape((b * t_frames,) + a.shape[2:])
        x_t = add_noise(schedule, flat(lat), flat(noise), flat(tt))
        if "token_ids" in batch:  # the frozen text encoder runs here, on the batch's ids
            if model.text_encoder is None or empty_ids is None:
                raise ValueError("a batch of token_ids needs model.text_encoder and empty_ids")

            def encode(ids):
                out = model.text_encoder(ids).last_hidden_state.astype(jnp.float32)
                return jax.lax.stop_gradient(out)

            caption = encode(batch["token_ids"])
            empty = encode(jnp.asarray(empty_ids, jnp.int32)[None])[0]
        else:
            caption, empty = batch["text"], empty_text
        text = jnp.repeat(caption, t_frames, axis=0)  # (B*T, L, D)
        text = drop_text_condition(k_drop, text, empty, cfg.text_dropout, group_size=t_frames)
        if model.tokens is not None:
            vision = batch.get("vision")
            vision = None if vision is None else vision.astype(jnp.float32)
            if cfg.unshared_tokens:
                if cfg.temporal_form == "cross_timestep":
                    vision = jnp.concatenate([vision[:, :2], vision[:, :2]], axis=1)
                ctx = model.tokens.context(flat(vision), text)
            else:
                shared = jnp.broadcast_to(model.tokens.shared.value[None],
                                          (text.shape[0],) + model.tokens.shared.value.shape)
                ctx = jnp.concatenate([shared.astype(text.dtype), text], axis=1)
        else:
            ctx = text
        hooks = FeatureHooks(capture=cfg.feature_taps)
        extra = {}
        if model.controlnet is not None:  # depth maps arranged as the latents
            from jaxvedit.training.controlnet import residual_kwargs

            depth = batch.get("depth")
            if depth is not None:
                if depth.shape[-1] == 1:
                    depth = jnp.repeat(depth, 3, axis=-1)
                if cfg.temporal_form == "cross_timestep":
                    depth = jnp.concatenate([depth[:, :2], depth[:, :2]], axis=1)
            extra = residual_kwargs(model.controlnet, x_t, flat(tt), ctx,
                                    None if depth is None else flat(depth), cfg.controlnet_scale)
        eps = model.unet(x_t, flat(tt), ctx, hooks=hooks, **extra)
        feats = {k: v.astype(jnp.float32) for k, v in hooks.captured.items()}
        if not feats:
            raise ValueError(f"feature_taps {cfg.feature_taps} matched no UNet module")
        if cfg.temporal_form == "cross_timestep":
            per_clip = []
            for c in range(b):
                pairs = [(f[c * 4:c * 4 + 2], f[c * 4 + 2:c * 4 + 4]) for f in feats.values()]
                per_clip.append(total_loss(eps[c * 4:(c + 1) * 4], flat(noise)[c * 4:(c + 1) * 4],
                                           pairs, t[c], loss_cfg))
            loss = jnp.mean(jnp.stack([p[0] for p in per_clip]))
            parts = {k: jnp.mean(jnp.stack([p[1][k] for p in per_clip])) for k in per_clip[0][1]}
        else:
            loss, parts = total_loss(eps, flat(noise), feats, flat(tt), loss_cfg,
                                     frames_per_clip=t_frames)
        return loss, parts

    return loss_fn


