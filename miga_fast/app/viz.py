"""Image grids saved as PNG: plain sheets (samples) and labelled figures (row titles,
a caption under each image) for reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, value: float = 1.0) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [C, H', W'] image, `nrow` per row, `pad` pixels apart."""
    if images.dim() != 4:
        raise ValueError(f"`images` must be [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), value, dtype=torch.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = (
            images[i].detach().float().cpu().clamp(0, 1)
        )
    return grid


def save_grid(images: torch.Tensor, path, nrow: int = 8, pad: int = 2, scale: int = 1) -> Path:
    """Save images [N, C, H, W] in [0, 1] as one PNG grid (each pixel `scale` x `scale`)."""
    from PIL import Image

    grid = make_grid(images, nrow, pad)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    a = (grid.numpy() * 255 + 0.5).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def save_labelled_grid(rows, row_titles, path, captions=None, scale: int = 3, pad: int = 4) -> Path:
    """A figure a reader understands without the report beside it: one row of images per
    entry of `rows` (each [k, C, H, W] in [0, 1]), the row's title at its left, and under
    each image its caption (captions[r][i], e.g. the class the classifier gives it),
    when given. Saved as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    if len(row_titles) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_titles)} row titles")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text):
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    k = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2] * scale, rows[0].shape[-1] * scale
    line = text_size("Ag")[1] + 4
    cap_h = line if captions is not None else 0
    title_w = max(text_size(t)[0] for t in row_titles) + 4 * pad
    cell_w = max(w, max((text_size(str(c))[0] for row in (captions or []) for c in row), default=0)) + pad
    width, height = title_w + k * cell_w + pad, len(rows) * (h + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        top = pad + r * (h + cap_h + pad)
        draw.text((pad, top + h // 2 - line // 2), title, fill=(0, 0, 0), font=font)
        for i in range(images.shape[0]):
            a = (images[i].detach().float().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
            tile = Image.fromarray(a.transpose(1, 2, 0)).resize((w, h), Image.NEAREST)
            left = title_w + i * cell_w
            canvas.paste(tile, (left, top))
            if captions is not None:
                draw.text((left, top + h + 2), str(captions[r][i]), fill=(160, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
