"""Small image denoisers, both residual (they predict the noise and subtract it)."""

from __future__ import annotations

import torch
import torch.nn as nn


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017) without batch norm: `depth` 3x3 conv layers of `width`
    channels with ReLUs, predicting the noise; output = input - noise. Blind: one model
    for every noise level it was trained on."""

    def __init__(self, channels: int = 1, depth: int = 6, width: int = 32):
        super().__init__()
        if depth < 2:
            raise ValueError(f"`depth` must be >= 2, got {depth}")
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNetDenoiser(nn.Module):
    """A two-level UNet (widths base, 2*base, 4*base; average-pool down, bilinear up,
    skip concatenations) predicting the noise; output = input - noise. H and W must be
    multiples of 4."""

    def __init__(self, channels: int = 1, base: int = 32):
        super().__init__()
        self.enc1 = _double_conv(channels, base)
        self.enc2 = _double_conv(base, 2 * base)
        self.mid = _double_conv(2 * base, 4 * base)
        self.dec2 = _double_conv(4 * base + 2 * base, 2 * base)
        self.dec1 = _double_conv(2 * base + base, base)
        self.out = nn.Conv2d(base, channels, 1)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return x - self.out(d1)
