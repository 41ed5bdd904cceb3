"""The world editing benchmark: ``python -m jaxvedit.world.bench`` (also
``python -m jaxvedit.compare --suite world``).

A fixed held-out suite of source videos (seeds of the suite range), each edited three ways
(the subject's colour, its shape, the background); every edit method of the project is a row,
scored against the renderer's oracle target video (:mod:`jaxvedit.world.metrics`). Writes
``results.json``, ``results.md``, one strip PNG per edit type and one mp4 per row.

Videos are edited in batches (all frames of several videos in one UNet batch: cross-frame
attention and the features filter act within each video); the inversion of a source video is
shared by its three edits.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from jaxvedit.training.config import opt
from jaxvedit.world.scene import EDIT_KINDS, SPLIT, caption, edit_scene, sample_scene

SUITES = {  # videos, frames, DDIM steps
    "world": (24, 16, 50),
    "world-mini": (2, 8, 10),
}


@dataclass(frozen=True)
class Method:
    """A built-in row: inversion + CFG sampling with these options."""

    adapter: bool = False
    filter: str = "none"  # none / latent / features / symmetric
    cross_frame: bool = False
    dape: bool = False  # DAPE (norm-tuning + vision adapter, --dape)
    controlnet: bool = False  # the world depth ControlNet on the source's ground-truth depth


METHODS: dict[str, Method] = {
    "plain": Method(),
    "bilateral-latent": Method(filter="latent"),
    "bilateral-features": Method(filter="features"),
    # the symmetric doubly stochastic fixed-guide filter (docs/theory.md), bilateral-latent's settings
    "symmetric-latent": Method(filter="symmetric"),
    "cross-frame": Method(cross_frame=True),
    "adapter": Method(adapter=True),
    "adapter+latent": Method(adapter=True, filter="latent"),
    "adapter+features": Method(adapter=True, filter="features"),
    "adapter+cross-frame": Method(adapter=True, cross_frame=True),
    "adapter+latent+cross-frame": Method(adapter=True, filter="latent", cross_frame=True),
    "dape": Method(dape=True),
    "dape+latent": Method(dape=True, filter="latent"),
    "controlnet": Method(controlnet=True),
    "adapter+controlnet": Method(adapter=True, controlnet=True),
}
# rows of other edit methods (one video and edit at a time): TokenFlow, LoRA-Edit
from jaxvedit.world.bench_rows import HOST_ROWS, RowBatch, lora_edit_oracle  # noqa: E402

# reference rows: the unedited source (the floor), the exact oracle target (the judge's ceiling:
# an occluded subject's shape cannot always be told) and the oracle through the VAE (the best a
# latent editor can do), and the oracle in the lora-edit mask (the best the lora-edit row can do)
REFERENCE_ROWS = ("source (no edit)", "oracle (exact)", "oracle through the VAE",
                  "oracle in the lora-edit mask")

#: rows added by other modules: name -> fn(context, sources (N,T,H,W,3) uint8, source_prompts,
#: target_prompts [N][3]) -> edited (N, 3, T, H, W, 3) uint8
EXTERNAL: dict[str, Callable] = {}


def register_method(name: str, fn: Callable) -> None:
    if name in METHODS or name in REFERENCE_ROWS:
        raise ValueError(f"method {name!r} exists already")
    EXTERNAL[name] = fn


ADAPTER_TOKENS = ("all", "shared", "none")


@dataclass(frozen=True)
class BenchConfig:
    """Edit the world suite with every method and score each edit against its oracle target:
    PSNR, subject IoU, attribute accuracy, background PSNR, warp error under the ground-truth
    flow, flicker, CLIP-T / CLIP-F (world CLIP), seconds per video."""

    suite: str = opt("world", "suite: world (24 videos x 3 edits, 16 frames, 50 steps) or "
                     "world-mini (2 x 3, 8 frames, 10 steps: CI)", "suite")
    rows: tuple[str, ...] = opt((), "methods to run (default: all that apply); built-in: " +
                                ", ".join([*METHODS, *HOST_ROWS]), "suite")
    videos: int = opt(0, "override the suite's number of videos (0: the suite's)", "suite")
    steps: int = opt(0, "override the suite's DDIM steps (0: the suite's)", "suite")
    guidance_scale: float = opt(7.5, "classifier-free guidance scale", "edit")
    model: str | None = opt(None, "world pipeline folder (default: the shipped one)", "model")
    adapter: str | None = opt(None, "GE adapter (<run>/adapter) for the adapter rows (default: "
                              "the shipped world adapter, if any)", "model")
    dape: str | None = opt(None, "DAPE adapter (<run>/adapter or its dape/ folder) for the dape rows "
                           "(default: the shipped world DAPE adapter, if any)", "model")
    controlnet: str | None = opt(None, "depth ControlNet for the controlnet rows (default: the "
                                 "shipped world depth ControlNet, if any)", "model")
    inpaint_model: str | None = opt(None, "inpainting pipeline for the lora-edit row (default: the "
                                    "shipped world inpainting UNet, if any)", "model")
    lora_edit_steps: int = opt(100, "LoRA-Edit training steps per video and edit (paper: 100)", "model")
    lora_tau: float = opt(0.9, "LoRA timestep gate at inference", "model")
    lora_ratio: float = opt(0.5, "LoRA ratio at inference", "model")
    adapter_tokens: str = opt("all", "prompt tokens of the adapter rows: all ([T_share; "
                              "Z_unshare(frame); text], SPEC), shared (T_share only) or none (the "
                              "LoRA alone, as the authors' published inference script): an "
                              "ablation", "model")
    batch_videos: int = opt(0, "videos per UNet batch (0: all; the three edits of a video are "
                            "sampled together)", "run")
    workers: int = opt(0, "scoring processes (0: one per CPU core, at most 16)", "run")
    output_dir: str = opt("runs/world-bench", "where results, strips and videos go", "run")
    progress: bool = opt(True, "show progress", "run")
    merge: tuple[str, ...] = opt((), "results.json files of runs of the same suite and settings (e.g. "
                                 "rows run on separate machines): write their union of rows to "
                                 "<output-dir>/results.json and results.md, editing nothing", "run")
    append: bool = opt(False, "keep the rows already in <output-dir>/results.json (same suite and "
                       "settings) and run only the missing ones", "run")

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; choose from {list(SUITES)}")
        known = set(METHODS) | set(HOST_ROWS) | set(EXTERNAL) | set(REFERENCE_ROWS)
        bad = [r for r in self.rows if r not in known]
        if bad:
            raise ValueError(f"unknown row(s) {bad}; choose from {sorted(known)}")
        if self.adapter_tokens not in ADAPTER_TOKENS:
            raise ValueError(f"adapter_tokens {self.adapter_tokens!r}: choose from {ADAPTER_TOKENS}")
        for name in ("videos", "steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.lora_edit_steps < 0:
            raise ValueError("lora_edit_steps must be >= 0")
        if self.batch_videos < 0 or self.workers < 0:
            raise ValueError("batch_videos and workers must be >= 0")


def suite_edits(n_videos: int, frames: int, size: int = 128):
    """The held-out suite: ``[(source spec, [Edit colour, Edit shape, Edit background])]``."""
    out = []
    for i, seed in enumerate(SPLIT.suite[:n_videos]):
        spec = sample_scene(seed, frames=frames, size=size)
        out.append((spec, [edit_scene(spec, kind, seed=seed) for kind in EDIT_KINDS]))
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchContext:
    """The loaded world pipeline and what the rows share."""

    def __init__(self, cfg: BenchConfig, model_path: Path, adapter: str | None,
                 dape: str | None = None, controlnet: str | None = None,
                 inpaint_model: str | None = None):
        from jaxvedit.editing.pipeline import Editor

        self.cfg = cfg
        self.editor = Editor(str(model_path), adapter=adapter, batch_frames=64)
        self.has_adapter = adapter is not None
        self.controlnet = None
        if controlnet is not None:
            from jaxvedit.models.controlnet import check_controlnet_fits_unet
            from jaxvedit.models.controlnet_io import load_controlnet

            self.controlnet = load_controlnet(controlnet)
            check_controlnet_fits_unet(self.controlnet, self.editor.unet)
        self.inpaint_model = inpaint_model
        self._inpaint_editor = None
        self.dape = None
        if dape is not None:
            from jaxvedit.adapters import load_adapter
            from jaxvedit.editing.adapters import find_adapter_parts

            parts = find_adapter_parts(dape)
            if "dape" not in parts:
                raise ValueError(f"--dape {dape}: no DAPE adapter there (expected a dape/ folder)")
            self.dape = load_adapter(parts["dape"], self.editor.unet)

    def inpaint_editor(self):
        """The inpainting pipeline's editor (loaded on first use)."""
        if self._inpaint_editor is None:
            from jaxvedit.editing.pipeline import Editor

            if self.inpaint_model is None:
                raise ValueError("the lora-edit row needs an inpainting pipeline: give --inpaint-model")
            self._inpaint_editor = Editor(str(self.inpaint_model), batch_frames=64)
        return self._inpaint_editor

    def contexts(self, frames: np.ndarray, prompts: list[str], tokens: bool) -> list[np.ndarray]:
        """Per prompt, the ``(T, L, D)`` context of each frame of ``frames`` (the adapter's
        prompt tokens as ``--adapter-tokens`` says, when ``tokens``)."""
        mode = self.cfg.adapter_tokens
        ctx = self.editor.contexts(frames, prompts, tokens and mode != "none",
                                   shared_only=mode == "shared")
        return [np.broadcast_to(c, (len(frames),) + c.shape[1:]) for c in ctx]


