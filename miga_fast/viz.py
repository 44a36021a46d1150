"""Image grids saved as PNG (for reports and sample sheets)."""
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
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = \
            images[i].detach().float().cpu().clamp(0, 1)
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
