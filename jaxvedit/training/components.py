"""Model assembly for adapter training: the frozen pieces (VAE, text encoder, CLIP vision tower,
tokenizer, noise schedule), the trainable :class:`AdapterModel` (LoRA-wrapped UNet + prompt
tokens, with the frozen text encoder that the step runs on token ids), checks made at startup,
and the embedded demo's inputs. See ``docs/training.md``."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters import PRESETS, LoRAConfig, PromptTokenConfig, PromptTokens, apply_lora
from jaxvedit.data.dataset import Encoders
from jaxvedit.data.encoders import (batched, build_encoders, encoder_fingerprint, jit_split,
                                    resolve_sources, vision_fingerprint)
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.training.config import TrainConfig


class AdapterModel(nnx.Module):
    """What the training step runs: ``unet`` (a LoRA-wrapped UNet), its prompt ``tokens`` and,
    optionally, the frozen ``text_encoder`` that turns the batch's token ids into embeddings
    inside the step and a frozen ``controlnet`` adding its residuals (its weights are no
    ``AdapterParam``: jaxvedit.training.controlnet). Only the adapters (``AdapterParam``) train."""

    def __init__(self, unet, tokens: PromptTokens | None, text_encoder=None, controlnet=None):
        self.unet = unet
        self.tokens = tokens
        self.text_encoder = text_encoder
        self.controlnet = controlnet


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_demo(cfg: TrainConfig) -> TrainConfig:
    """The embedded demo: the shipped world model and 12 rendered world videos (once)."""
    from jaxvedit.world.demo import write_demo_dataset
    from jaxvedit.world.models import world_model_path

    data_dir = write_demo_dataset(Path(cfg.output_dir) / "world-data")
    model = world_model_path()
    _log(f"demo: the world model {model}, rendered world videos in {data_dir}")
    return dataclasses.replace(cfg, model=str(model), data=str(data_dir))


def module_paths(module: nnx.Module) -> list[str]:
    """The module paths (diffusers ``named_modules`` names) a model's feature hooks can tap."""
    return sorted({node.path for _, node in nnx.iter_graph(module)
                   if isinstance(node, nnx.Module) and isinstance(getattr(node, "path", None), str)
                   and node.path})


def check_feature_taps(unet: nnx.Module, patterns) -> None:
    """Every tap pattern must match at least one UNet module: checked at startup, before any
    data is read or anything compiled (a typo would otherwise train without a temporal loss)."""
    paths = module_paths(unet)
    if not patterns:
        raise ValueError("feature_taps is empty: the temporal loss needs at least one tapped module")
    for pattern in patterns:
        if not any(p == pattern or fnmatch.fnmatchcase(p, pattern) for p in paths):
            head = pattern.split(".")[0]
            near = [p for p in paths if p.startswith(head) and p.endswith("attn1")][:4] or paths[:4]
            raise ValueError(f"feature tap {pattern!r} matches no UNet module (e.g. {near})")


def _floating_to(dtype):
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return cast


