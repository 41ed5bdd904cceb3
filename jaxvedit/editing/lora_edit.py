"""LoRA-Edit (paper 003) on SD1.5: first-frame-guided video editing with a mask-aware per-video
LoRA on the inpainting UNet (``python -m jaxvedit.edit --method lora-edit``; docs/lora_edit.md).

Inputs: the source frames, a spatio-temporal mask (``M_condition``: 1 = keep, 0 = regenerate; or
the opposite with ``mask_mode="edit"``), the edited first frame, optionally edited later frames.

1. Encode: ``E(V)``, the masked video ``E(V * M)`` (first frame kept whole), ``1 - M`` at latent
   size (diffusers' mask channel, nearest resize), as :mod:`jaxvedit.diffusion.inpaint`.
2. Train the LoRA on the video (§3.3.1) and, with edited later frames, on them (§3.3.2):
   :func:`jaxvedit.training.lora_edit.train_lora_edit`.
3. Inference (§3.3.1): the same mask; ``V_condition``'s first frame replaced by the edited one;
   DDIM sampling from noise with CFG through the inpainting UNet + LoRA (ungated, full scale),
   cross-frame attention of every frame to the (edited) first frame; with ``blend`` the kept
   region is put back after every step (the pipeline's 4-channel rule), so it ends as the
   source latents and decodes to the VAE round trip of the source.

:func:`lora_edit` is the programmatic entry ``(editor, frames, source_prompt, prompt, **options)
-> LoRAEditResult`` (``result.frames``: the edited uint8 frames).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.diffusion.inpaint import inpaint_sample, masked_image, preprocess_mask, resize_mask_nearest
from jaxvedit.models.inpaint import check_inpainting_unet
from jaxvedit.training.lora_edit import LoRAEditData, LoRAEditTrainConfig, train_lora_edit

MASK_MODES = ("keep", "edit")

REAL_WEIGHTS_HINT = (
    "Edit a real video with LoRA-Edit (an SD1.5 inpainting model):\n"
    "  python -m jaxvedit.edit --method lora-edit \\\n"
    "      --model stable-diffusion-v1-5/stable-diffusion-inpainting --video input.mp4 \\\n"
    "      --mask mask.mp4 --edited-first-frame edited.png --source-prompt \"a man walking\" \\\n"
    "      --prompt \"an astronaut walking\" --dtype bfloat16 --out edited.mp4\n"
    "(--mask: white = keep, or --mask-mode edit for white = regenerate; see docs/lora_edit.md).")

__all__ = ["MASK_MODES", "LoRAEditOptions", "LoRAEditResult", "keep_mask", "lora_edit",
           "read_mask", "read_image", "read_edited_frames", "edit_video_lora_edit",
           "prepare_lora_edit_demo"]


@dataclass(frozen=True)
class LoRAEditOptions:
    """Inference options of :func:`lora_edit` (training: ``train``)."""

    steps: int = 50  # DDIM steps
    guidance_scale: float = 7.5  # SD1.5 inpainting pipeline default
    eta: float = 0.0
    seed: int = 0  # initial noise
    cross_frame: bool = True  # attention of every frame to the edited first frame
    blend: bool = True  # put the kept region back after every step
    train: LoRAEditTrainConfig = field(default_factory=LoRAEditTrainConfig)

    @classmethod
    def from_kwargs(cls, **options) -> "LoRAEditOptions":
        """Flat keyword options: the inference fields, ``train=LoRAEditTrainConfig(...)``, or any
        training field (``train_steps=20``, ``rank=8``, ...). ``seed`` and ``cross_frame`` set
        both inference and training unless ``train`` is given; unknown names are an error."""
        own = {f.name for f in dataclasses.fields(cls)} - {"train"}
        train_names = {f.name for f in dataclasses.fields(LoRAEditTrainConfig)}
        given = options.pop("train", None)
        train = dataclasses.asdict(given if given is not None else LoRAEditTrainConfig())
        mine = {}
        for k, v in options.items():
            if k in own:
                mine[k] = v
                if k in train_names and given is None:
                    train[k] = v
            elif k in train_names:
                train[k] = v
            else:
                raise ValueError(f"unknown LoRA-Edit option {k!r} (inference: {sorted(own)}; "
                                 f"training: {sorted(train_names)})")
        return cls(**mine, train=LoRAEditTrainConfig(**train))


@dataclass
class LoRAEditResult:
    frames: np.ndarray  # (T, H, W, 3) uint8 edited
    latents: np.ndarray  # (T, h, w, C) edited latents
    keep: np.ndarray  # (T, H, W) bool: M_condition as used (frame 0 all kept)
    lora: object  # the trained jaxvedit.adapters.LoRA
    losses: list = field(default_factory=list)
    appearance_losses: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# inputs


def keep_mask(mask, mode: str = "keep") -> np.ndarray:
    """``M_condition`` as bool ``(T, H, W)`` from masks ``(T, H, W)`` or ``(T, H, W, 1 | 3)``
    (bool, uint8, float in [0, 1]; binarized at 0.5 as diffusers' mask processor): ``mode="keep"``: white / 1 =
    keep (the paper's ``M_condition``); ``"edit"``: white / 1 = regenerate (diffusers, SAM masks,
    the authors' mask videos)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode {mode!r} must be one of {MASK_MODES}")
    white = preprocess_mask(mask)[..., 0] > 0.5
    return white if mode == "keep" else ~white


def _frames_hw(a) -> tuple[int, int]:
    return int(a.shape[1]), int(a.shape[2])


def check_mask(keep: np.ndarray, frames: np.ndarray, what: str = "mask") -> None:
    """Frame count and size of a mask against the video's, with errors naming both."""
    if keep.ndim != 3:
        raise ValueError(f"{what} must be (T, H, W) (optionally with 1 or 3 channels), got shape {keep.shape}")
    if len(keep) != len(frames):
        raise ValueError(f"{what} has {len(keep)} frames, the video {len(frames)}: give one mask "
                         "frame per video frame")
    if keep.shape[1:3] != frames.shape[1:3]:
        raise ValueError(f"{what} frames are {keep.shape[1]}x{keep.shape[2]} (HxW), the video "
                         f"frames {frames.shape[1]}x{frames.shape[2]}: the mask must have the "
                         "video's size")


def check_image(image: np.ndarray, frames: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{what} must be an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    if img.shape[:2] != frames.shape[1:3]:
        raise ValueError(f"{what} is {img.shape[0]}x{img.shape[1]} (HxW), the video frames "
                         f"{frames.shape[1]}x{frames.shape[2]}: edit the frame at the video's size")
    return img


def read_image(path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise ValueError(f"unreadable image {p}: {err}") from err


def read_mask(path, *, start: int = 0, stop: int | None = None, stride: int = 1,
              max_frames: int | None = None, num_frames: int | None = None) -> np.ndarray:
    """The frames of a mask video or a folder of mask images (PNG, ...), with the video's frame
    selection; ``num_frames``: the source video's total frame count (checked)."""
    from jaxvedit.data.video import probe_video, read_video

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"mask not found: {p} (a mask video or a folder of mask images)")
    if num_frames is not None:
        total = probe_video(p).num_frames
        if total != num_frames:
            raise ValueError(f"mask {p} has {total} frames, the video {num_frames}: give one mask "
                             "frame per video frame")
    return read_video(p, start=start, stop=stop, stride=stride, max_frames=max_frames).frames


def read_edited_frames(folder) -> dict[int, np.ndarray]:
    """``{frame index: image}`` from a folder of edited frames named by their frame number in the
    source video (``00012.png``, ``12.jpg``), as the authors' ``additional_edited_frames/``."""
    from jaxvedit.data.video import IMAGE_EXTENSIONS

    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"edited frames folder not found: {p}")
    out = {}
    for f in sorted(p.iterdir()):
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if not f.stem.isdigit():
            raise ValueError(f"edited frame {f}: name it by its frame number in the source video "
                             "(e.g. 00012.png)")
        out[int(f.stem)] = read_image(f)
    if not out:
        raise ValueError(f"no edited frame images ({', '.join(IMAGE_EXTENSIONS)}) in {p}")
    return out


# ----------------------------------------------------------------------------------------------
# the method


def _encode(editor, images_m11: np.ndarray) -> np.ndarray:
    """VAE posterior means (scaled), through the editor's compiled encoder, in its batch size."""
    from jaxvedit.data.encoders import batched, jit_split

    fn = getattr(editor, "_encode", None)
    if fn is None:
        fn = jit_split(editor.vae, lambda m, x: m.encode_to_latents(x))
    return batched(fn, np.asarray(images_m11, np.float32), editor.batch_frames)


def lora_edit(editor, frames, source_prompt: str, prompt: str, *, mask, edited_first_frame,
              edited_frames: dict | None = None, mask_mode: str = "keep", lora=None,
              progress: bool = False, **options) -> LoRAEditResult:
    """Edit ``frames (T, H, W, 3) uint8`` (at the working resolution) with LoRA-Edit.

    Args:
        editor: a :class:`jaxvedit.editing.Editor` (or anything with its ``unet``, ``vae``,
            ``schedule``, ``text_embeddings(prompts)``, ``decode_latents(latents)`` and
            ``batch_frames``) whose UNet is an inpainting UNet.
        mask: ``(T, H, W)`` (or with 1 / 3 channels) ``M_condition``, see :func:`keep_mask`.
        edited_first_frame: ``(H, W, 3)`` uint8.
        edited_frames: ``{frame index (1..T-1): (H, W, 3) uint8}`` for the appearance stage.
        lora: an already trained LoRA (training is skipped).
        options: :class:`LoRAEditOptions` fields (``steps``: DDIM steps) and training fields
            (:class:`~jaxvedit.training.lora_edit.LoRAEditTrainConfig`: ``train_steps``, ``rank``...).
    """
    from jaxvedit.data.video import to_model_range
    from jaxvedit.editing.pipeline import chunk_indices
    from jaxvedit.editing.predictor import EditPredictor

    opts = LoRAEditOptions.from_kwargs(**options)
    check_inpainting_unet(editor.unet, "LoRA-Edit (--method lora-edit)")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: give the target prompt (a caption of the edited first frame)")
    keep = keep_mask(mask, mask_mode)
    check_mask(keep, frames)
    keep = keep.copy()
    keep[0] = True  # §3.3.1: M_condition is one on the first frame
    first = check_image(edited_first_frame, frames, "the edited first frame")
    edited_frames = dict(edited_frames or {})
    for k in sorted(edited_frames):
        if not 0 < k < len(frames):
            raise ValueError(f"edited frame index {k} is outside the later frames 1..{len(frames) - 1} "
                             "(the first frame is --edited-first-frame)")
        edited_frames[k] = check_image(edited_frames[k], frames, f"edited frame {k}")

    t0 = time.perf_counter()
    x = to_model_range(frames)
    regen = (~keep).astype(np.float32)[..., None]  # diffusers' mask: 1 = regenerate
    # one pass through the encoder (one compiled batch size): frames, masked frames, edited frames
    order = sorted(edited_frames)
    edited = to_model_range(np.stack([first] + [edited_frames[k] for k in order]))
    n = len(frames)
    enc = _encode(editor, np.concatenate([x, masked_image(x, regen), edited]))
    lat, masked_lat, first_lat = enc[:n], enc[n:2 * n], enc[2 * n]
    app = [(k, enc[2 * n + 1 + i]) for i, k in enumerate(order)]
    mask_lat = resize_mask_nearest(regen, lat.shape[1:3])
    ctx_src, ctx_tgt, ctx_unc = editor.text_embeddings([source_prompt or "", prompt, ""])
    t_enc = time.perf_counter() - t0

    t1 = time.perf_counter()
    logs = {"losses": [], "appearance_losses": []}
    if lora is None:
        data = LoRAEditData(lat, mask_lat, masked_lat, ctx_src, appearance=app,
                            appearance_context=ctx_tgt if app else None)
        lora, logs = train_lora_edit(editor.unet, data, opts.train, schedule=editor.schedule,
                                     progress=progress)
    t_train = time.perf_counter() - t1

    # inference: V_condition with the edited first frame; the same mask
    t2 = time.perf_counter()
    cond = masked_lat.copy()
    cond[0] = first_lat  # frame 0 is kept whole: its masked image is the edited frame
    known = lat.copy()
    known[0] = first_lat
    bf = min(editor.batch_frames, n)
    chunks = chunk_indices(n, bf, carry_first=opts.cross_frame)
    pred = EditPredictor(editor.unet, lora, lora_tau=0.0, lora_ratio=1.0,
                         cross_frame_group=bf if opts.cross_frame else 0)
    key = jax.random.key(opts.seed)
    noise = np.asarray(jax.random.normal(key, lat.shape, jnp.float32))
    out = np.zeros_like(lat)
    for ci, (idx, keep_pos) in enumerate(chunks):
        z = inpaint_sample(pred, noise[idx], ctx_tgt[None], mask_lat[idx], cond[idx], editor.schedule,
                           num_inference_steps=opts.steps, guidance_scale=opts.guidance_scale,
                           uncond_context=ctx_unc[None], image_latents=known[idx], blend=opts.blend,
                           eta=opts.eta, key=jax.random.fold_in(key, ci + 1))
        sel = np.asarray(keep_pos)
        out[np.asarray(idx)[sel]] = np.asarray(z)[sel]
    t_sample = time.perf_counter() - t2
    t3 = time.perf_counter()
    edited = editor.decode_latents(out)
    t_dec = time.perf_counter() - t3
    return LoRAEditResult(edited, out, keep, lora, logs["losses"], logs["appearance_losses"],
                          {"encode_s": t_enc, "train_s": t_train, "sample_s": t_sample,
                           "decode_s": t_dec, "chunks": len(chunks)})


# ----------------------------------------------------------------------------------------------
# python -m jaxvedit.edit --method lora-edit


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_lora_edit_demo(cfg):
    """The embedded demo of ``--method lora-edit``: a tiny random inpainting model, the sample
    clip (a red square moving right), a mask keeping everything but the square's surroundings
    and a first frame with the square painted blue."""
    import cv2

    from jaxvedit.data.video import _COLORS, make_sample_video, write_frames
    from jaxvedit.editing.config import DEMO_SAMPLE
    from jaxvedit.models.tiny import make_tiny_model

    root = Path(cfg.output_dir) / "lora-edit"
    root.mkdir(parents=True, exist_ok=True)
    model_dir, video = root / "tiny-inpainting-model", root / "sample.mp4"
    if not (model_dir / "unet" / "config.json").is_file():
        make_tiny_model(model_dir, inpainting=True)
    frames, _ = make_sample_video(video, **DEMO_SAMPLE)
    shape = np.abs(frames.astype(np.int32) - np.asarray(_COLORS[DEMO_SAMPLE["color"]])).sum(-1) < 30
    region = np.stack([cv2.dilate(s.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for s in shape])
    write_frames(root / "mask", np.repeat((~region[..., None]).astype(np.uint8) * 255, 3, -1),
                 overwrite=True)
    first = frames[0].copy()
    first[shape[0]] = _COLORS["blue"]
    from PIL import Image

    Image.fromarray(first).save(root / "edited-first-frame.png")
    _log(f"demo: tiny random inpainting model in {model_dir}, sample clip {video}, mask "
         f"{root / 'mask'} (white = keep), edited first frame {root / 'edited-first-frame.png'}")
    return dataclasses.replace(cfg, model=str(model_dir), video=str(video), mask=str(root / "mask"),
                               mask_mode="keep", edited_first_frame=str(root / "edited-first-frame.png"),
                               resolution=DEMO_SAMPLE["size"],
                               out=cfg.out or str(root / "edited.mp4"),
                               gif=cfg.gif or str(root / "edited.gif"))


def _selected_position(index: int, start: int, stride: int, count: int) -> int | None:
    if index < start or (index - start) % stride:
        return None
    pos = (index - start) // stride
    return pos if pos < count else None


def edit_video_lora_edit(cfg) -> dict:
    """``python -m jaxvedit.edit --method lora-edit``: read, check, train, edit, write."""
    from jaxvedit.adapters import load_adapter, save_adapter
    from jaxvedit.data.video import (probe_video, read_video, resize_center_crop, write_frames,
                                     write_gif, write_video)
    from jaxvedit.editing.pipeline import VIDEO_SUFFIXES, Editor, check_output_path

    demo = cfg.is_demo
    if demo:
        cfg = prepare_lora_edit_demo(cfg)
    if cfg.prompt is None:
        raise ValueError("empty prompt: give the target prompt with --prompt \"...\" (a caption "
                         "of the edited first frame)")
    for name, flag in (("video", "--video"), ("model", "--model (an SD1.5 inpainting diffusers folder)"),
                       ("mask", "--mask (mask video or folder of mask images)"),
                       ("edited_first_frame", "--edited-first-frame (an image)")):
        if getattr(cfg, name) is None:
            raise ValueError(f"--method lora-edit needs {flag}")
    out = Path(cfg.out or "edited.mp4")
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: the output video must end in one of {VIDEO_SUFFIXES}")
    check_output_path(out, "output")
    if cfg.gif:
        check_output_path(cfg.gif, "GIF output")
    if cfg.lora_edit_save:
        save = Path(cfg.lora_edit_save)
        if not save.is_dir() and not (save.parent if str(save.parent) else Path(".")).is_dir():
            raise FileNotFoundError(f"--lora-edit-save {save}: its parent folder does not exist")

    sel = dict(start=cfg.start, stop=cfg.stop, stride=cfg.stride, max_frames=cfg.max_frames)
    video = read_video(cfg.video, fps=cfg.fps, **sel)
    src = video.frames
    mask = read_mask(cfg.mask, num_frames=probe_video(cfg.video).num_frames, **sel)
    keep = keep_mask(mask, cfg.mask_mode)
    check_mask(keep, src, f"mask {cfg.mask}")
    first = check_image(read_image(cfg.edited_first_frame), src,
                        f"the edited first frame {cfg.edited_first_frame}")
    later = {}
    if cfg.edited_frames:
        for index, img in read_edited_frames(cfg.edited_frames).items():
            pos = _selected_position(index, cfg.start, cfg.stride, len(src))
            if pos is None or pos == 0:
                raise ValueError(f"edited frame {index} of {cfg.edited_frames} is not a later frame "
                                 f"of the selection (frames {cfg.start}, {cfg.start + cfg.stride}, "
                                 f"... of the source; its first is --edited-first-frame)")
            later[pos] = check_image(img, src, f"edited frame {index}")
    r = cfg.resolution
    frames = resize_center_crop(src, r)
    keep_r = resize_center_crop(keep[..., None].astype(np.float32), r)[..., 0] >= 0.5
    first = resize_center_crop(first, r)
    later = {k: resize_center_crop(v, r) for k, v in later.items()}
    _log(f"source: {cfg.video}: {len(frames)} frames at {video.fps:g} fps, {r}x{r}; mask "
         f"{cfg.mask}: {100 * (1 - keep_r[1:].mean()) if len(keep_r) > 1 else 0:.1f}% of the later "
         f"frames regenerated; {len(later)} edited later frame(s)")

    t0 = time.perf_counter()
    editor = Editor(cfg.model, dtype=cfg.dtype, batch_frames=cfg.batch_frames)
    check_inpainting_unet(editor.unet, f"--method lora-edit (model {cfg.model})")
    lora = load_adapter(cfg.adapter, editor.unet) if cfg.adapter else None
    t_load = time.perf_counter() - t0
    res = lora_edit(editor, frames, cfg.source_prompt, cfg.prompt, mask=keep_r, mask_mode="keep",
                    edited_first_frame=first, edited_frames=later, lora=lora, progress=cfg.progress,
                    steps=cfg.steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta, seed=cfg.seed,
                    cross_frame=cfg.lora_edit_cross_frame, blend=cfg.lora_edit_blend,
                    train=LoRAEditTrainConfig(
                        train_steps=cfg.lora_edit_steps, appearance_steps=cfg.lora_edit_appearance_steps,
                        rank=cfg.lora_edit_rank, learning_rate=cfg.lora_edit_lr,
                        clip_frames=cfg.batch_frames, cross_frame=cfg.lora_edit_cross_frame,
                        seed=cfg.seed))
    write_video(out, res.frames, video.fps)
    written = {"video": str(out)}
    if cfg.gif:
        write_gif(cfg.gif, res.frames, min(video.fps, 50.0))
        written["gif"] = str(cfg.gif)
    if cfg.frames_out:
        write_frames(cfg.frames_out, res.frames, overwrite=True)
        written["frames"] = str(cfg.frames_out)
    if cfg.lora_edit_save and cfg.adapter is None:
        save_adapter(cfg.lora_edit_save, res.lora, extra={"method": "lora-edit"})
        written["lora"] = str(cfg.lora_edit_save)
    return {"outputs": written, "frames": int(len(res.frames)), "fps": video.fps, "resolution": r,
            "steps": cfg.steps, "method": "lora-edit", "mask": str(cfg.mask),
            "edited_later_frames": sorted(later), "adapter": cfg.adapter,
            "train_losses": {"first": res.losses[0] if res.losses else None,
                             "last": res.losses[-1] if res.losses else None,
                             "appearance_last": res.appearance_losses[-1] if res.appearance_losses else None},
            "demo": demo, "timings": {"load_s": t_load, **res.timings}}

