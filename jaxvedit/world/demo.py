"""What the embedded demos of ``train``, ``edit`` and ``compare`` use: the shipped world model,
a rendered source video with its caption, and a small world dataset.

The edit demo turns a red circle that moves right over a striped background into a blue one;
the oracle of that edit is :func:`demo_edit`'s target.
"""

from __future__ import annotations

from pathlib import Path

from jaxvedit.world.scene import Edit, ObjectSpec, SceneSpec, caption, edit_scene

DEMO_FPS = 8.0


def demo_scene(frames: int = 16) -> SceneSpec:
    circle = ObjectSpec("circle", "red", "linear", size=20.0, start=(34.0, 60.0), direction="right",
                        speed="steadily")
    return SceneSpec("striped", (circle,), frames=frames, size=128)


def demo_edit(frames: int = 16) -> Edit:
    return edit_scene(demo_scene(frames), "colour", "blue")


def write_demo_video(path: str | Path, frames: int = 16) -> Path:
    """The demo's source video (mp4) at ``path``, once."""
    from jaxvedit.data.video import write_video
    from jaxvedit.world.render import render

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, render(demo_scene(frames)).frames, DEMO_FPS)
    return path


def write_demo_dataset(folder: str | Path, n_videos: int = 12) -> Path:
    """``n_videos`` training scenes rendered into ``folder`` (videos + captions.jsonl), once."""
    from jaxvedit.world.data import training_scenes, write_dataset

    folder = Path(folder)
    if not (folder / "captions.jsonl").is_file():
        write_dataset(folder, training_scenes(n_videos, start=2_000_000), depth=False)
    return folder


DEMO_SOURCE_PROMPT = caption(demo_scene())
DEMO_TARGET_PROMPT = caption(demo_edit().target)
