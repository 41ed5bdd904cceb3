"""The edit pipeline (SPEC §4): read frames, VAE-encode, invert the source latents with the
source prompt (bilateral DDIM inversion), DDIM-sample from the inverted latents with the target
prompt and classifier-free guidance, decode, write. See ``docs/editing.md``.

Frames go through the UNet in chunks of ``batch_frames`` (every chunk padded to that size by
repeating its last frame, so every chunk runs the same compiled program). With cross-frame
attention the clip's first frame is *carried*: chunks after the first are ``[frame 0, next
batch_frames - 1 frames]``, frame 0 is inverted and sampled again with them as the attention
anchor, and its copy is dropped from that chunk's output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters import LoRAModel, merged_lora
from jaxvedit.data.encoders import batched, jit_split
from jaxvedit.diffusion import BilateralFilterConfig, ddim_invert, ddim_sample, default_feature_paths
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.editing.adapters import find_adapter_parts, load_edit_adapters  # noqa: F401
from jaxvedit.editing.config import EditConfig
from jaxvedit.editing.predictor import EditPredictor

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# checks before any heavy work


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """The folder of ``path`` must exist (nothing is created), and ``path`` is no directory."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} path is a directory: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{what} folder does not exist: {parent} (writing {p}); create it first")
    return p


def filter_config(cfg: EditConfig, unet=None) -> BilateralFilterConfig:
    if cfg.filter == "none":
        return BilateralFilterConfig.none()
    if cfg.filter == "latent":
        return BilateralFilterConfig.latent(radius=cfg.filter_radius, sigma_spatial=cfg.filter_sigma_spatial,
                                            sigma_range=cfg.filter_sigma_range,
                                            range_mode=cfg.filter_range_mode, window=cfg.filter_window)
    if cfg.filter == "symmetric":
        return BilateralFilterConfig.symmetric(radius=cfg.filter_radius,
                                               sigma_spatial=cfg.filter_sigma_spatial,
                                               sigma_range=cfg.filter_sigma_range,
                                               range_mode=cfg.filter_range_mode,
                                               window=cfg.filter_window)
    paths = tuple(cfg.filter_paths) or default_feature_paths(unet)
    return BilateralFilterConfig.features(kernel_size=cfg.filter_kernel_size,
                                          sigma_spatial=cfg.filter_sigma_spatial,
                                          sigma_range=cfg.filter_sigma_range, feature_paths=paths)


def chunk_indices(num_frames: int, batch_frames: int, carry_first: bool) -> list[tuple[list[int], list[int]]]:
    """``[(indices, keep)]``: the frame indices of each chunk (padded to one size by repeating the
    last) and the positions in it whose results belong to the output (each frame exactly once)."""
    if num_frames <= batch_frames:
        return [(list(range(num_frames)), list(range(num_frames)))]
    if carry_first and batch_frames < 2:
        raise ValueError("cross-frame attention over several chunks needs batch_frames >= 2 "
                         "(the first frame is carried in every chunk)")
    out = []
    if carry_first:
        out.append((list(range(batch_frames)), list(range(batch_frames))))
        rest = list(range(batch_frames, num_frames))
        for i in range(0, len(rest), batch_frames - 1):
            part = rest[i:i + batch_frames - 1]
            out.append(([0] + part, list(range(1, len(part) + 1))))
    else:
        for i in range(0, num_frames, batch_frames):
            part = list(range(i, min(i + batch_frames, num_frames)))
            out.append((part, list(range(len(part)))))
    return [(idx + [idx[-1]] * (batch_frames - len(idx)), keep) for idx, keep in out]


# ----------------------------------------------------------------------------------------------
# adapters


# ----------------------------------------------------------------------------------------------
# the editor


@dataclass
class EditResult:
    frames: np.ndarray  # (T, H, W, 3) uint8 edited
    latents: np.ndarray  # edited latents
    inverted: np.ndarray  # x_T of the inversion
    reconstruction: np.ndarray | None = None  # frames sampled back with the source prompt, no CFG
    timings: dict = field(default_factory=dict)


