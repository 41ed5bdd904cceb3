"""What ``python -m jaxvedit.edit`` writes beside the video: the preview strip PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def preview_path(video: str | Path) -> Path:
    """``edited.mp4`` -> ``edited_preview.png`` (same folder)."""
    v = Path(video)
    return v.with_name(f"{v.stem}_preview.png")


def write_preview_strip(path: str | Path, source: np.ndarray, edited: np.ndarray, *,
                        columns: int = 4, gap: int = 4) -> Path:
    """A PNG of two rows, source over edited, at ``columns`` evenly spaced frames (native
    size, ``gap`` white pixels between tiles)."""
    import cv2

    src, ed = np.asarray(source), np.asarray(edited)
    if src.shape != ed.shape or src.ndim != 4:
        raise ValueError(f"source {src.shape} and edited {ed.shape} frames must be the same (T, H, W, 3)")
    t, h, w, _ = src.shape
    cols = np.unique(np.linspace(0, t - 1, min(columns, t)).round().astype(int))
    sheet = np.full((2 * h + gap, len(cols) * w + (len(cols) - 1) * gap, 3), 255, np.uint8)
    for c, fi in enumerate(cols):
        x = c * (w + gap)
        sheet[:h, x:x + w] = src[fi]
        sheet[h + gap:, x:x + w] = ed[fi]
    p = Path(path)
    if not cv2.imwrite(str(p), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write the preview strip {p}")
    return p