class Components:
    """The frozen pieces and the trainable model, from ``--model`` (folder, hub id or single
    file with ``--tokenizer``). The UNet is stored in ``--base-dtype`` (bf16 by default); the
    text encoder is cast to it when the step's state is split (``base_dtype_cast``).
    ``vision_dim``: width of the CLIP vision states (from the store; read from the vision
    tower's config when not given)."""

    TEXT_CACHE = 4096  # captions memoised by text_embeddings (an LRU: bounded)

    def __init__(self, cfg: TrainConfig, *, vision_dim: int | None = None):
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import load_clip_config, load_tokenizer
        from jaxvedit.models.loading import component_folder, resolve_source

        self.cfg = cfg
        self.dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        self.base_dtype = jnp.bfloat16 if cfg.base_dtype == "bfloat16" else jnp.float32
        kind, root = resolve_source(cfg.model, ("unet", "vae", "text_encoder", "tokenizer"))
        if kind == "folder":
            component_folder(root, "unet")  # a folder without a UNet: say so first
        self.sources = src = resolve_sources(cfg.model, tokenizer=cfg.tokenizer,
                                             vision_model=cfg.vision_model,
                                             need_vision=cfg.unshared_tokens)
        unet = load_components(src.root, ("unet",), dtype=self.dtype, param_dtype=self.base_dtype)["unet"]
        check_feature_taps(unet, cfg.feature_taps)
        unet.remat = bool(cfg.remat)
        comps = load_components(src.root, ("vae", "text_encoder"), dtype=self.dtype)
        self.vae, self.text_encoder = comps["vae"], comps["text_encoder"]
        self.tokenizer = load_tokenizer(src.tokenizer, subfolder=None)
        self.token_length = min(int(self.tokenizer.model_max_length),
                                int(self.text_encoder.config.max_position_embeddings))
        self._vision = None
        self.schedule = (NoiseSchedule.from_config(src.scheduler) if src.scheduler is not None
                         else NoiseSchedule.sd15())
        ctx_dim = unet.config.cross_attention_dim
        ctx_dim = ctx_dim if isinstance(ctx_dim, int) else ctx_dim[0]
        if cfg.unshared_tokens and vision_dim is None:
            folder = src.vision_folder()
            vision_dim = load_clip_config(folder / "config.json", "vision").hidden_size
        rngs = nnx.Rngs(cfg.seed)
        targets = cfg.lora_targets
        targets = targets[0] if len(targets) == 1 and targets[0] in PRESETS else tuple(targets)
        try:
            lora_unet = apply_lora(unet, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                                    targets=targets, tau=cfg.tau), rngs=rngs)
        except KeyError as err:
            raise ValueError(f"--lora-targets: {err.args[0]}") from err
        tokens = None
        if cfg.unshared_tokens or cfg.n_shared_tokens:
            vdim = vision_dim if cfg.unshared_tokens else ctx_dim
            tokens = PromptTokens(PromptTokenConfig(n_share=cfg.n_shared_tokens, vision_dim=vdim,
                                                    context_dim=ctx_dim, pooling=cfg.pooling,
                                                    text_dropout=cfg.text_dropout), rngs=rngs)
        controlnet = None
        if cfg.controlnet:  # frozen, as the authors' (jaxvedit.training.controlnet)
            from jaxvedit.models.controlnet import check_controlnet_fits_unet
            from jaxvedit.models.controlnet_io import load_controlnet

            controlnet = load_controlnet(cfg.controlnet, dtype=self.dtype)
            check_controlnet_fits_unet(controlnet, unet)
        self.model = AdapterModel(lora_unet, tokens, self.text_encoder, controlnet)
        self.fingerprint = encoder_fingerprint(src)
        self.vision_fingerprint = vision_fingerprint(src) if cfg.unshared_tokens else None
        self._text_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._encode_text = None  # jitted on first use (over the text encoder's state then)

    @property
    def base_dtype_cast(self):
        """Cast for the frozen state: floating leaves to ``--base-dtype``."""
        return _floating_to(self.base_dtype)

    @property
    def vision_record(self) -> dict | None:
        """The adapter file's record of the CLIP vision tower (source + fingerprints), by which
        edit finds and checks it; None without unshared tokens."""
        if not self.cfg.unshared_tokens or self.sources.vision is None:
            return None
        from jaxvedit.adapters.records import vision_tower_record

        src, sub = self.sources.vision
        return vision_tower_record(self.vision, src, sub)

    @property
    def vision(self):
        """The CLIP vision tower (loaded on first use: training reads its states from the store)."""
        if self._vision is None and self.sources.vision is not None:
            from jaxvedit.models.clip import CLIPVisionModel

            self._vision = CLIPVisionModel.from_pretrained(*self.sources.vision, dtype=self.dtype)
        return self._vision

    def store_encoders(self, batch: int = 16):
        """The encoders ``prepare`` runs, on this run's already-loaded VAE and vision tower."""
        return build_encoders(self.sources, dtype=self.cfg.dtype, resolution=self.cfg.resolution,
                              batch=batch, vae=self.vae, vision_tower=self.vision,
                              tokenizer=self.tokenizer, model_name=str(self.cfg.model))

    def encoders(self, batch: int = 8) -> Encoders:
        """Per-frame encoders for the in-memory :class:`~jaxvedit.data.dataset.ClipDataset`."""
        from jaxvedit.data.video import to_model_range
        from jaxvedit.metrics import clip_preprocess

        enc = jit_split(self.vae, lambda m, x: m.encode_to_latents(x))

        def latents(frames):
            return batched(enc, to_model_range(frames), batch).astype(np.float32)

        vision_fn = None
        if self.cfg.unshared_tokens:
            vis = self.vision
            run = jit_split(vis, lambda m, x: m(x).last_hidden_state)

            def vision_states(frames):
                return batched(run, clip_preprocess(frames, vis.config.image_size), batch).astype(np.float32)

            vision_fn = vision_states

        return Encoders(latents, vision_fn, f"{self.fingerprint}/{self.vision_fingerprint}")

    def token_ids(self, captions: list[str]) -> np.ndarray:
        from jaxvedit.models.clip import tokenize

        return tokenize(self.tokenizer, captions, max_length=self.token_length)

    def text_embeddings(self, captions: list[str]) -> np.ndarray:
        """Text-encoder embeddings ``(N, L, D)`` float32 (memoised in a bounded LRU)."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            if self._encode_text is None:
                self._encode_text = jit_split(self.text_encoder, lambda m, ids: m(ids).last_hidden_state)
            emb = np.asarray(self._encode_text(jnp.asarray(self.token_ids(missing))), np.float32)
            self._text_cache.update(zip(missing, emb))
        out = np.stack([self._text_cache[c] for c in captions])
        for c in captions:
            self._text_cache.move_to_end(c)
        while len(self._text_cache) > self.TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return out
