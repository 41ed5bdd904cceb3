"""``python -m jaxvedit.compare``: the same edit with and without the adapter and the bilateral
filter, measured (flicker, warp error, inversion reconstruction PSNR/SSIM, CLIP metrics when CLIP
towers with projections are available), written as ``results.json``, ``results.md``, a
side-by-side frame strip ``strip.png`` and one mp4 per variant.

With no --video and no --model it runs the embedded demo: the tiny random model, the generated
sample clip and a demo adapter trained for a few steps with ``jaxvedit.training`` (all on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from jaxvedit.training.config import opt

#: variant name -> (uses the adapter, inversion filter)
VARIANTS: dict[str, tuple[bool, str]] = {
    "plain": (False, "none"),
    "bilateral-latent": (False, "latent"),
    "bilateral-features": (False, "features"),
    "adapter": (True, "none"),
    "adapter+latent": (True, "latent"),
    "adapter+features": (True, "features"),
}
#: the same with the depth ControlNet (need --controlnet and --depth)
CONTROLNET_VARIANTS: dict[str, tuple[bool, str]] = {
    "controlnet": (False, "none"),
    "latent+controlnet": (False, "latent"),
    "adapter+controlnet": (True, "none"),
    "adapter+latent+controlnet": (True, "latent"),
}


def _variant(name: str) -> tuple[bool, str, bool]:
    """``(uses the adapter, inversion filter, uses the ControlNet)``."""
    if name in CONTROLNET_VARIANTS:
        return (*CONTROLNET_VARIANTS[name], True)
    return (*VARIANTS[name], False)


@dataclass(frozen=True)
class CompareConfig:
    """Run one edit in several variants (plain, +adapter, +bilateral filter latent / features,
    adapter + filter) on the same input and compare them: flicker, warp error against the source
    motion, inversion reconstruction PSNR/SSIM, CLIP frame consistency / text alignment. With no
    --video and no --model it runs the embedded demo (tiny random model, generated clip, a demo
    adapter trained for a few steps)."""

    video: str | None = opt(None, "input video or frame folder (default: the demo's sample clip)", "input")
    prompt: str | None = opt(None, "target prompt", "input")
    source_prompt: str = opt("", "prompt describing the source video (for the inversion)", "input")
    resolution: int = opt(512, "square working resolution (a multiple of 64)", "input")
    width: int | None = opt(None, "frame width, a multiple of 64 (default: --resolution)", "input")
    height: int | None = opt(None, "frame height, a multiple of 64 (default: --resolution)", "input")
    start: int = opt(0, "first source frame", "input")
    stop: int | None = opt(None, "stop before this source frame", "input")
    stride: int = opt(1, "take every n-th source frame", "input")
    max_frames: int | None = opt(None, "at most this many frames", "input")
    fps: float | None = opt(None, "frame rate of a frame-folder input (default 8)", "input")

    model: str | None = opt(None, "SD1.5 diffusers folder or repo id (default: the demo's tiny model)",
                            "model")
    adapter: str | None = opt(None, "trained adapter folder (<run>/adapter); none: only the variants "
                              "without adapter (the demo trains one, see --demo-adapter-steps)", "model")
    vision_model: str | None = opt(None, "CLIP vision tower for the prompt tokens", "model")
    lora_tau: float = opt(0.9, "LoRA timestep gate tau at inference", "model")
    lora_ratio: float = opt(0.5, "LoRA ratio at inference", "model")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "compute dtype", "model")
    clip_model: str | None = opt(None, "CLIP folder with projection heads for the CLIP metrics "
                                 "(default: the model's image_encoder/ and text_encoder/ where they "
                                 "have projections)", "model")

    variants: tuple[str, ...] = opt((), "variants to run, from: " + ", ".join(VARIANTS) + ", " +
                                    ", ".join(CONTROLNET_VARIANTS) + " (default: all that apply)",
                                    "edit")
    controlnet: str | None = opt(None, "depth ControlNet (folder, single file or repo id): adds "
                                 "the +controlnet variants", "controlnet")
    depth: str | None = opt(None, "depth maps for --controlnet: 'auto' or a folder / video of "
                            "maps, one per source frame", "controlnet")
    depth_model: str = opt("depth-anything/Depth-Anything-V2-Small-hf", "Depth Anything model "
                           "for --depth auto", "controlnet")
    depth_cache: str | None = opt(None, "cache folder of --depth auto", "controlnet")
    controlnet_scale: float = opt(1.0, "ControlNet conditioning scale", "controlnet")
    guess_mode: bool = opt(False, "ControlNet guess mode", "controlnet")
    control_start: float = opt(0.0, "ControlNet guidance start (fraction of the steps)", "controlnet")
    control_end: float = opt(1.0, "ControlNet guidance end (fraction of the steps)", "controlnet")
    steps: int = opt(50, "DDIM steps", "edit")
    guidance_scale: float = opt(7.5, "classifier-free guidance scale", "edit")
    cross_frame: bool = opt(False, "cross-frame attention in every variant", "edit")
    batch_frames: int = opt(8, "frames per UNet chunk", "edit")
    filter_radius: int = opt(2, "latent filter radius", "edit")
    filter_sigma_spatial: float = opt(1.0, "filter spatial sigma", "edit")
    filter_sigma_range: float | None = opt(None, "filter range sigma (default 0.1 latent, 1.0 features)",
                                           "edit")
    filter_kernel_size: int = opt(5, "features filter kernel size along frames", "edit")

    output_dir: str = opt("runs/compare", "where results.json, results.md, strip.png and the videos go "
                          "(created if its parent exists)", "output")
    strip_frames: int = opt(4, "frames per row of the side-by-side strip", "output")
    demo_adapter_steps: int = opt(0, "demo only: train a demo adapter for this many steps on 12 "
                                  "world videos (0: use the shipped world adapter)", "output")
    progress: bool = opt(True, "show progress bars", "output")

    def __post_init__(self):
        from jaxvedit.world.models import expand_model_alias

        object.__setattr__(self, "model", expand_model_alias(self.model))  # --model world
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("empty prompt: give the target prompt with --prompt \"...\"")
        for name in ("resolution", "width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 64 or v % 64):
                raise ValueError(f"{name}={v} must be a positive multiple of 64")
        unknown = [v for v in self.variants if v not in VARIANTS and v not in CONTROLNET_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from "
                             f"{list(VARIANTS) + list(CONTROLNET_VARIANTS)}")
        for name in ("steps", "batch_frames", "strip_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def is_demo(self) -> bool:
        return self.video is None and self.model is None


DEMO_OVERRIDES = dict(prompt="a blue circle moves right steadily over a striped background",
                      source_prompt="a red circle moves right steadily over a striped background",
                      resolution=128, steps=25, output_dir="runs/compare-demo", batch_frames=16)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _edit_config(cfg: CompareConfig, filter_mode: str):
    from jaxvedit.editing.config import EditConfig

    return EditConfig(video=cfg.video, prompt=cfg.prompt, resolution=cfg.resolution, width=cfg.width,
                      height=cfg.height, start=cfg.start,
                      stop=cfg.stop, stride=cfg.stride, max_frames=cfg.max_frames, fps=cfg.fps,
                      filter=filter_mode, filter_radius=cfg.filter_radius,
                      filter_sigma_spatial=cfg.filter_sigma_spatial,
                      filter_sigma_range=cfg.filter_sigma_range, filter_kernel_size=cfg.filter_kernel_size)


def prepare_demo(cfg: CompareConfig) -> CompareConfig:
    """The world model and the world clip (as the edit demo) and the shipped world GE adapter
    (trained with ``python -m jaxvedit.train`` on 500 world videos, docs/world.md); with
    ``--demo-adapter-steps N`` instead an adapter trained here for N steps on 12 world videos."""
    from jaxvedit.editing.config import EditConfig
    from jaxvedit.editing.pipeline import prepare_demo as edit_demo
    from jaxvedit.world.models import world_adapter_path

    root = Path(cfg.output_dir)
    ecfg = edit_demo(EditConfig(output_dir=str(root)))
    adapter = cfg.adapter
    if adapter is None and cfg.demo_adapter_steps == 0:
        adapter = str(world_adapter_path())
    elif adapter is None:
        adapter_dir = root / "demo-train" / "adapter"
        if not (adapter_dir / "lora" / "adapter_config.json").is_file():
            from jaxvedit.training.config import DEMO_OVERRIDES as TRAIN_DEMO
            from jaxvedit.training.config import TrainConfig
            from jaxvedit.training.trainer import train
            from jaxvedit.world.demo import write_demo_dataset

            data = write_demo_dataset(root / "demo-train-data")
            _log(f"demo: training a demo adapter for {cfg.demo_adapter_steps} steps "
                 f"(python -m jaxvedit.train on {data})")
            tcfg = TrainConfig(**{**TRAIN_DEMO, "model": ecfg.model, "data": str(data),
                                  "output_dir": str(root / "demo-train"), "resolution": cfg.resolution,
                                  "steps": cfg.demo_adapter_steps, "checkpoint_every": 1000,
                                  "progress": cfg.progress})
            train(tcfg)
        adapter = str(adapter_dir)
    return dataclasses.replace(cfg, model=ecfg.model, video=ecfg.video, adapter=adapter)


def _clip_towers(cfg: CompareConfig, model_root: Path):
    """``(vision, text, tokenizer, notes)``: CLIP towers with projections, or None + why not."""
    from jaxvedit.models.clip import (CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
                                      load_tokenizer)

    notes = {}
    if cfg.clip_model:
        folder, vsub, tsub = cfg.clip_model, None, None
    else:
        folder, vsub, tsub = model_root, "image_encoder", "text_encoder"
    vision = text = tok = None
    try:
        vision = CLIPVisionModelWithProjection.from_pretrained(folder, subfolder=vsub)
    except Exception as err:  # noqa: BLE001 - reported in the table
        notes["clip_frame_consistency"] = f"unavailable: no CLIP vision tower with projection ({err})"
    try:
        text = CLIPTextModelWithProjection.from_pretrained(folder, subfolder=tsub)
        tok = load_tokenizer(folder if cfg.clip_model else model_root)
        if vision is None:
            raise ValueError("no vision tower")
    except Exception as err:  # noqa: BLE001
        text = None
        notes["clip_text_alignment"] = (f"unavailable: no CLIP text tower with projection "
                                        f"({str(err)[:200]})")
    return vision, text, tok, notes


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


def write_strip(path: Path, rows: list[tuple[str, np.ndarray]], n_cols: int) -> Path:
    """A grid PNG: one row per variant (label on the left), ``n_cols`` evenly spaced frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = len(rows[0][1])
    cols = np.unique(np.linspace(0, t - 1, min(n_cols, t)).round().astype(int))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols) + 1.4, 1.6 * len(rows)),
                             squeeze=False)
    for r, (name, frames) in enumerate(rows):
        for c, fi in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(frames[fi], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {fi}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


COLUMNS = [("flicker", "flicker (mean abs temporal diff, [0,1])"),
           ("warp_error", "warp error (MSE, source flow)"),
           ("recon_psnr", "inversion recon PSNR (dB)"), ("recon_ssim", "inversion recon SSIM"),
           ("clip_frame_consistency", "CLIP frame consistency"),
           ("clip_text_alignment", "CLIP text alignment"), ("time_s", "time (s)")]


def run_compare(cfg: CompareConfig) -> dict:
    from jaxvedit import metrics
    from jaxvedit.data.video import write_video
    from jaxvedit.editing.pipeline import Editor, filter_config, load_source_frames
    from jaxvedit.editing.recon import reconstruction_metrics

    demo = cfg.is_demo
    out = Path(cfg.output_dir)
    if demo:
        out.mkdir(parents=True, exist_ok=True)  # the demo's own folder (runs/compare-demo)
    if not out.is_dir():
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise FileNotFoundError(f"output folder's parent does not exist: {out.parent} "
                                    f"(creating {out}); create it first")
        out.mkdir()
    if demo:
        cfg = prepare_demo(cfg)
    if cfg.prompt is None:
        raise ValueError("empty prompt: give the target prompt with --prompt \"...\"")
    if cfg.video is None or cfg.model is None:
        raise ValueError("give both --video and --model (or neither, for the embedded demo)")
    names = list(cfg.variants) or [n for n, (ad, _) in VARIANTS.items() if cfg.adapter or not ad]
    if not cfg.variants and cfg.controlnet:
        names += [n for n, (ad, _) in CONTROLNET_VARIANTS.items() if cfg.adapter or not ad]
    if cfg.adapter is None and any(_variant(n)[0] for n in names):
        raise ValueError(f"variants {[n for n in names if _variant(n)[0]]} need --adapter")
    if cfg.controlnet is None and any(_variant(n)[2] for n in names):
        raise ValueError(f"variants {[n for n in names if _variant(n)[2]]} need --controlnet "
                         "(and --depth)")

    frames, fps = load_source_frames(_edit_config(cfg, "none"))
    _log(f"source: {cfg.video}: {len(frames)} frames at {fps:g} fps; variants: {', '.join(names)}")
    from jaxvedit.editing.controlnet import source_depth

    control = source_depth(cfg, frames)
    editor = Editor(cfg.model, adapter=cfg.adapter, vision_model=cfg.vision_model, dtype=cfg.dtype,
                    batch_frames=cfg.batch_frames, controlnet=cfg.controlnet)
    vision, text, tok, clip_notes = _clip_towers(cfg, editor.root)

    def clip_metrics(fr, prompt):
        res = {}
        if vision is not None and len(fr) > 1:
            res["clip_frame_consistency"] = metrics.clip_frame_consistency(fr, vision)
        if text is not None:
            res["clip_text_alignment"] = metrics.clip_text_alignment(fr, prompt, text, vision, tok)
        return res

    latents = editor.encode_frames(frames)
    vae_rt = editor.decode_latents(latents)
    source_row = {"flicker": metrics.flicker(frames), "warp_error": metrics.warp_error(frames, frames),
                  **{f"vae_{k}": v for k, v in reconstruction_metrics(frames, vae_rt).items()},
                  **clip_metrics(frames, cfg.prompt)}
    (out / "videos").mkdir(exist_ok=True)
    rows, strip = [], [("source", frames)]
    for name in names:
        use_adapter, mode, use_cn = _variant(name)
        _log(f"variant {name}")
        t0 = time.perf_counter()
        res = editor.edit(frames, prompt=cfg.prompt, source_prompt=cfg.source_prompt, steps=cfg.steps,
                          guidance_scale=cfg.guidance_scale,
                          filter=filter_config(_edit_config(cfg, mode), editor.unet),
                          cross_frame=cfg.cross_frame, use_adapter=use_adapter, lora_tau=cfg.lora_tau,
                          lora_ratio=cfg.lora_ratio, reconstruct=True, latents=latents,
                          progress=cfg.progress, use_controlnet=use_cn,
                          control=control if use_cn else None, controlnet_scale=cfg.controlnet_scale,
                          guess_mode=cfg.guess_mode, control_start=cfg.control_start,
                          control_end=cfg.control_end)
        dt = time.perf_counter() - t0
        rec = reconstruction_metrics(frames, res.reconstruction)
        row = {"variant": name, "adapter": use_adapter, "filter": mode, "controlnet": use_cn,
               "flicker": metrics.flicker(res.frames), "warp_error": metrics.warp_error(res.frames, frames),
               "recon_psnr": rec["psnr"], "recon_ssim": rec["ssim"],
               **clip_metrics(res.frames, cfg.prompt), "time_s": dt}
        rows.append(row)
        strip.append((name, res.frames))
        write_video(out / "videos" / f"{name.replace('+', '_')}.mp4", res.frames, fps)
    strip_path = write_strip(out / "strip.png", strip, cfg.strip_frames)

    notes = [
        "flicker: mean |x_{t+1} - x_t| of the edited frames in [0, 1] units (lower: steadier).",
        "warp error: edited frame t warped to t+1 with the Farneback flow of the *source* video, "
        "MSE on non-occluded pixels (lower: the edit follows the source motion).",
        "recon PSNR/SSIM: invert the source with the source prompt, sample back with it and no "
        "guidance, compare with the source frames (VAE round trip alone: "
        f"PSNR {source_row['vae_psnr']:.2f} dB, SSIM {source_row['vae_ssim']:.3f}).",
        f"{cfg.steps} DDIM steps, guidance {cfg.guidance_scale}, LoRA tau {cfg.lora_tau} ratio "
        f"{cfg.lora_ratio}, cross-frame attention {'on' if cfg.cross_frame else 'off'}, "
        f"{len(frames)} frames at {frames.shape[2]}x{frames.shape[1]}.",
    ]
    notes += [f"{k}: {v}" for k, v in clip_notes.items()]
    if demo:
        notes.insert(0, "DEMO: the world model (trained on rendered scenes, docs/world.md), its CLIP "
                     "towers and " + ("the shipped world GE adapter" if cfg.demo_adapter_steps == 0
                                      else f"an adapter trained for {cfg.demo_adapter_steps} steps")
                     + ", on one world clip. For the scored benchmark (oracle targets) run "
                     "python -m jaxvedit.compare --suite world.")
    results = {"config": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in dataclasses.asdict(cfg).items()},
               "frames": int(len(frames)), "fps": fps, "source": source_row, "variants": rows,
               "notes": notes, "strip": str(strip_path), "videos": str(out / "videos")}
    clean = json.loads(json.dumps(results, default=float), parse_constant=str)
    clean = json.loads(json.dumps(_deep(clean, _clean)))
    (out / "results.json").write_text(json.dumps(clean, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    return results


def _deep(x, f):
    if isinstance(x, dict):
        return {k: _deep(v, f) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep(v, f) for v in x]
    return f(x)


def results_markdown(results: dict) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in results["variants"]) or c[0] in results["source"]]
    lines = ["# Edit comparison", "",
             f"{results['frames']} frames at {results['fps']:g} fps; strip: `{results['strip']}`", "",
             "| variant | adapter | filter | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    src = results["source"]
    lines.append("| source (input) | | | " + " | ".join(
        _fmt(src.get(k)) if k in ("flicker", "warp_error", "clip_frame_consistency",
                                  "clip_text_alignment") else "" for k, _ in cols) + " |")
    for r in results["variants"]:
        lines.append(f"| {r['variant']} | {'yes' if r['adapter'] else 'no'} | {r['filter']} | "
                     + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.adapters import AdapterLoadError
    from jaxvedit.cli import parse_config
    from jaxvedit.models.weights import WeightLoadError

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--suite" or a.startswith("--suite=") for a in args):
        from jaxvedit.world.bench import main as bench_main  # the world benchmark's own options

        return bench_main(args)
    cfg = parse_config(CompareConfig, args, prog="python -m jaxvedit.compare", defaults=DEMO_OVERRIDES,
                       use_defaults=lambda given: given.get("video") is None and given.get("model") is None)
    try:
        results = run_compare(cfg)
    except (ValueError, FileNotFoundError, AdapterLoadError, WeightLoadError) as err:
        print(f"python -m jaxvedit.compare: error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {results['strip']}, {results['videos']}/",
          file=sys.stderr)
    if cfg.is_demo:
        print("\nThat was the embedded demo (the world model on one world clip; the benchmark "
              "against oracle targets: python -m jaxvedit.compare --suite world). Compare on real "
              "weights with\n"
              "  python -m jaxvedit.compare --model stable-diffusion-v1-5/stable-diffusion-v1-5 "
              "--video input.mp4 --source-prompt \"...\" --prompt \"...\" --adapter runs/sd15/adapter "
              "--clip-model openai/clip-vit-large-patch14 --output-dir runs/compare", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
