"""The perceptual attack (docs/algorithms.md §2): maximise the classifier's loss subject to
SSIM(x, x_adv) >= tau and the box, instead of an l_p ball."""

from __future__ import annotations

import torch

from .. import ops
from .._validation import check_choice, check_int, check_scalar, value_checks
from ..nvtx import nvtx_range
from ..ops.ssim import GAMMA_MIN
from ..reference import ssim as ssim_ref
from .pgd import PGD

SOLVERS = ("pgd", "convex")


class SSIMAttack(PGD):
    """Projected gradient ascent in the SSIM ball {x' : SSIM(x, x') >= tau}:

        attack = SSIMAttack(model, tau=0.95, steps=20, alpha=2/255)
        adv_images = attack(images, labels)

    solver="pgd": each step delta += alpha * sign(grad) (descending for targeted=True), the
    box x + delta in [0, 1], then ops.ssim_ball_project_ (the largest step back along delta
    into the ball of the Gaussian SSIM). `ssim_kwargs` go to that SSIM (win_size,
    win_sigma, K, padding).

    solver="convex": the paper's convex route over the structural-SSIM window balls
    (ops.ssim_window_ball_project_'s set, tau as gamma, `window` pixels square, delta's
    window means kept at zero): Frank-Wolfe steps — linearise the classifier at the
    current point, take the closed-form maximiser of the linear model over the ball set,
    move delta <- (1 - b) delta + b s with b = 2 / (k + 2) — then the box. Batched on
    tensors; no external solver in the loop.
    """

    def __init__(
        self,
        model,
        tau=0.95,
        steps=20,
        alpha=2 / 255,
        solver="pgd",
        targeted=False,
        loss_fn=None,
        ssim_kwargs=None,
        window=8,
        model_mode="eval",
    ):
        super().__init__(
            model,
            eps=1.0,
            alpha=alpha,
            steps=steps,
            norm="linf",
            random_start=False,
            targeted=targeted,
            loss_fn=loss_fn,
            model_mode=model_mode,
        )
        self.tau = check_scalar(tau, "tau")
        if not 0 < self.tau <= 1:
            raise ValueError(f"`tau` must lie in (0, 1], got {self.tau}")
        self.solver = check_choice(solver, "solver", SOLVERS)
        if self.solver == "convex" and self.tau < GAMMA_MIN:
            raise ValueError(
                f"`tau` must be >= {GAMMA_MIN:g} for solver='convex' (the window balls' "
                f"radius overflows below it), got {self.tau}"
            )
        self.ssim_kwargs = dict(ssim_kwargs or {})
        self.window = check_int(window, "window", 2)

    def __repr__(self):
        return (
            f"SSIMAttack(tau={self.tau}, steps={self.steps}, alpha={self.alpha:.4g}, "
            f"solver={self.solver!r}, targeted={self.targeted})"
        )

    def _attack(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        direction = -1.0 if self.targeted else 1.0
        delta = torch.zeros_like(x)
        with value_checks(False):
            for k in range(self.steps):
                grad = self._grad(x, delta, labels)
                with torch.no_grad(), nvtx_range("ssim_attack.project"):
                    if self.solver == "pgd":
                        # eps = 1 leaves the l-inf ball inactive: the fused step is step + box
                        ops.pgd_step_(delta, grad, x, 1.0, self.alpha, "linf", direction)
                        ops.ssim_ball_project_(delta, x, self.tau, **self.ssim_kwargs)
                    else:
                        s = ssim_ref.window_ball_linear_max(x, direction * grad, self.tau, self.window)
                        b = 2.0 / (k + 2)
                        delta.mul_(1 - b).add_(s, alpha=b)
                        ops.project_(delta, x, 1.0)  # the box (the l-inf ball of radius 1 is inactive)
        return (x + delta).detach()