def run_method(ctx: BenchContext, method: Method, sources: np.ndarray, src_prompts, tgt_prompts,
               steps: int, guidance: float, control: list | None = None) -> np.ndarray:
    """Built-in rows on a batch of videos: ``(N, 3, T, H, W, 3)`` uint8. One inversion of the
    sources, then one sampling run for the three edits of every video together. ``control``:
    per video its ``(T, H, W)`` depth maps in [0, 1] (the controlnet rows)."""
    import jax.numpy as jnp

    from jaxvedit.diffusion import BilateralFilterConfig, ddim_invert, ddim_sample
    from jaxvedit.editing.predictor import EditPredictor

    ed = ctx.editor
    n, t = sources.shape[:2]
    flat = sources.reshape((n * t,) + sources.shape[2:])
    x0 = ed.encode_frames(flat)
    per_video = [ctx.contexts(sources[i], [src_prompts[i], *tgt_prompts[i], ""], method.adapter)
                 for i in range(n)]
    stack = lambda j: np.concatenate([pv[j] for pv in per_video])  # (N*T, L, D)
    lora = ed.lora if (method.adapter and ed.lora is not None) else None
    pred = EditPredictor(ed.unet, lora, lora_tau=ctx.cfg.lora_tau, lora_ratio=ctx.cfg.lora_ratio,
                         cross_frame_group=t if method.cross_frame else 0,
                         dape=ctx.dape if method.dape else None)
    if method.filter == "latent":
        flt = BilateralFilterConfig.latent()
    elif method.filter == "symmetric":
        flt = BilateralFilterConfig.symmetric()  # guide: the source latents x_0 of each frame
    elif method.filter == "features":
        from jaxvedit.diffusion import default_feature_paths

        flt = BilateralFilterConfig.features(feature_paths=default_feature_paths(ed.unet), video_frames=t)
    else:
        flt = BilateralFilterConfig.none()
    inv_pred = samp_pred = pred
    if method.controlnet:  # inversion and sampling both see the source's depth (authors' pipeline)
        from jaxvedit.diffusion.control import ControlNetPredictor

        if control is None:
            raise ValueError("the controlnet rows need the sources' depth maps")
        # 8 bits, as the dataset's depth PNGs the ControlNet was trained on
        depth = np.round(np.clip(np.concatenate(list(control)), 0.0, 1.0) * 255.0) / 255.0
        inv_pred = ControlNetPredictor(pred, ctx.controlnet, depth)
        samp_pred = ControlNetPredictor(pred, ctx.controlnet, np.concatenate([depth] * 3))
    inv = ddim_invert(inv_pred, jnp.asarray(x0), jnp.asarray(stack(0)), ed.schedule,
                      num_inference_steps=steps, filter=flt)
    # the three edits of every video in one batch, edit-major: [colour; shape; background]
    x = jnp.concatenate([inv] * 3)
    tgt = jnp.asarray(np.concatenate([stack(1 + k) for k in range(3)]))
    unc = jnp.asarray(np.concatenate([stack(4)] * 3))
    z = ddim_sample(samp_pred, x, tgt, ed.schedule, num_inference_steps=steps, guidance_scale=guidance,
                    uncond_context=unc if guidance != 1 else None)
    frames = ed.decode_latents(np.asarray(z)).reshape((3,) + sources.shape)
    return np.moveaxis(frames, 0, 1)


