"""The perceptual attack of seed 001: maximise the classifier's loss subject to
SSIM(x, x_adv) >= tau and the box, instead of an l_p ball."""
from __future__ import annotations

import torch

from .. import ops
from .._validation import check_choice, check_scalar, value_checks
from ..nvtx import nvtx_range
from .pgd import PGD

SOLVERS = ("pgd",)


class SSIMAttack(PGD):
    """Projected gradient ascent in the SSIM ball {x' : SSIM(x, x') >= tau}:

        attack = SSIMAttack(model, tau=0.95, steps=20, alpha=2/255)
        adv_images = attack(images, labels)

    Each step: delta += alpha * sign(grad) (descending for targeted=True), the box
    x + delta in [0, 1], then ops.ssim_ball_project_ (the largest step back along delta
    into the ball). solver="pgd" is the projected-gradient solver; the convex solver over
    the structural-SSIM window balls comes with the window-ball op. `ssim_kwargs` go to
    the SSIM (win_size, win_sigma, K, padding).
    """

    def __init__(self, model, tau=0.95, steps=20, alpha=2 / 255, solver="pgd", targeted=False,
                 loss_fn=None, ssim_kwargs=None):
        super().__init__(model, eps=1.0, alpha=alpha, steps=steps, norm="linf", random_start=False,
                         targeted=targeted, fused=True, loss_fn=loss_fn)
        self.tau = check_scalar(tau, "tau")
        if not 0 < self.tau <= 1:
            raise ValueError(f"`tau` must lie in (0, 1], got {self.tau}")
        self.solver = check_choice(solver, "solver", SOLVERS)
        self.ssim_kwargs = dict(ssim_kwargs or {})

    def __repr__(self):
        return (f"SSIMAttack(tau={self.tau}, steps={self.steps}, alpha={self.alpha:.4g}, "
                f"solver={self.solver!r}, targeted={self.targeted})")

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(images, labels)
        x = images.detach()
        labels = labels.long()
        direction = -1.0 if self.targeted else 1.0
        delta = torch.zeros_like(x)
        with value_checks(False):
            for _ in range(self.steps):
                delta.requires_grad_(True)
                with torch.enable_grad(), nvtx_range("ssim_attack.forward_backward"):
                    loss = self.loss_fn(self.model(x + delta), labels)
                    (grad,) = torch.autograd.grad(loss, delta)
                delta = delta.detach()
                with torch.no_grad(), nvtx_range("ssim_attack.project"):
                    # eps = 1 leaves the l-inf ball inactive: the fused step is step + box
                    ops.pgd_step_(delta, grad, x, 1.0, self.alpha, "linf", direction)
                    ops.ssim_ball_project_(delta, x, self.tau, **self.ssim_kwargs)
        return (x + delta).detach()
