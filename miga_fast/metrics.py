"""Per-sample image-quality and classification metrics."""

from __future__ import annotations

import torch


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample [B] in dB (inf where x == ref)."""
    if x.shape != ref.shape:
        raise ValueError(f"`x` has shape {tuple(x.shape)}, `ref` {tuple(ref.shape)}: they must match")
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).to(x.dtype if x.dtype.is_floating_point else torch.float32)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """argmax labels of `model` on x, in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    return float((predict(model, x, batch_size) == y.to(x.device)).float().mean())


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per sample [B] (Gaussian 11 x 11 window; 7 x 7 for images under 16 pixels a
    side, which an 11-tap window does not fit); x is clamped to [0, 1] first."""
    from .ops import ssim as _ssim

    win = 7 if min(x.shape[-2:]) < 16 else 11
    return _ssim(x.clamp(0, data_range), ref, data_range=data_range, win_size=win)


def attack_success_rate(success: torch.Tensor, correct_before: torch.Tensor) -> float:
    """The share of the samples the pipeline got right before the attack (correct_before)
    that the attack succeeded on; NaN when there are none."""
    n = int(correct_before.sum())
    return float((success & correct_before).sum()) / n if n else float("nan")
