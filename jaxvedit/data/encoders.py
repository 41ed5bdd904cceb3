"""The frozen encoders a clip store is made with, and where their weights come from.

``--model`` takes what ``edit`` takes: a diffusers folder, a Hugging Face repo id (resolved to a
folder through the hub cache) or a single-file SD1.x checkpoint, which carries no tokenizer, so
``--tokenizer`` (a folder or repo id holding ``tokenizer/``, or a tokenizer folder) is needed
with it. The CLIP vision tower of the unshared prompt tokens is ``--vision-model``, else the
model folder's ``image_encoder/``, else ``openai/clip-vit-base-patch32``.

:func:`encoder_fingerprint` identifies what the store's contents depend on (VAE weights, vision
tower, tokenizer) by file content samples, not by path, so a store stays valid when the model
folder moves and is refused when it was made with other weights. The encoders are jitted over
split state (``nnx.split`` outside, ``nnx.merge`` inside): the weights are arguments, never
compiled-in constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from jaxvedit.data.store import digest, file_fingerprint, folder_fingerprint, numpy_dtype

DEFAULT_VISION = "openai/clip-vit-base-patch32"
_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder")


@dataclass(frozen=True)
class ModelSources:
    """Where each part of ``--model`` lives."""

    kind: str  # "folder" | "single_file"
    root: Path  # the folder, or the single file
    tokenizer: Path  # folder holding vocab.json (+ merges.txt) or tokenizer.json
    vision: tuple[str, str | None] | None  # (folder or repo id, subfolder), None: not needed
    scheduler: Path | None  # scheduler_config.json, None: SD1.5's

    def vision_folder(self) -> Path | None:
        if self.vision is None:
            return None
        from jaxvedit.models.clip import resolve_model_folder

        return resolve_model_folder(*self.vision)


def resolve_sources(model: str, *, tokenizer: str | None = None, vision_model: str | None = None,
                    need_vision: bool = True) -> ModelSources:
    from jaxvedit.models.loading import resolve_source

    kind, root = resolve_source(model, _SUBFOLDERS)
    tok = _tokenizer_folder(model, kind, root, tokenizer)
    vision = None
    if need_vision:
        if vision_model:
            vision = (vision_model, None)
        elif kind == "folder" and (root / "image_encoder" / "config.json").is_file():
            vision = (str(root), "image_encoder")
        else:
            vision = (DEFAULT_VISION, None)
    sched = root / "scheduler" / "scheduler_config.json" if kind == "folder" else None
    return ModelSources(kind, root, tok, vision, sched if sched is not None and sched.is_file() else None)


def _tokenizer_folder(model: str, kind: str, root: Path, tokenizer: str | None) -> Path:
    from jaxvedit.models.loading import resolve_source

    if tokenizer:
        tkind, troot = resolve_source(tokenizer, ("tokenizer",))
        if tkind != "folder":
            raise FileNotFoundError(f"--tokenizer {tokenizer}: a folder or repo id with a CLIP "
                                    "tokenizer is needed, not a file")
        folder = troot / "tokenizer" if (troot / "tokenizer").is_dir() else troot
    elif kind == "folder":
        folder = root / "tokenizer"
    else:
        raise FileNotFoundError(
            f"--model {model} is a single-file checkpoint, which carries no tokenizer: give "
            "--tokenizer (a diffusers folder or repo id with tokenizer/, e.g. "
            "stable-diffusion-v1-5/stable-diffusion-v1-5, or a tokenizer folder)")
    if not ((folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()):
        raise FileNotFoundError(f"--model {model}: no CLIP tokenizer (vocab.json + merges.txt) "
                                f"in {folder}" + ("" if tokenizer else " (give --tokenizer)"))
    return folder


def encoder_fingerprint(src: ModelSources) -> str:
    """Fingerprint of what the latents and token ids depend on: VAE weights and tokenizer."""
    vae = folder_fingerprint(src.root / "vae") if src.kind == "folder" else [file_fingerprint(src.root)]
    return digest({"vae": vae, "tokenizer": folder_fingerprint(src.tokenizer)})


def vision_fingerprint(src: ModelSources) -> str | None:
    """Fingerprint of the CLIP vision tower's files (None when no tower is used)."""
    vf = src.vision_folder()
    return None if vf is None else digest(folder_fingerprint(vf))


