"""A compact DDPM noise-prediction UNet with the call signature of a diffusers
`UNet2DModel`: `unet(x_t, t).sample`, so code written for it takes a user's diffusers
model just as well."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class UNetOutput:
    """What diffusers' UNet2DModel returns: the predicted noise in `.sample`."""

    sample: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class DiffusionUNet(nn.Module):
    """eps_theta(x_t, t): a UNet with widths (base, 2*base, 2*base) at full, 1/2 and 1/4
    resolution, one residual block per level on the way down and up, timestep embedding
    added in every block. H and W must be multiples of 4."""

    def __init__(self, channels: int = 1, base: int = 32, tdim: int = 128):
        super().__init__()
        self.tdim = tdim
        self.time = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        w1, w2, w3 = base, 2 * base, 2 * base
        self.inc = nn.Conv2d(channels, w1, 3, padding=1)
        self.down1 = ResBlock(w1, w1, tdim)
        self.down2 = ResBlock(w1, w2, tdim)
        self.mid = ResBlock(w2, w3, tdim)
        self.up2 = ResBlock(w3 + w2, w2, tdim)
        self.up1 = ResBlock(w2 + w1, w1, tdim)
        self.out = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, channels, 3, padding=1))
        self.pool = nn.AvgPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, t) -> UNetOutput:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.time(timestep_embedding(t.to(x.device), self.tdim).to(self.time[0].weight.dtype))
        h1 = self.down1(self.inc(x), temb)
        h2 = self.down2(self.pool(h1), temb)
        m = self.mid(self.pool(h2), temb)
        u2 = self.up2(torch.cat([self.upsample(m), h2], 1), temb)
        u1 = self.up1(torch.cat([self.upsample(u2), h1], 1), temb)
        return UNetOutput(sample=self.out(u1))