class Editor:
    """The loaded model (UNet, VAE, text encoder, tokenizer, schedule) and optional adapter.

    One editor serves several edits (``python -m jaxvedit.compare`` runs its variants on one).
    """

    def __init__(self, model: str, *, adapter: str | None = None, vision_model: str | None = None,
                 dtype: str = "float32", lora_merge: bool = False, lora_ratio: float = 0.5,
                 batch_frames: int = 8, controlnet: str | None = None):
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import load_tokenizer
        from jaxvedit.models.loading import resolve_source

        self.batch_frames = batch_frames
        kind, root = resolve_source(model, ("unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                            "image_encoder"))
        if kind != "folder" or not (root / "tokenizer").is_dir():
            raise FileNotFoundError(f"--model {model}: no tokenizer/ folder (a single-file checkpoint "
                                    "carries none: use a diffusers folder)")
        self.root = root
        jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        comps = load_components(root, ("unet", "vae", "text_encoder"), dtype=jdtype)
        self.unet, self.vae, self.text_encoder = comps["unet"], comps["vae"], comps["text_encoder"]
        self.tokenizer = load_tokenizer(root)
        sched = root / "scheduler" / "scheduler_config.json"
        self.schedule = NoiseSchedule.from_config(sched) if sched.is_file() else NoiseSchedule.sd15()
        self._encode = jit_split(self.vae, lambda m, x: m.encode_to_latents(x))
        self._decode = jit_split(self.vae, lambda m, z: m.decode_latents(z))
        self._text = jit_split(self.text_encoder, lambda m, ids: m(ids).last_hidden_state)
        self.lora = self.text_lora = self.tokens = self.vision = self.dape = self.controlnet = None
        if controlnet is not None:  # jaxvedit.editing.controlnet
            from jaxvedit.models.controlnet import check_controlnet_fits_unet
            from jaxvedit.models.controlnet_io import load_controlnet

            self.controlnet = load_controlnet(controlnet, dtype=jdtype)
            check_controlnet_fits_unet(self.controlnet, self.unet)
        self.unshared = True
        self.adapter_path, self.adapter_notes = adapter, []
        # a merged LoRA is merged per edit (at that edit's ratio) and the exact base kernels are
        # put back afterwards, so an edit without the adapter never sees it
        self.lora_merge = lora_merge
        if adapter is not None:
            self._load_adapter(adapter, vision_model)

    @classmethod
    def from_modules(cls, *, unet, vae, text_encoder, tokenizer, schedule, lora=None, tokens=None,
                     vision=None, batch_frames: int = 8) -> "Editor":
        """An editor over already-loaded modules (the trainer's validation edits use the
        adapter being trained: ``lora`` / ``tokens`` are read at each edit, not copied)."""
        self = cls.__new__(cls)
        self.batch_frames, self.root, self.adapter_path = batch_frames, None, None
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.schedule = tokenizer, schedule
        self._encode = jit_split(vae, lambda m, x: m.encode_to_latents(x))
        self._decode = jit_split(vae, lambda m, z: m.decode_latents(z))
        self._text = jit_split(text_encoder, lambda m, ids: m(ids).last_hidden_state)
        self.lora, self.tokens, self.vision = lora, tokens, vision
        self.text_lora = self.dape = self.controlnet = None  # validation edits: no ControlNet
        self.unshared = vision is not None  # prompt tokens without a tower: the shared part only
        self.adapter_notes, self.lora_merge = [], False
        if vision is not None:
            self._vision = jit_split(vision, lambda m, x: m(x).last_hidden_state)
        return self

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, schedule: NoiseSchedule | None = None,
                        *, batch_frames: int = 8) -> "Editor":
        """An editor on models already built (no folder, no adapter): benchmarks, random
        weights."""
        self = cls.__new__(cls)
        self.batch_frames, self.root, self.adapter_path = batch_frames, None, None
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule if schedule is not None else NoiseSchedule.sd15()
        self._encode = jit_split(self.vae, lambda m, x: m.encode_to_latents(x))
        self._decode = jit_split(self.vae, lambda m, z: m.decode_latents(z))
        self._text = jit_split(self.text_encoder, lambda m, ids: m(ids).last_hidden_state)
        self.lora = self.text_lora = self.tokens = self.vision = self.dape = self.controlnet = None
        self.unshared, self.adapter_notes, self.lora_merge = True, [], False
        return self

    # -- adapter
    def _load_adapter(self, path: str, vision_model: str | None) -> None:
        ad = load_edit_adapters(path, self.unet, self.text_encoder, model_root=self.root,
                                vision_model=vision_model,
                                num_train_timesteps=self.schedule.num_train_timesteps)
        self.lora, self.text_lora, self.tokens, self.unshared = ad.lora, ad.text_lora, ad.tokens, ad.unshared
        self.vision, self.adapter_notes, self.dape = ad.vision, ad.notes, ad.dape
        if self.vision is not None:
            self._vision = jit_split(self.vision, lambda m, x: m(x).last_hidden_state)
        if self.text_lora is not None:
            gd, state = nnx.split(LoRAModel(self.text_encoder, self.text_lora))
            run = jax.jit(lambda s, ids, r: nnx.merge(gd, s)(ids, lora_ratio=r).last_hidden_state)
            self._text_lora = lambda ids, r: run(state, ids, r)

    # -- encoders
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        from jaxvedit.data.video import to_model_range

        return batched(self._encode, np.asarray(frames), self.batch_frames, pre=to_model_range)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        from jaxvedit.data.video import from_model_range

        return batched(self._decode, np.asarray(latents, np.float32), self.batch_frames,
                        post=from_model_range)

    def text_embeddings(self, prompts: list[str], text_lora_ratio: float | None = None) -> np.ndarray:
        """``text_lora_ratio``: through the text-encoder LoRA at that ratio (None: plain)."""
        from jaxvedit.models.clip import tokenize

        n = min(int(self.tokenizer.model_max_length),
                int(self.text_encoder.config.max_position_embeddings))
        ids = jnp.asarray(tokenize(self.tokenizer, prompts, max_length=n))
        if text_lora_ratio is not None and self.text_lora is not None:
            return np.asarray(self._text_lora(ids, jnp.float32(text_lora_ratio)), np.float32)
        return np.asarray(self._text(ids), np.float32)

    def contexts(self, frames: np.ndarray, prompts: list[str], use_tokens: bool,
                 text_lora_ratio: float | None = None, *, shared_only: bool = False) -> list[np.ndarray]:
        """One context per prompt: ``(1, L, D)`` text only, or ``(T, P + L, D)`` with the prompt
        tokens ``[T_share; Z_unshare(frame); text]`` (``(1, P + L, D)`` ``[T_share; text]`` for
        tokens trained without the unshared part, or with ``shared_only``: an ablation)."""
        text = self.text_embeddings(prompts, text_lora_ratio)
        if not (use_tokens and self.tokens is not None):
            return [t[None] for t in text]
        if shared_only or not self.unshared:
            prefix = np.asarray(self.tokens.shared.value, np.float32)[None]  # (1, P, D)
        else:
            from jaxvedit.metrics import clip_preprocess

            pixels = clip_preprocess(frames, self.vision.config.image_size)
            hidden = batched(self._vision, pixels, self.batch_frames)
            prefix = np.asarray(self.tokens(jnp.asarray(hidden)), np.float32)  # (T, P, D)
        return [np.concatenate([prefix, np.broadcast_to(t[None], (len(prefix),) + t.shape)], axis=1)
                for t in text]

    # -- the edit
    def edit(self, frames: np.ndarray, *, prompt: str, source_prompt: str = "", steps: int = 50,
             guidance_scale: float = 7.5, inversion_guidance: float = 1.0, eta: float = 0.0,
             seed: int = 0, filter: BilateralFilterConfig | None = None, cross_frame: bool = False,
             use_adapter: bool = True, lora_tau: float = 0.9, lora_ratio: float = 0.5,
             reconstruct: bool = False, latents: np.ndarray | None = None,
             progress: bool = True, negative_prompt: str = "", control=None,
             controlnet_scale: float = 1.0, guess_mode: bool = False, control_start: float = 0.0,
             control_end: float = 1.0, control_inversion: bool = True,
             use_controlnet: bool = True) -> EditResult:
        """Edit ``frames (T, H, W, 3) uint8`` (already at the working resolution).
        ``negative_prompt`` replaces the empty prompt in the sampling's guidance. With a
        ControlNet, ``control`` holds one conditioning image (depth map) per frame."""
        from tqdm.auto import tqdm

        if not prompt or not prompt.strip():
            raise ValueError("empty prompt: give the target prompt")
        if negative_prompt and float(guidance_scale) == 1.0:
            raise ValueError("a negative prompt needs guidance_scale != 1 (at guidance 1 the "
                             "unconditional branch, where the negative prompt goes, is not evaluated)")
        t0 = time.perf_counter()
        x0 = self.encode_frames(frames) if latents is None else np.asarray(latents, np.float32)
        t_enc = time.perf_counter() - t0
        use_lora = use_adapter and self.lora is not None
        merge = use_lora and self.lora_merge
        src, tgt, unc, neg = self.contexts(frames, [source_prompt, prompt, "", negative_prompt],
                                           use_adapter, lora_ratio if use_adapter else None)
        n = len(x0)
        bf = min(self.batch_frames, n)
        chunks = chunk_indices(n, bf, carry_first=cross_frame)
        pred = EditPredictor(self.unet, self.lora if use_lora and not merge else None,
                             lora_tau=lora_tau, lora_ratio=lora_ratio,
                             cross_frame_group=bf if cross_frame else 0,
                             dape=self.dape if use_adapter else None)
        inv_pred, ctl = pred, None
        if use_controlnet and (self.controlnet is not None or control is not None):
            from jaxvedit.editing.controlnet import EditControl

            if control is None:
                raise ValueError("missing conditioning image: this editor has a ControlNet; give "
                                 "control= (one depth map per frame)")
            ctl = EditControl(self.controlnet, control, num_frames=n, frame_size=frames.shape[1:3],
                              schedule=self.schedule, steps=steps, conditioning_scale=controlnet_scale,
                              guess_mode=guess_mode, start=control_start, end=control_end,
                              inversion=control_inversion)
            inv_pred, pred = ctl.wrap(pred)
        flt = filter if filter is not None else BilateralFilterConfig.none()
        if flt.mode == "features" and flt.feature_paths is None:
            flt = dataclasses.replace(flt, feature_paths=default_feature_paths(self.unet))
        key = jax.random.key(seed)
        inv_g = float(inversion_guidance)
        per_frame = lambda c, idx: c[idx] if c.shape[0] == n and n > 1 else c
        xT = np.zeros_like(x0)
        out = np.zeros_like(x0)
        rec = np.zeros_like(x0) if reconstruct else None
        phases = 3 if reconstruct else 2
        bar = tqdm(total=len(chunks) * phases, desc="edit", unit="pass", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        t1 = time.perf_counter()
        merged = contextlib.ExitStack()
        if merge:  # ungated, at this edit's ratio; the exact base kernels come back in finally
            merged.enter_context(merged_lora(self.unet, self.lora, ratio=lora_ratio))
        try:
            for ci, (idx, keep) in enumerate(chunks):
                x = jnp.asarray(x0[idx])
                cs, ct, cu, cn = (jnp.asarray(per_frame(c, idx)) for c in (src, tgt, unc, neg))
                if ctl is not None:
                    ctl.set_chunk(idx)
                bar.set_postfix_str(f"chunk {ci + 1}/{len(chunks)}: invert", refresh=False)
                inv = ddim_invert(inv_pred, x, cs, self.schedule, num_inference_steps=steps,
                                  guidance_scale=inv_g, uncond_context=cu if inv_g != 1 else None,
                                  filter=flt)
                jax.block_until_ready(inv)  # the bar counts finished work, not dispatched work
                bar.update()
                bar.set_postfix_str(f"chunk {ci + 1}/{len(chunks)}: sample", refresh=False)
                ed = ddim_sample(pred, inv, ct, self.schedule, num_inference_steps=steps,
                                 guidance_scale=guidance_scale,
                                 uncond_context=cn if guidance_scale != 1 else None, eta=eta,
                                 key=jax.random.fold_in(key, ci) if eta > 0 else None)
                jax.block_until_ready(ed)
                bar.update()
                sel, dst = np.asarray(keep), np.asarray(idx)[keep]
                xT[dst] = np.asarray(inv)[sel]
                out[dst] = np.asarray(ed)[sel]
                if reconstruct:
                    bar.set_postfix_str(f"chunk {ci + 1}/{len(chunks)}: reconstruct", refresh=False)
                    r = ddim_sample(pred, inv, cs, self.schedule, num_inference_steps=steps)
                    rec[dst] = np.asarray(r)[sel]  # blocks
                    bar.update()
        finally:
            bar.close()
            merged.close()
        t_diff = time.perf_counter() - t1
        t2 = time.perf_counter()
        edited = self.decode_latents(out)
        recon = self.decode_latents(rec) if reconstruct else None
        t_dec = time.perf_counter() - t2
        return EditResult(edited, out, xT, recon, {"encode_s": t_enc, "diffusion_s": t_diff,
                                                    "decode_s": t_dec, "chunks": len(chunks)})


# ----------------------------------------------------------------------------------------------
# the whole run (python -m jaxvedit.edit)


def prepare_demo(cfg: EditConfig) -> EditConfig:
    """The embedded demo: the shipped world model and a rendered world clip (a red circle moving
    right over a striped background, :mod:`jaxvedit.world.demo`); points the config's model,
    video and outputs at them."""
    from jaxvedit.world.demo import write_demo_video
    from jaxvedit.world.models import world_model_path

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    video = write_demo_video(root / "source.mp4")
    model = world_model_path()
    _log(f"demo: the world model {model}, the rendered clip {video}")
    return dataclasses.replace(cfg, model=str(model), video=str(video),
                               out=cfg.out or str(root / "edited.mp4"),
                               gif=cfg.gif or str(root / "edited.gif"))


def load_source_frames(cfg: EditConfig):
    """The selected source frames at the working size (``cfg.size``), and the output frame rate."""
    from jaxvedit.data.video import read_video, resize_center_crop

    video = read_video(cfg.video, start=cfg.start, stop=cfg.stop, stride=cfg.stride,
                       max_frames=cfg.max_frames, fps=cfg.fps)
    size = getattr(cfg, "size", (cfg.resolution, cfg.resolution))
    return resize_center_crop(video.frames, size), float(video.fps)


def edit_video(cfg: EditConfig) -> dict:
    """Run one edit as configured; returns a summary (paths, frame count, fps, timings)."""
    from jaxvedit.data.video import write_frames, write_gif, write_video

    if cfg.method == "lora-edit":
        from jaxvedit.editing.lora_edit import edit_video_lora_edit

        return edit_video_lora_edit(cfg)
    demo = cfg.is_demo
    if demo:
        cfg = prepare_demo(cfg)
    if cfg.prompt is None:
        raise ValueError("empty prompt: give the target prompt with --prompt \"...\"")
    if cfg.video is None:
        raise ValueError("give --video (a video file or a folder of frames)")
    if cfg.model is None:
        raise ValueError("give --model (an SD1.5 diffusers folder or repo id)")
    out = Path(cfg.out or "edited.mp4")
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: the output video must end in one of {VIDEO_SUFFIXES} "
                         "(use --gif / --frames-out for GIFs and frame folders)")
    check_output_path(out, "output")
    if cfg.gif:
        check_output_path(cfg.gif, "GIF output")
    if cfg.frames_out:
        fo = Path(cfg.frames_out)
        if not fo.is_dir() and not (fo.parent if str(fo.parent) else Path(".")).is_dir():
            raise FileNotFoundError(f"frames output folder's parent does not exist: {fo.parent} "
                                    f"(writing {fo}); create it first")
    frames, fps = load_source_frames(cfg)
    (h, w) = cfg.size
    _log(f"source: {cfg.video}: {len(frames)} frames at {fps:g} fps, {w}x{h}")
    if cfg.method == "tokenflow":
        from jaxvedit.editing.tokenflow import check_tokenflow_options

        check_tokenflow_options(len(frames), batch_size=cfg.tokenflow_batch,
                                keyframe_group=cfg.keyframe_group, pnp_f_t=cfg.pnp_f_t,
                                pnp_attn_t=cfg.pnp_attn_t, steps=cfg.steps)
    t0 = time.perf_counter()
    from jaxvedit.editing.controlnet import source_depth

    control = source_depth(cfg, frames)
    editor = Editor(cfg.model, adapter=cfg.adapter, vision_model=cfg.vision_model, dtype=cfg.dtype,
                    lora_merge=cfg.lora_merge, lora_ratio=cfg.lora_ratio, batch_frames=cfg.batch_frames,
                    controlnet=cfg.controlnet)
    t_load = time.perf_counter() - t0
    if cfg.method == "tokenflow":
        from jaxvedit.editing.tokenflow import tokenflow_edit

        if cfg.controlnet:
            raise ValueError("--controlnet is not supported with --method tokenflow (yet)")
        res = tokenflow_edit(editor, frames, cfg.source_prompt, cfg.prompt,
                             negative_prompt=cfg.negative_prompt, steps=cfg.steps,
                             guidance_scale=cfg.guidance_scale, pnp_f_t=cfg.pnp_f_t,
                             pnp_attn_t=cfg.pnp_attn_t, batch_size=cfg.tokenflow_batch,
                             keyframe_group=cfg.keyframe_group, seed=cfg.seed,
                             filter=filter_config(cfg, editor.unet),
                             inversion_guidance=cfg.inversion_guidance, use_adapter=True,
                             lora_tau=cfg.lora_tau, lora_ratio=cfg.lora_ratio, progress=cfg.progress)
    else:
        res = editor.edit(frames, prompt=cfg.prompt, source_prompt=cfg.source_prompt, steps=cfg.steps,
                          guidance_scale=cfg.guidance_scale, inversion_guidance=cfg.inversion_guidance,
                          eta=cfg.eta, seed=cfg.seed, filter=filter_config(cfg, editor.unet),
                          cross_frame=cfg.cross_frame, use_adapter=True, lora_tau=cfg.lora_tau,
                          lora_ratio=cfg.lora_ratio, progress=cfg.progress,
                          negative_prompt=cfg.negative_prompt, control=control,
                          controlnet_scale=cfg.controlnet_scale, guess_mode=cfg.guess_mode,
                          control_start=cfg.control_start, control_end=cfg.control_end,
                          control_inversion=cfg.control_inversion)
    write_video(out, res.frames, fps)
    written = {"video": str(out)}
    if cfg.keep_audio:
        from jaxvedit.data.audio import copy_audio

        src_fps = float(fps) * cfg.stride  # the container's rate (before striding)
        if copy_audio(cfg.video, out, start=cfg.start / src_fps, duration=len(res.frames) / fps):
            written["audio"] = "copied from the source"
    if cfg.preview:
        from jaxvedit.editing.outputs import preview_path, write_preview_strip

        written["preview"] = str(write_preview_strip(preview_path(out), frames, res.frames))
    if cfg.gif:
        write_gif(cfg.gif, res.frames, min(fps, 50.0))
        written["gif"] = str(cfg.gif)
    if cfg.frames_out:
        write_frames(cfg.frames_out, res.frames, overwrite=True)
        written["frames"] = str(cfg.frames_out)
    return {"outputs": written, "frames": int(len(res.frames)), "fps": fps,
            "resolution": cfg.resolution, "size": [w, h], "method": cfg.method,
            "steps": cfg.steps, "filter": cfg.filter,
            "cross_frame": cfg.cross_frame, "adapter": cfg.adapter,
            "adapter_notes": editor.adapter_notes, "controlnet": cfg.controlnet, "depth": cfg.depth,
            "adapter_parts": sorted(k for k, v in (("lora", editor.lora), ("prompt_tokens", editor.tokens),
                                                   ("text_encoder_lora", editor.text_lora),
                                                   ("dape", editor.dape)) if v is not None),
            "demo": demo, "timings": {"load_s": t_load, **res.timings}}
