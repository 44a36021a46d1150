"""DDPM noise schedules (Ho et al. 2020)."""

from __future__ import annotations

import torch


class LinearSchedule:
    """Linear beta from `beta_start` to `beta_end` over T steps (defaults: the authors'
    1e-4 -> 2e-2, T = 1000). Tables are float64 on the CPU; `.to(device)` copies them."""

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
        if T < 1 or not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"need T >= 1 and 0 < beta_start <= beta_end < 1, got {T}, {beta_start}, {beta_end}")
        self.T = T
        self.betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def to(self, device) -> LinearSchedule:
        self.betas = self.betas.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar_t as a [B, 1, ..] tensor in like's dtype and device."""
        a = self.alphas_cumprod.to(like.device)[t.to(like.device)]
        return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    @torch.no_grad()
    def ddim_sample(self, model, shape, steps: int = 50, generator=None, device="cpu") -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from pure noise in `steps` evenly spaced steps."""
        x = torch.randn(shape, generator=generator, device=device)
        ts = torch.linspace(self.T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        for i, t in enumerate(ts):
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            eps = model(x, tt).sample
            a = self.abar(tt, x)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            if i + 1 < len(ts):
                a_next = self.abar(torch.full_like(tt, ts[i + 1]), x)
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
            else:
                x = x0
        return x
