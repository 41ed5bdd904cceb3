"""World datasets: scene pools for training, the held-out scenes, and datasets on disk in the
layout ``python -m jaxvedit.train`` reads (``videos/*.mp4`` + ``captions.jsonl``, with the
ground truth beside them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxvedit.world.render import render, scene_arrays, stack_arrays
from jaxvedit.world.scene import SPLIT, SceneSpec, caption, sample_scene


def heldout_t2i_specs(n: int = 64, *, frames: int = 16, size: int = 128) -> list[SceneSpec]:
    """Single-object scenes of held-out seeds whose captions no training scene has (the
    training pool excludes them): the text-to-image check's prompts."""
    seeds = SPLIT.t2i
    specs, seen = [], set()
    for seed in seeds:
        s = sample_scene(seed, frames=frames, size=size, n_objects=1)
        c = caption(s)
        if c not in seen:
            seen.add(c)
            specs.append(s)
        if len(specs) == n:
            return specs
    raise RuntimeError("not enough distinct held-out captions")


def heldout_captions(n: int = 64) -> set[str]:
    return {caption(s) for s in heldout_t2i_specs(n)}


def training_scenes(n: int, *, frames: int = 16, size: int = 128, start: int | None = None,
                    exclude: set[str] | None = None) -> list[SceneSpec]:
    """``n`` training scenes (seeds from the training range), none with a held-out caption."""
    exclude = heldout_captions() if exclude is None else exclude
    out, seed = [], SPLIT.train.start if start is None else start
    while len(out) < n:
        s = sample_scene(seed, frames=frames, size=size)
        if caption(s) not in exclude:
            out.append(s)
        seed += 1
    if seed > SPLIT.train.stop:
        raise ValueError(f"{n} scenes do not fit in the training seed range")
    return out


def pool_arrays(specs: list[SceneSpec]) -> dict[str, np.ndarray]:
    return stack_arrays([scene_arrays(s) for s in specs])


def write_dataset(folder: str | os.PathLike, specs: list[SceneSpec], *, fps: float = 8.0,
                  depth: bool = True, truth: bool = False, video_format: str = "mp4") -> Path:
    """Render ``specs`` into ``folder``: ``videos/<name>.mp4`` (or, with ``video_format="frames"``,
    a folder of PNG frames ``videos/<name>/``), ``captions.jsonl`` (the trainer's layout),
    ``scenes.jsonl`` (the specs), ``depth/<name>/`` PNG depth maps (for a ControlNet), and with
    ``truth`` the masks, layers and flow as ``truth/<name>.npz``."""
    from PIL import Image

    from jaxvedit.data.video import write_frames, write_video

    if video_format not in ("mp4", "frames"):
        raise ValueError(f"video_format must be 'mp4' or 'frames', got {video_format!r}")
    root = Path(folder)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    caps, scenes = [], []
    for i, spec in enumerate(specs):
        name = f"world_{spec.seed if spec.seed is not None else i:08d}"
        r = render(spec)
        if video_format == "mp4":
            rel = f"videos/{name}.mp4"
            write_video(root / rel, r.frames, fps)
        else:
            rel = f"videos/{name}"
            write_frames(root / rel, r.frames, overwrite=True)
        caps.append({"video": rel, "caption": caption(spec)})
        scenes.append({"video": rel, "spec": spec.to_dict()})
        if depth:
            d = root / "depth" / name
            d.mkdir(parents=True, exist_ok=True)
            for t, dm in enumerate(r.depth):
                Image.fromarray(np.clip(np.rint(dm * 255), 0, 255).astype(np.uint8)).save(d / f"{t:04d}.png")
        if truth:
            (root / "truth").mkdir(exist_ok=True)
            np.savez_compressed(root / "truth" / f"{name}.npz", masks=r.masks, layers=r.layers,
                                depth=r.depth, flow=r.flow, flow_valid=r.flow_valid)
    (root / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    (root / "scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    return root


def read_scenes(folder: str | os.PathLike) -> list[SceneSpec]:
    lines = (Path(folder) / "scenes.jsonl").read_text().splitlines()
    return [SceneSpec.from_dict(json.loads(line)["spec"]) for line in lines if line.strip()]
