"""Model assembly for adapter training: the frozen pieces (VAE, text and vision encoders,
tokenizer, noise schedule), the trainable :class:`AdapterModel` (LoRA-wrapped UNet + prompt
tokens), and the embedded demo's inputs. See ``docs/training.md``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters import LoRAConfig, PromptTokenConfig, PromptTokens, apply_lora
from jaxvedit.data.dataset import Encoders
from jaxvedit.data.video import make_sample_dataset
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.training.config import TrainConfig


class AdapterModel(nnx.Module):
    """What training updates: ``unet`` (a LoRA-wrapped UNet) and its prompt ``tokens``."""

    def __init__(self, unet, tokens: PromptTokens | None):
        self.unet = unet
        self.tokens = tokens





def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_demo(cfg: TrainConfig) -> TrainConfig:
    """Generate the tiny model and the sample dataset of the embedded demo (once)."""
    from jaxvedit.models.tiny import make_tiny_model

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir = root / "tiny-model", root / "sample-data"
    if not (model_dir / "unet" / "config.json").is_file():
        make_tiny_model(model_dir)
    if not (data_dir / "captions.jsonl").is_file():
        make_sample_dataset(data_dir, n_videos=3, frames=8, size=cfg.resolution)
    _log(f"demo: tiny random model in {model_dir}, generated sample clips in {data_dir}")
    return dataclasses.replace(cfg, model=str(model_dir), data=str(data_dir))


def _fingerprint(source: str, extra: dict) -> str:
    p = Path(source)
    if p.exists():
        files = sorted(p.rglob("*.safetensors")) if p.is_dir() else [p]
        ident = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    else:
        ident = [source]
    return hashlib.sha1(json.dumps([ident, extra], sort_keys=True).encode()).hexdigest()[:16]


def _vision_source(cfg: TrainConfig) -> tuple[str, str | None]:
    if cfg.vision_model:
        return cfg.vision_model, None
    if cfg.model and (Path(cfg.model) / "image_encoder" / "config.json").is_file():
        return cfg.model, "image_encoder"
    return "openai/clip-vit-base-patch32", None


class Components:
    """The frozen pieces (VAE, text and vision encoders, tokenizer) and the trainable model."""

    def __init__(self, cfg: TrainConfig):
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import CLIPVisionModel, load_tokenizer

        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        model_path = Path(cfg.model)
        comps = load_components(cfg.model, ("unet", "vae", "text_encoder"), dtype=dtype)
        self.vae, self.text_encoder = comps["vae"], comps["text_encoder"]
        tok_root = model_path if model_path.is_dir() else None
        if tok_root is None or not (tok_root / "tokenizer").is_dir():
            raise FileNotFoundError(f"--model {cfg.model}: no tokenizer/ folder (a single-file "
                                    "checkpoint carries none: use a diffusers folder)")
        self.tokenizer = load_tokenizer(tok_root)
        self.vision = None
        if cfg.unshared_tokens:
            src, sub = _vision_source(cfg)
            self.vision = CLIPVisionModel.from_pretrained(src, subfolder=sub)
        sched_file = model_path / "scheduler" / "scheduler_config.json"
        self.schedule = NoiseSchedule.from_config(sched_file) if sched_file.is_file() else NoiseSchedule.sd15()
        unet = comps["unet"]
        ctx_dim = unet.config.cross_attention_dim
        ctx_dim = ctx_dim if isinstance(ctx_dim, int) else ctx_dim[0]
        rngs = nnx.Rngs(cfg.seed)
        lora_unet = apply_lora(unet, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                                targets=cfg.lora_targets, tau=cfg.tau), rngs=rngs)
        tokens = None
        if cfg.unshared_tokens or cfg.n_shared_tokens:
            vdim = self.vision.config.hidden_size if self.vision is not None else ctx_dim
            tokens = PromptTokens(PromptTokenConfig(n_share=cfg.n_shared_tokens, vision_dim=vdim,
                                                    context_dim=ctx_dim, pooling=cfg.pooling,
                                                    text_dropout=cfg.text_dropout), rngs=rngs)
        self.model = AdapterModel(lora_unet, tokens)
        self.fingerprint = _fingerprint(cfg.model, {"vision": list(_vision_source(cfg))
                                                    if cfg.unshared_tokens else None})
        self._text_cache: dict[str, np.ndarray] = {}
        self._encode_text = jax.jit(lambda ids: self.text_encoder(ids).last_hidden_state)

    def encoders(self, batch: int = 8) -> Encoders:
        from jaxvedit.data.video import to_model_range
        from jaxvedit.metrics import clip_preprocess

        vae = self.vae
        enc = jax.jit(lambda x: vae.encode_to_latents(x))

        def latents(frames):
            x = to_model_range(frames)
            return np.concatenate([np.asarray(enc(jnp.asarray(x[i:i + batch])))
                                   for i in range(0, len(x), batch)])

        vision_fn = None  # no unshared tokens: nothing to encode
        if self.vision is not None:
            vis = self.vision
            size = vis.config.image_size
            run = jax.jit(lambda x: vis(x).last_hidden_state)

            def vision_fn(frames):
                x = clip_preprocess(frames, size)
                return np.concatenate([np.asarray(run(jnp.asarray(x[i:i + batch])))
                                       for i in range(0, len(x), batch)])

        return Encoders(latents, vision_fn, self.fingerprint)

    def text_embeddings(self, captions: list[str]) -> np.ndarray:
        from jaxvedit.models.clip import tokenize

        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            ids = tokenize(self.tokenizer, missing)
            emb = np.asarray(self._encode_text(jnp.asarray(ids)), np.float32)
            self._text_cache.update(zip(missing, emb))
        return np.stack([self._text_cache[c] for c in captions])