class CompileTimer:
    """Sums the seconds JAX spends tracing, lowering and compiling while active."""

    _listening = False
    _active: list = []

    def __enter__(self):
        import jax

        if not CompileTimer._listening:
            def on_event(name, secs, **kw):
                if name.startswith("/jax/core/compile/"):
                    for timer in CompileTimer._active:
                        timer.seconds += secs
            jax.monitoring.register_event_duration_secs_listener(on_event)
            CompileTimer._listening = True
        self.seconds = 0.0
        CompileTimer._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileTimer._active.remove(self)


def score_all(edited: np.ndarray, suite, workers: int) -> list[list[dict]]:
    """``score_edit`` of every (video, edit), in worker processes (the judge is CPU work)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from jaxvedit.world.metrics import score_job

    jobs = [(edited[i, k], e) for i, (_, edits) in enumerate(suite) for k, e in enumerate(edits)]
    if workers <= 1:
        flat = [score_job(j) for j in jobs]
    else:
        import os
        from unittest import mock

        # children: CPU only (the environment is restored afterwards)
        with mock.patch.dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""):
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                flat = list(pool.map(score_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return [flat[i * 3:(i + 1) * 3] for i in range(len(suite))]


def _clip_scores(ctx_clip, video: np.ndarray, prompt: str) -> dict:
    from jaxvedit.metrics import clip_frame_consistency, clip_text_alignment

    vision, text, tok = ctx_clip
    return {"clip_t": clip_text_alignment(video, prompt, text, vision, tok),
            "clip_f": clip_frame_consistency(video, vision)}


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(per_edit: list[dict]) -> dict:
    """A row's means over its edits. ``background_psnr`` pools the colour and shape edits (where
    the background must stay as it is): the PSNR of their mean squared error (inf: identical)."""
    summary = {m: _mean(per_edit, m) for m in METRIC_COLUMNS if m != "background_psnr"}
    for kind in EDIT_KINDS:
        summary[f"{kind}_attribute_accuracy"] = _mean([r for r in per_edit if r["kind"] == kind],
                                                      "attribute_accuracy")
    mse = [255.0 ** 2 * 10 ** (-r["background_psnr"] / 10) for r in per_edit
           if r["kind"] != "background" and r.get("background_psnr") is not None
           and math.isfinite(r["background_psnr"])]
    m = float(np.mean(mse)) if mse else float("nan")
    summary["background_psnr"] = (float("inf") if m < 1e-8 else
                                  float(10 * np.log10(255.0 ** 2 / m)) if mse else float("nan"))
    return summary


METRIC_COLUMNS = ("psnr", "object_iou", "attribute_accuracy", "all_attributes_accuracy",
                  "background_psnr", "warp_error_gt", "flicker", "clip_t", "clip_f")


def run_bench(cfg: BenchConfig) -> dict:
    from jaxvedit.models.clip import (CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
                                      load_tokenizer)
    import os

    import jax

    from jaxvedit.world.models import (world_adapter_path, world_controlnet_path,
                                       world_inpaint_path, world_model_path)
    from jaxvedit.world.render import render

    n_videos, frames, steps = SUITES[cfg.suite]
    n_videos, steps = cfg.videos or n_videos, cfg.steps or steps
    model_path = Path(cfg.model) if cfg.model else world_model_path()
    adapter = cfg.adapter or world_adapter_path(missing_ok=True)
    adapter = str(adapter) if adapter else None
    dape = cfg.dape or world_adapter_path(missing_ok=True, kind="dape")
    dape = str(dape) if dape else None
    controlnet = cfg.controlnet or world_controlnet_path(missing_ok=True)
    controlnet = str(controlnet) if controlnet else None
    inpaint = cfg.inpaint_model or world_inpaint_path(missing_ok=True)
    inpaint = str(inpaint) if inpaint else None
    have = {"adapter": adapter, "dape": dape, "controlnet": controlnet, "inpaint": inpaint}

    def needs(name):
        if name in HOST_ROWS:
            return set(HOST_ROWS[name].needs)
        m = METHODS.get(name, Method())
        return {k for k in ("adapter", "dape", "controlnet") if getattr(m, k)}

    rows = list(cfg.rows) or [*REFERENCE_ROWS, *[m for m in [*METHODS, *HOST_ROWS]
                                                 if all(have[k] for k in needs(m))], *EXTERNAL]
    flags = {"adapter": "--adapter (no shipped world adapter)", "dape": "--dape (none shipped)",
             "controlnet": "--controlnet (no shipped world depth ControlNet)",
             "inpaint": "--inpaint-model (no shipped world inpainting UNet)"}
    for k, how in flags.items():
        missing = [r for r in rows if k in needs(r) and not have[k]]
        if missing:
            raise ValueError(f"rows {missing} need {'an' if k == 'adapter' else 'a'} {k}: give {how}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    suite = suite_edits(n_videos, frames)
    truth_src = [render(s) for s, _ in suite]
    sources = np.stack([r.frames for r in truth_src])
    truth_tgt = [[render(e.target) for e in edits] for _, edits in suite]
    src_prompts = [caption(s) for s, _ in suite]
    tgt_prompts = [[e.target_caption for e in edits] for _, edits in suite]
    _log(f"suite {cfg.suite}: {n_videos} videos x {len(EDIT_KINDS)} edits, {frames} frames, "
         f"{steps} steps ({time.perf_counter() - t0:.1f} s to render)")
    ctx = BenchContext(cfg, model_path, adapter,
                       dape if any("dape" in needs(r) for r in rows) else None,
                       controlnet if any("controlnet" in needs(r) for r in rows) else None,
                       inpaint if any("inpaint" in needs(r) for r in rows) else None)
    clip = (CLIPVisionModelWithProjection.from_pretrained(model_path, subfolder="image_encoder"),
            CLIPTextModelWithProjection.from_pretrained(model_path, subfolder="text_encoder"),
            load_tokenizer(model_path))
    workers = cfg.workers or min(os.cpu_count() or 1, 16)
    device = jax.devices()[0].device_kind
    results, videos = {}, {}
    if cfg.append and (out / "results.json").is_file():
        old = json.loads((out / "results.json").read_text())
        want = {"suite": cfg.suite, "videos": n_videos, "frames": frames, "steps": steps,
                "guidance_scale": cfg.guidance_scale}
        unrecorded = [k for k in want if k not in old]
        same = {k: old.get(k, want[k]) for k in want}
        seeds = [spec.seed for spec, _ in suite]
        if same != want or any(sorted({e["seed"] for e in r["edits"]}) != sorted(seeds)
                               for r in old["rows"].values()):
            raise ValueError(f"--append: {out / 'results.json'} holds another run ({same}, its "
                             f"videos' seeds), not {want}")
        results = dict(old["rows"])  # every row of the file stays; only the missing ones run
        for r in results.values():  # re-summarise with this version's summary
            r["summary"] = summarise(r["edits"])
            r.setdefault("device", "not recorded")
            if unrecorded:  # an older partial file: its videos match, these settings it did not keep
                r.setdefault("settings_unrecorded", unrecorded)
        _log(f"--append: keeping {list(results)}")
    for name in rows:
        if name in results:
            continue
        t_row = time.perf_counter()
        timer = CompileTimer().__enter__()
        if name == "source (no edit)":
            edited = np.repeat(sources[:, None], 3, axis=1)
        elif name == "oracle (exact)":
            edited = np.stack([[r.frames for r in rs] for rs in truth_tgt])
        elif name == "oracle through the VAE":
            tg = np.stack([[r.frames for r in rs] for rs in truth_tgt])
            flat = tg.reshape((-1,) + tg.shape[3:])
            edited = ctx.editor.decode_latents(ctx.editor.encode_frames(flat)).reshape(tg.shape)
        elif name == "oracle in the lora-edit mask":
            edited = lora_edit_oracle(ctx.editor, sources, truth_src, truth_tgt, EDIT_KINDS)
        else:
            parts = []
            bv = cfg.batch_videos or n_videos
            for b in range(0, n_videos, bv):
                sl = slice(b, b + bv)
                if name in METHODS:
                    parts.append(run_method(ctx, METHODS[name], sources[sl], src_prompts[sl],
                                            tgt_prompts[sl], steps, cfg.guidance_scale,
                                            control=[r.depth for r in truth_src[sl]]))
                elif name in HOST_ROWS:
                    row = HOST_ROWS[name]
                    opts = dict(row.options)
                    if name == "lora-edit":
                        opts["train_steps"] = cfg.lora_edit_steps
                    parts.append(row.fn(ctx, RowBatch(sources[sl], src_prompts[sl], tgt_prompts[sl],
                                                      truth_src[sl], truth_tgt[sl], EDIT_KINDS,
                                                      steps, cfg.guidance_scale), **opts))
                else:
                    parts.append(np.asarray(EXTERNAL[name](ctx, sources[sl], src_prompts[sl],
                                                           tgt_prompts[sl], steps=steps,
                                                           guidance=cfg.guidance_scale)))
            edited = np.concatenate(parts)
        elapsed = time.perf_counter() - t_row
        timer.__exit__()
        compile_s = timer.seconds
        t_score = time.perf_counter()
        scores = score_all(edited, suite, workers)
        per_edit = []
        for i, (spec, edits) in enumerate(suite):
            for k, e in enumerate(edits):
                sc = {**scores[i][k], **_clip_scores(clip, edited[i, k], e.target_caption)}
                per_edit.append({"video": i, "seed": spec.seed, "kind": e.kind, "old": e.old,
                                 "new": e.new, **sc})
        score_s = time.perf_counter() - t_score
        edits_run = name not in REFERENCE_ROWS
        # seconds per edited video: the row's wall time less JAX's tracing and compilation
        timing = max(elapsed - compile_s, 0.0) / (n_videos * 3) if edits_run else 0.0
        sec_note = "excludes compilation" if edits_run else "no editing"
        summary = summarise(per_edit)
        results[name] = {"summary": summary, "device": device, "seconds_per_video": timing,
                         "timing": sec_note,
                         "row_seconds": elapsed, "compile_seconds": compile_s,
                         "score_seconds": score_s, "edits": per_edit}
        if "adapter" in needs(name):  # the inference settings of the GE adapter rows
            results[name]["adapter_settings"] = {"lora_tau": cfg.lora_tau, "lora_ratio": cfg.lora_ratio,
                                                 "adapter_tokens": cfg.adapter_tokens}
        videos[name] = edited
        partial = {"suite": cfg.suite, "complete": False, "videos": n_videos, "frames": frames,
                   "steps": steps, "guidance_scale": cfg.guidance_scale, "rows": results}
        (out / "results.json").write_text(json.dumps(_clean(partial), indent=2))  # survives a kill
        _log(f"[{name}] psnr {summary['psnr']:.2f} iou {summary['object_iou']:.3f} "
             f"attr {summary['attribute_accuracy']:.3f} warp {summary['warp_error_gt']:.4f} "
             f"({elapsed:.1f} s)")
    report = {"suite": cfg.suite, "complete": True, "videos": n_videos, "frames": frames, "steps": steps,
              "guidance_scale": cfg.guidance_scale, "model": str(model_path), "adapter": adapter,
              "dape": dape, "controlnet": controlnet, "inpaint_model": inpaint,
              "lora_edit_steps": cfg.lora_edit_steps,
              "lora_tau": cfg.lora_tau, "lora_ratio": cfg.lora_ratio, "rows": results,
              "seconds": time.perf_counter() - t0}
    write_outputs(out, report, videos, sources, truth_tgt, suite)
    return report


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else None  # JSON has no infinity
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def results_markdown(report: dict) -> str:
    cols = ["psnr", "object_iou", *[f"{k}_attribute_accuracy" for k in EDIT_KINDS],
            "background_psnr", "warp_error_gt", "flicker", "clip_t", "clip_f"]
    head = ["row", "PSNR", "subject IoU", "colour right", "shape right", "background right",
            "bg PSNR", "warp err (GT flow)", "flicker", "CLIP-T", "CLIP-F", "s / video", "device"]
    lines = [f"World suite `{report['suite']}`: {report['videos']} videos x 3 edits, "
             f"{report['frames']} frames, {report['steps']} DDIM steps, guidance "
             f"{report['guidance_scale']}. Attribute columns: share of frames whose judged "
             "attribute equals the target's, for the edits of that type; bg PSNR pools the colour "
             "and shape edits (inf: unchanged); s / video excludes compilation.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["rows"].items():
        s = r["summary"]
        vals = [s.get(c) for c in cols]
        fmt = ["inf" if v in (float("inf"), "inf") else "n/a" if v is None or (isinstance(v, float) and
               not math.isfinite(v)) else f"{v:.3g}" for v in vals]
        secs = f"{r['seconds_per_video']:.3g}" if r["timing"] != "no editing" else "-"
        lines.append(f"| {name} | " + " | ".join(fmt) + f" | {secs} | {r.get('device', '?')} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict, videos: dict, sources, truth_tgt, suite) -> None:
    from jaxvedit.compare import write_strip
    from jaxvedit.data.video import write_video

    (out / "results.json").write_text(json.dumps(_clean(report), indent=2))
    (out / "results.md").write_text(results_markdown(report))
    for k, kind in enumerate(EDIT_KINDS):
        rows = [("source", sources[0]), ("oracle", truth_tgt[0][k].frames)]
        rows += [(name, v[0, k]) for name, v in videos.items()
                 if name not in ("source (no edit)", "oracle (exact)")]
        write_strip(out / f"strip_{kind}.png", rows, 4)
    vids = out / "videos"
    vids.mkdir(exist_ok=True)
    for name, v in videos.items():
        grid = np.concatenate([sources[0]] + [v[0, k] for k in range(3)], axis=2)
        safe = "".join(c if c.isalnum() or c in "+-_" else "_" for c in name)
        try:
            write_video(vids / f"{safe}.mp4", grid, 8.0)
        except ImportError:  # no PyAV here: keep the frames (python -m jaxvedit.world.bench writes mp4s)
            np.savez_compressed(vids / f"{safe}.npz", frames=grid)


SETTINGS = ("suite", "videos", "frames", "steps", "guidance_scale")


def merge_results(paths) -> dict:
    """The union of the rows of several ``results.json`` of one suite and settings (a row in
    several files: the later file's). Raises when the files hold different runs."""
    merged = None
    for p in paths:
        rep = json.loads(Path(p).read_text())
        if merged is None:
            merged = {**rep, "rows": dict(rep["rows"]), "merged_from": [str(p)]}
            continue
        a, b = ({k: r.get(k) for k in SETTINGS} for r in (merged, rep))
        if a != b:
            raise ValueError(f"--merge: {p} holds another run ({b}) than {merged['merged_from'][0]} ({a})")
        merged["rows"].update(rep["rows"])
        merged["merged_from"].append(str(p))
    if merged is None:
        raise ValueError("--merge needs at least one results.json")
    for r in merged["rows"].values():
        r["summary"] = summarise(r["edits"])
    return merged


def main(argv=None) -> int:
    from jaxvedit.cli import parse_config

    cfg = parse_config(BenchConfig, argv, prog="python -m jaxvedit.world.bench")
    if cfg.merge:
        report = merge_results(cfg.merge)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(_clean(report), indent=2))
        (out / "results.md").write_text(results_markdown(report))
        print(results_markdown(report))
        return 0
    report = run_bench(cfg)
    print(results_markdown(report))
    print(f"wrote {cfg.output_dir}/results.json, results.md, strip_*.png, videos/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
