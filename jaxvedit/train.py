"""``python -m jaxvedit.train``: train the adapters on video clips (see ``--help``)."""

from __future__ import annotations

import json
import sys


def _method(argv: list[str]) -> str | None:
    """The value of ``--method`` on the command line, or in the ``--config`` file."""
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else (
            a.split("=", 1)[1] if a.startswith("--config=") else None)
        if path:
            try:
                from jaxvedit.cli import read_config_file

                return read_config_file(path).get("method")
            except Exception:
                return None  # the regular parser reports the bad file
    return None


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.cli import parse_config
    from jaxvedit.training.config import DEMO_OVERRIDES, TrainConfig

    argv = sys.argv[1:] if argv is None else list(argv)
    if _method(argv) == "dape":  # DAPE has its own config (jaxvedit.training.dape_config)
        from jaxvedit.training.dape import main as dape_main

        return dape_main(argv)

    cfg = parse_config(TrainConfig, argv, prog="python -m jaxvedit.train",
                       defaults=DEMO_OVERRIDES,
                       use_defaults=lambda given: given.get("model") is None and given.get("data") is None)
    from jaxvedit.training.trainer import train

    demo = cfg.model is None and cfg.data is None
    summary = train(cfg)
    print(json.dumps(summary, indent=2))
    print(f"\nwrote: adapter {summary['adapter']}, metrics {summary['metrics']}, "
          f"loss curve {summary['loss_curve']}, checkpoints {summary['checkpoints']}", file=sys.stderr)
    if demo:
        print("\nThat was the embedded demo (the shipped world model, 12 rendered world videos). Train for "
              "real with\n"
              "  python -m jaxvedit.train --model stable-diffusion-v1-5/stable-diffusion-v1-5 "
              "--data path/to/msrvtt_or_captions_folder --output-dir runs/sd15\n"
              "(--model also takes a diffusers folder or a single-file checkpoint; see --help).",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
