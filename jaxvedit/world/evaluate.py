"""Quality of a world pipeline on held-out scenes: ``python -m jaxvedit.world.evaluate``.

- VAE reconstruction PSNR (uint8 frames, dB) on validation scenes;
- text-to-image: DDIM sampling (50 steps, guidance 7.5) of held-out captions, judged by the
  renderer-built classifier (:mod:`jaxvedit.world.judge`): object colour and shape right;
- DDIM inversion (50 steps, source caption, no guidance) then reconstruction: PSNR of the
  decoded reconstruction against the source frames.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.training.config import opt


class WorldPipeline:
    """The loaded world pipeline (our Flax modules) with batched, compiled helpers."""

    def __init__(self, path: str | Path | None = None, dtype=jnp.float32):
        from jaxvedit.diffusion.schedules import NoiseSchedule
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import load_tokenizer
        from jaxvedit.world.models import world_model_path
        from jaxvedit.data.encoders import jit_split

        self.path = Path(path) if path is not None else world_model_path()
        comps = load_components(self.path, ("unet", "vae", "text_encoder"), dtype=dtype)
        self.unet, self.vae, self.text_encoder = comps["unet"], comps["vae"], comps["text_encoder"]
        self.tokenizer = load_tokenizer(self.path)
        self.schedule = NoiseSchedule.from_config(self.path / "scheduler" / "scheduler_config.json")
        self._enc = jit_split(self.vae, lambda m, x: m.encode_to_latents(x))
        self._dec = jit_split(self.vae, lambda m, z: m.decode_latents(z))
        self._txt = jit_split(self.text_encoder, lambda m, ids: m(ids).last_hidden_state)

    def text(self, prompts: list[str]) -> jax.Array:
        from jaxvedit.models.clip import tokenize

        return self._txt(jnp.asarray(tokenize(self.tokenizer, prompts)))

    def encode(self, frames_u8: np.ndarray) -> jax.Array:
        return self._enc(jnp.asarray(frames_u8, jnp.float32) / 127.5 - 1.0)

    def decode01(self, latents) -> np.ndarray:
        """Latents -> float images in [0, 1] (as diffusers' ``output_type="np"``)."""
        x = np.asarray(self._dec(jnp.asarray(latents)), np.float32)
        return np.clip(x / 2.0 + 0.5, 0.0, 1.0)

    def decode(self, latents) -> np.ndarray:
        return np.clip(np.rint(self.decode01(latents) * 255.0), 0, 255).astype(np.uint8)

    def text_to_image(self, prompts: list[str], *, seed: int = 0, steps: int = 50,
                      guidance: float = 7.5, latents=None, as_float: bool = False) -> np.ndarray:
        """uint8 images (float [0, 1] with ``as_float``) sampled from ``latents`` (default:
        normal noise from ``seed``) with DDIM and classifier-free guidance."""
        from jaxvedit.diffusion import ddim_sample

        n = len(prompts)
        h = self.vae.config.sample_size // 8
        if latents is None:
            latents = jax.random.normal(jax.random.key(seed), (n, h, h, 4), jnp.float32)
        ctx = self.text(prompts)
        unc = self.text([""])
        z = ddim_sample(self.unet, latents, ctx, self.schedule, num_inference_steps=steps,
                        guidance_scale=guidance, uncond_context=unc if guidance != 1 else None)
        return self.decode01(z) if as_float else self.decode(z)


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def vae_psnr(pipe: WorldPipeline, n_scenes: int = 8) -> float:
    from jaxvedit.world.render import render
    from jaxvedit.world.scene import SPLIT, sample_scene

    vals = []
    for seed in list(SPLIT.valid)[:n_scenes]:
        frames = render(sample_scene(seed)).frames
        vals.append(psnr_u8(pipe.decode(pipe.encode(frames)), frames))
    return float(np.mean(vals))


def t2i_accuracy(pipe: WorldPipeline, n: int = 60, *, seed: int = 0, steps: int = 50,
                 guidance: float = 7.5, batch: int = 30) -> dict:
    from jaxvedit.world.data import heldout_t2i_specs
    from jaxvedit.world.judge import classify_colour, classify_shape, colour_mask
    from jaxvedit.world.scene import caption

    specs = heldout_t2i_specs(n)
    prompts = [caption(s) for s in specs]
    images = np.concatenate([pipe.text_to_image(prompts[i:i + batch], seed=seed + i, steps=steps,
                                                guidance=guidance) for i in range(0, n, batch)])
    colour_ok, shape_ok, rows = [], [], []
    for spec, img, p in zip(specs, images, prompts):
        col = classify_colour(img)
        shape = classify_shape(colour_mask(img, spec.subject.colour))
        colour_ok.append(col == spec.subject.colour)
        shape_ok.append(shape == spec.subject.shape)
        rows.append({"prompt": p, "colour": col, "shape": shape})
    return {"n": n, "colour_accuracy": float(np.mean(colour_ok)), "shape_accuracy": float(np.mean(shape_ok)),
            "images": images, "rows": rows}


def inversion_psnr(pipe: WorldPipeline, n_scenes: int = 2, frames: int = 8, steps: int = 50) -> float:
    from jaxvedit.diffusion import ddim_invert, ddim_sample
    from jaxvedit.world.render import render
    from jaxvedit.world.scene import SPLIT, caption, sample_scene

    vals = []
    for seed in list(SPLIT.valid)[100:100 + n_scenes]:
        spec = sample_scene(seed)
        src = render(spec).frames[:frames]
        x0 = pipe.encode(src)
        ctx = jnp.repeat(pipe.text([caption(spec)]), len(src), axis=0)
        xt = ddim_invert(pipe.unet, x0, ctx, pipe.schedule, num_inference_steps=steps)
        rec = ddim_sample(pipe.unet, xt, ctx, pipe.schedule, num_inference_steps=steps)
        vals.append(psnr_u8(pipe.decode(rec), src))
    return float(np.mean(vals))


@dataclass(frozen=True)
class EvaluateConfig:
    """Measure a world pipeline: VAE PSNR, text-to-image attribute accuracy, inversion PSNR."""

    model: str | None = opt(None, "world pipeline folder (default: the shipped one)", "run")
    out: str | None = opt(None, "write the figures here as JSON (and a grid PNG beside it)", "run")
    captions: int = opt(60, "held-out captions for the text-to-image check", "run")
    steps: int = opt(50, "DDIM steps", "run")
    guidance: float = opt(7.5, "guidance scale of the text-to-image check", "run")


def evaluate(cfg: EvaluateConfig) -> dict:
    t0 = time.perf_counter()
    pipe = WorldPipeline(cfg.model)
    res = {"vae_psnr_db": vae_psnr(pipe)}
    t2i = t2i_accuracy(pipe, cfg.captions, steps=cfg.steps, guidance=cfg.guidance)
    images = t2i.pop("images")
    res["t2i"] = t2i
    res["inversion_psnr_db"] = inversion_psnr(pipe, steps=cfg.steps)
    res["seconds"] = time.perf_counter() - t0
    if cfg.out:
        from PIL import Image

        Path(cfg.out).write_text(json.dumps(res, indent=2))
        cols = min(10, len(images))
        pad = (-len(images)) % cols
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        rows = [np.concatenate(list(images[i:i + cols]), axis=1) for i in range(0, len(images), cols)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(Path(cfg.out).with_suffix(".png"))
    return res


def main(argv=None) -> int:
    from jaxvedit.cli import parse_config

    cfg = parse_config(EvaluateConfig, argv, prog="python -m jaxvedit.world.evaluate")
    res = evaluate(cfg)
    print(json.dumps({k: v for k, v in res.items() if k != "t2i"} |
                     {"t2i": {k: v for k, v in res["t2i"].items() if k != "rows"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
