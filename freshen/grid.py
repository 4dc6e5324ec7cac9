"""The before/after PNG of a version: one row per fact, before | after | target, every image
with the judge's label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def label_text(label: object) -> str:
    """A judge's label as a short caption: a ToyWorld visual's colour and shape, a CLIP
    judge's chosen prompt as it is."""
    if hasattr(label, "colour") and hasattr(label, "shape"):
        return f"{label.colour} {label.shape}"
    return str(label)


def comparison_grid(facts: Sequence[tuple[str, Sequence[tuple[np.ndarray, Sequence[str]]]]],
                    columns: Sequence[str], scale: int = 5, pad: int = 6, caption: int = 12) -> Image.Image:
    """One row per fact: its title above, then one panel per column (before | after |
    target), each a few images side by side with the judge's label under every image.
    ``facts``: (title, [(images (k, h, w, 3) uint8, labels) per column])."""
    font = ImageFont.load_default()
    k = max(len(imgs) for _, panels in facts for imgs, _ in panels)
    h, w = facts[0][1][0][0].shape[1:3]
    tile_w, tile_h = w * scale, h * scale
    longest = max((font.getlength(label_text(lab)) for _, panels in facts for _, labels in panels for lab in labels),
                  default=0)
    cell_w = max(tile_w, min(int(longest) + 2, 160))  # labels whole under their image, up to 160 px
    panel_w = k * (cell_w + pad) + pad
    title_h, row_h = 14, 14 + tile_h + caption + pad
    canvas = Image.new("RGB", (len(columns) * (panel_w + pad) + pad, 16 + len(facts) * (row_h + pad)), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(columns):
        draw.text((pad + c * (panel_w + pad) + pad, 2), name, fill=(0, 0, 0), font=font)
    for r, (title, panels) in enumerate(facts):
        y = 16 + r * (row_h + pad)
        draw.text((pad, y), title, fill=(0, 0, 90), font=font)
        for c, (imgs, labels) in enumerate(panels):
            x0 = pad + c * (panel_w + pad)
            draw.rectangle([x0, y + title_h - 2, x0 + panel_w, y + row_h], outline=(200, 200, 200))
            for j, (img, lab) in enumerate(zip(imgs, labels, strict=True)):
                x = x0 + pad + j * (cell_w + pad)
                canvas.paste(Image.fromarray(img).resize((tile_w, tile_h), Image.NEAREST),
                             (x + (cell_w - tile_w) // 2, y + title_h))
                text = _fit(label_text(lab), cell_w, font)
                draw.text((x + (cell_w - font.getlength(text)) // 2, y + title_h + tile_h + 1), text,
                          fill=(60, 60, 60), font=font)
    return canvas


def _fit(text: str, width: int, font) -> str:
    """``text``, cut with an ellipsis if it is wider than ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."
