"""``python -m jaxvedit.prepare``: encode a video dataset once into a sharded clip store that
``python -m jaxvedit.train --data <store>`` reads (see ``--help`` and docs/training.md)."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.cli import parse_config
    from jaxvedit.data.prepare import PrepareConfig, prepare_store

    cfg = parse_config(PrepareConfig, argv, prog="python -m jaxvedit.prepare")
    from jaxvedit.models.weights import WeightLoadError

    try:
        summary = prepare_store(cfg)
    except (ValueError, FileNotFoundError, KeyError, WeightLoadError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"python -m jaxvedit.prepare: error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
