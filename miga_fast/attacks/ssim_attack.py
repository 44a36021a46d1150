"""The perceptual attack (docs/algorithms.md §2): maximise the classifier's loss subject to
SSIM(x, x_adv) >= tau and the box, instead of an l_p ball."""

from __future__ import annotations

import torch

from .. import ops
from .._validation import check_choice, check_int, check_scalar, value_checks
from ..nvtx import nvtx_range
from ..ops.ssim import GAMMA_MIN
from .pgd import PGD

SOLVERS = ("pgd", "convex")
STEPS = ("l2", "sign")


class SSIMAttack(PGD):
    """Projected gradient ascent in an SSIM ball:

        attack = SSIMAttack(model, tau=0.95, steps=20, alpha=2/255)
        adv_images = attack(images, labels)

    Each step moves delta along the loss gradient (descending for targeted=True), then
    projects:

    solver="pgd": the Gaussian-window SSIM ball {x' : SSIM(x, x') >= tau}. The box
    x + delta in [0, 1], then ops.ssim_ball_project_ (the largest step back along delta
    into the ball). `ssim_kwargs` go to that SSIM (win_size, win_sigma, K, padding).

    solver="convex": the convex SSIM set of ops.ssim_window_ball_project_ (tau as gamma,
    `window` pixels square, `overlap` for the shifted second grid): the exact Euclidean
    projection onto every window's structural-SSIM ball intersected with the box, so every
    iterate is feasible and the attack is projected gradient ascent on a convex set.

    step="l2" (the default): the gradient normalised per sample to an l2 norm of
    alpha * sqrt(pixels), i.e. a root-mean-square change of alpha per pixel, so the budget
    goes where the loss gradient is large. step="sign": alpha * sign(grad), the same
    magnitude everywhere (FGSM's step; with solver="pgd" the rescaling then keeps |delta|
    uniform over the image).
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
        step="l2",
        overlap=False,
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
        self.step = check_choice(step, "step", STEPS)
        if not isinstance(overlap, bool):
            raise TypeError(f"`overlap` must be a bool, got {type(overlap).__name__}")
        self.overlap = overlap
        self.ssim_kwargs = dict(ssim_kwargs or {})
        self.window = check_int(window, "window", 2)

    def __repr__(self):
        return (
            f"SSIMAttack(tau={self.tau}, steps={self.steps}, alpha={self.alpha:.4g}, "
            f"solver={self.solver!r}, step={self.step!r}, targeted={self.targeted})"
        )

    def _ascent(self, grad: torch.Tensor, direction: float) -> torch.Tensor:
        """The step's change of delta: direction * alpha * (the normalised gradient or its sign)."""
        if self.step == "sign":
            return (direction * self.alpha) * grad.sign()
        g = grad.flatten(1)
        scale = direction * self.alpha * g.shape[1] ** 0.5 / g.norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
        return grad * scale.reshape(-1, *([1] * (grad.dim() - 1)))

    def _attack(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        direction = -1.0 if self.targeted else 1.0
        delta = torch.zeros_like(x)
        with value_checks(False):
            for _ in range(self.steps):
                grad = self._grad(x, delta, labels)
                with torch.no_grad(), nvtx_range("ssim_attack.project"):
                    if self.solver == "pgd":
                        if self.step == "sign":  # the fused step and box (eps = 1: the l-inf ball is inactive)
                            ops.pgd_step_(delta, grad, x, 1.0, self.alpha, "linf", direction)
                        else:
                            delta.add_(self._ascent(grad, direction))
                            ops.project_(delta, x, 1.0)  # the box
                        ops.ssim_ball_project_(delta, x, self.tau, **self.ssim_kwargs)
                    else:
                        delta.add_(self._ascent(grad, direction))
                        ops.ssim_window_ball_project_(delta, x, self.tau, self.window, overlap=self.overlap)
        return (x + delta).detach()
