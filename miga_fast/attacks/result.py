"""What an attack on a denoiser returns for one batch (docs/attacks.md, "Call convention")."""

from __future__ import annotations

import dataclasses

import torch

from .. import metrics


@dataclasses.dataclass
class AttackResult:
    """What an attack on a batch returns. Per-sample tensors are [B] on the CPU."""

    adversarial: torch.Tensor  # x_n + delta
    denoised: torch.Tensor  # D(x_n + delta), clamped into [0, 1]: the pipeline's image
    denoised_clean: torch.Tensor  # D(x_n), clamped: the un-attacked pipeline's image
    delta: torch.Tensor
    success: torch.Tensor | None  # known task: the label changed (hit the target); else None
    correct_before: torch.Tensor | None  # the pipeline classified x_n correctly before the attack
    psnr: torch.Tensor  # of D(x_n + delta) against the clean image (x_ref without one)
    ssim: torch.Tensor
    psnr_vs_denoised: torch.Tensor  # of D(x_n + delta) against D(x_n)
    ssim_vs_denoised: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    losses: dict[str, list[float]]  # the mean of each loss term at every step
    seconds: float

    def attack_success_rate(self) -> float | None:
        """Success over the samples the pipeline got right before the attack."""
        if self.success is None or self.correct_before is None:
            return None
        return metrics.attack_success_rate(self.success, self.correct_before)

    def summary(self) -> dict:
        return {
            "n": int(self.delta.shape[0]),
            "asr": self.attack_success_rate(),
            "psnr": float(self.psnr.mean()),
            "ssim": float(self.ssim.mean()),
            "ssim_vs_denoised": float(self.ssim_vs_denoised.mean()),
            "psnr_vs_denoised": float(self.psnr_vs_denoised[torch.isfinite(self.psnr_vs_denoised)].mean())
            if torch.isfinite(self.psnr_vs_denoised).any()
            else float("inf"),
            "linf": float(self.linf.max()),
            "l2": float(self.l2.mean()),
            "images_per_s": self.delta.shape[0] / self.seconds if self.seconds > 0 else float("inf"),
        }
