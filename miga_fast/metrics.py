"""Per-sample image-quality and classification metrics."""
from __future__ import annotations

import torch


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample [B] in dB (inf where x == ref)."""
    if x.shape != ref.shape:
        raise ValueError(f"`x` has shape {tuple(x.shape)}, `ref` {tuple(ref.shape)}: they must match")
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).to(x.dtype if x.dtype.is_floating_point else torch.float32)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """argmax labels of `model` on x, in batches."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    return float((predict(model, x, batch_size) == y.to(x.device)).float().mean())