def jit_split(module, fn):
    """``fn(module, x)`` jitted with the module's weights as an argument (split state)."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(module)
    run = jax.jit(lambda s, x: fn(nnx.merge(graphdef, s), x))
    return lambda x: run(state, x)


def batched(fn, x: np.ndarray, batch: int, pre=None, post=None) -> np.ndarray:
    """``fn`` over ``x`` in chunks of one fixed size (the last padded): one compiled program.
    ``pre`` / ``post`` convert each chunk on the host (so a whole clip is never held in float)."""
    import jax.numpy as jnp

    n, bs = len(x), max(1, min(batch, len(x)))
    out = []
    for i in range(0, n, bs):
        part = x[i:i + bs]
        pad = bs - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        y = np.asarray(fn(jnp.asarray(part if pre is None else pre(part))))[:bs - pad]
        out.append(y if post is None else post(y))
    return np.concatenate(out)


@dataclass
class StoreEncoders:
    """What ``prepare`` runs on each video: ``latents(frames uint8 (N, H, W, 3)) -> (N, h, w, C)``,
    ``vision(frames) -> (N, L, D)`` (None: not prepared), ``tokenize(captions) -> (K, L) int32``,
    in the store's dtype, and their fingerprint and output shapes."""

    latents: Callable[[np.ndarray], np.ndarray]
    vision: Callable[[np.ndarray], np.ndarray] | None
    tokenize: Callable[[list[str]], np.ndarray]
    fingerprint: str
    vision_fingerprint: str | None
    latent_shape: tuple[int, ...]
    vision_shape: tuple[int, ...] | None
    token_length: int
    model: str = ""
    vision_model: str | None = None


def build_encoders(src: ModelSources, *, dtype: str, resolution: int, batch: int = 16,
                   vae=None, vision_tower=None, tokenizer=None, model_name: str = "") -> StoreEncoders:
    """Jitted store encoders. ``vae`` / ``vision_tower`` / ``tokenizer`` may be given already
    loaded (the trainer's own); otherwise they are loaded from ``src``."""
    import jax
    import jax.numpy as jnp

    from jaxvedit.data.video import to_model_range
    from jaxvedit.metrics import clip_preprocess
    from jaxvedit.models.clip import CLIPVisionModel, load_tokenizer, tokenize

    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    out_dtype = numpy_dtype(dtype)
    if vae is None:
        from jaxvedit.models import load_components

        vae = load_components(src.root, ("vae",), dtype=jdtype)["vae"]
    enc = jit_split(vae, lambda m, x: m.encode_to_latents(x))

    def latents(frames):
        return batched(enc, to_model_range(frames), batch).astype(out_dtype)

    lat_shape = jax.eval_shape(lambda x: enc(x), jax.ShapeDtypeStruct((1, resolution, resolution, 3),
                                                                       jnp.float32)).shape[1:]
    vision_fn, vis_shape = None, None
    if src.vision is not None:
        if vision_tower is None:
            vision_tower = CLIPVisionModel.from_pretrained(*src.vision, dtype=jdtype)
        run = jit_split(vision_tower, lambda m, x: m(x).last_hidden_state)
        size = vision_tower.config.image_size

        def vision_states(frames):
            return batched(run, clip_preprocess(frames, size), batch).astype(out_dtype)

        vision_fn = vision_states

        vis_shape = (vision_tower.config.num_positions, vision_tower.config.hidden_size)
    tok = tokenizer if tokenizer is not None else load_tokenizer(src.tokenizer, subfolder=None)
    length = int(tok.model_max_length)
    return StoreEncoders(latents, vision_fn, lambda caps: tokenize(tok, caps, max_length=length),
                         encoder_fingerprint(src), vision_fingerprint(src) if vision_fn else None,
                         tuple(int(s) for s in lat_shape),
                         vis_shape, length, model=model_name,
                         vision_model="/".join(x for x in src.vision if x) if src.vision else None)
