"""Plain-PyTorch SSIM (Wang et al. 2004; ALGORITHMS.md section 2): the oracle for the
SSIM kernels. With the defaults it equals pytorch_msssim.ssim(x, y, data_range=1,
size_average=False)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(win_size: int, win_sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian [win_size] (built in float32, as pytorch-msssim does)."""
    coords = torch.arange(win_size, dtype=torch.float32) - win_size // 2
    g = torch.exp(-(coords ** 2) / (2 * win_sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def blur(t: torch.Tensor, win: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    """Separable Gaussian blur per channel of t [B, C, H, W]; "same" pads with zeros."""
    c = t.shape[1]
    k = win.numel()
    pad = k // 2 if padding == "same" else 0
    t = F.conv2d(t, win.reshape(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, pad), groups=c)
    return F.conv2d(t, win.reshape(1, 1, k, 1).expand(c, 1, k, 1), padding=(pad, 0), groups=c)


def ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), padding="valid", return_map=False):
    """Per-sample SSIM [B] (the map [B, C, H', W'] too with return_map=True)."""
    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    win = gaussian_window(win_size, win_sigma, x.dtype, x.device)
    mu_x, mu_y = blur(x, win, padding), blur(y, win, padding)
    sxx = blur(x * x, win, padding) - mu_x * mu_x
    syy = blur(y * y, win, padding) - mu_y * mu_y
    sxy = blur(x * y, win, padding) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)) * cs_map
    value = ssim_map.flatten(2).mean(-1).mean(-1)
    return (value, ssim_map) if return_map else value
