"""Labelled PNG grids of generated images (demo, before/after of a version)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def labelled_grid(rows: Sequence[tuple[str, np.ndarray]], header: Sequence[str] = (),
                  scale: int = 4, label_width: int = 330, pad: int = 4) -> Image.Image:
    """One row per (label, images (n, h, w, 3) uint8): the label on the left, then the
    images enlarged ``scale`` times. ``header`` labels the columns."""
    font = ImageFont.load_default()
    n_cols = max(len(imgs) for _, imgs in rows)
    h, w = rows[0][1].shape[1:3]
    cell_h, cell_w = h * scale + pad, w * scale + pad
    top = 16 if header else 0
    canvas = Image.new("RGB", (label_width + n_cols * cell_w + pad, top + len(rows) * cell_h + pad),
                       (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(header):
        draw.text((label_width + j * cell_w + pad, 2), text, fill=(0, 0, 0), font=font)
    for i, (label, imgs) in enumerate(rows):
        y = top + i * cell_h + pad
        draw.text((pad, y + cell_h // 2 - 8), label, fill=(0, 0, 0), font=font)
        for j, img in enumerate(imgs):
            tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_width + j * cell_w + pad, y))
    return canvas


def save_grid(path: Path, rows: Sequence[tuple[str, np.ndarray]], header: Sequence[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, header).save(path)
    return path
