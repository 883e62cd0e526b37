"""Pictures for people: image grids (contact sheets) of frames and audio images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] (tensor or array) -> ``uint8 [H, W, 3]``."""
    x = torch.as_tensor(image).detach().float().cpu()
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def save_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Path:
    """Save rows of ``[3, H, W]`` images in [-1, 1] as one PNG (atomically), a label per row.

    Rows may differ in length; images in a row are laid left to right at their own size.
    """
    path = Path(path)
    cells = [[to_uint8_image(im) for im in row] for row in rows]
    label_w = 90 if labels else 0
    heights = [max(c.shape[0] for c in row) for row in cells]
    widths = [sum(c.shape[1] + pad for c in row) for row in cells]
    canvas = Image.new(
        "RGB", (label_w + max(widths) + pad, sum(h + pad for h in heights) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    y = pad
    for r, row in enumerate(cells):
        if labels:
            draw.text((4, y + heights[r] // 2 - 5), labels[r], fill=(0, 0, 0))
        x = label_w + pad
        for cell in row:
            canvas.paste(Image.fromarray(cell), (x, y))
            x += cell.shape[1] + pad
        y += heights[r] + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
