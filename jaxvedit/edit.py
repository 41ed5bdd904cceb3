"""``python -m jaxvedit.edit``: edit a video with a text prompt (see ``--help`` and docs/editing.md).

With no --video and no --model it runs the embedded demo (the shipped world model turns a red
circle into a blue one, CPU) and writes ``runs/edit-demo/edited.mp4`` and ``edited.gif``.
"""

from __future__ import annotations

import json
import sys

REAL_WEIGHTS_HINT = (
    "Edit a real video with real weights:\n"
    "  python -m jaxvedit.edit --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\\n"
    "      --video input.mp4 --source-prompt \"a man walking\" --prompt \"an astronaut walking\" \\\n"
    "      --adapter runs/sd15/adapter --out edited.mp4 --cross-frame --dtype bfloat16\n"
    "(--model also takes a local diffusers folder; --adapter is optional; see --help).")


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.cli import parse_config
    from jaxvedit.editing.config import DEMO_OVERRIDES, EditConfig

    cfg = parse_config(EditConfig, argv, prog="python -m jaxvedit.edit", defaults=DEMO_OVERRIDES,
                       use_defaults=lambda given: given.get("video") is None and given.get("model") is None)
    from jaxvedit.adapters import AdapterLoadError
    from jaxvedit.editing.pipeline import edit_video
    from jaxvedit.models.weights import WeightLoadError

    try:
        summary = edit_video(cfg)
    except (ValueError, FileNotFoundError, KeyError, AdapterLoadError, WeightLoadError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"python -m jaxvedit.edit: error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    outs = ", ".join(f"{k} {v}" for k, v in summary["outputs"].items())
    print(f"\nwrote: {outs} ({summary['frames']} frames at {summary['fps']:g} fps)", file=sys.stderr)
    if summary["demo"]:
        hint = REAL_WEIGHTS_HINT
        if summary.get("method") == "lora-edit":
            from jaxvedit.editing.lora_edit import REAL_WEIGHTS_HINT as hint
        what = ("a tiny random inpainting model, generated clip: the output is noise by design"
                if summary.get("method") == "lora-edit" else
                "the world model turned a red circle into a blue one, docs/world.md")
        print(f"\nThat was the embedded demo ({what}).\n" + hint, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
