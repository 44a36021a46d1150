"""Feature squeezing and non-local means, in plain PyTorch (the diffusion purifiers are
in miga_fast.purify)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_batch, check_int, check_scalar, check_tensor, check_unit_range


def _check_images(x):
    check_tensor(x, "x")
    check_batch(x, "x")
    if x.dim() != 4:
        raise ValueError(f"`x` must be [B, C, H, W], got shape {tuple(x.shape)}")
    check_unit_range(x, "x")


class FeatureSqueeze:
    """Bit-depth reduction to `bits` bits, then a `median` x `median` median filter
    (reflect-padded; Xu et al. use 5 bits and 2 x 2 on CIFAR-10). median=1: none."""

    name = "squeeze"

    def __init__(self, bits: int = 5, median: int = 2):
        check_int(bits, "bits", 1, 16)
        check_int(median, "median", 1)
        self.bits, self.median = bits, median

    @torch.no_grad()
    def __call__(self, x):
        _check_images(x)
        levels = 2**self.bits - 1
        x = torch.round(x * levels) / levels
        k = self.median
        if k == 1:
            return x
        b, c, h, w = x.shape
        xp = F.pad(x, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2), mode="reflect" if min(h, w) > k else "replicate")
        patches = F.unfold(xp, k).reshape(b, c, k * k, h, w)
        return patches.median(dim=2).values


class NonLocalMeans:
    """Non-local means: each pixel becomes the average of the pixels in its `search` x
    `search` neighbourhood, weighted by exp(-max(d2 - 2 sigma^2, 0) / h^2) with d2 the mean
    squared difference of their `patch` x `patch` patches (over channels). h defaults to
    0.8 sigma as scikit-image suggests; sigma is the noise level on the [0, 1] scale."""

    name = "nlm"

    def __init__(self, sigma: float = 0.04, h: float | None = None, patch: int = 3, search: int = 7):
        self.sigma = check_scalar(sigma, "sigma")
        self.h = check_scalar(h if h is not None else 0.8 * self.sigma, "h")
        if self.h <= 0:
            raise ValueError(f"`h` must be > 0, got {self.h}")
        for name, v in (("patch", patch), ("search", search)):
            check_int(v, name, 1, odd=True)
        self.patch, self.search = patch, search

    @torch.no_grad()
    def __call__(self, x):
        _check_images(x)
        b, c, h, w = x.shape
        r, p = self.search // 2, self.patch // 2
        xp = F.pad(x, (r + p,) * 4, mode="replicate")
        center = xp[..., r : r + h + 2 * p, r : r + w + 2 * p]
        box = torch.ones(1, 1, self.patch, self.patch, dtype=x.dtype, device=x.device) / self.patch**2
        num = torch.zeros_like(x)
        den = torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                shifted = xp[..., r + dy : r + dy + h + 2 * p, r + dx : r + dx + w + 2 * p]
                d2 = F.conv2d((shifted - center).pow(2).mean(1, keepdim=True), box)
                wgt = torch.exp(-(d2 - 2 * self.sigma**2).clamp_min(0) / self.h**2)
                num += wgt * shifted[..., p : p + h, p : p + w]
                den += wgt
        return num / den
