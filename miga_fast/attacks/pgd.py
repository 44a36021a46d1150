"""Projected gradient descent (Madry et al.) on a classifier, with the fused step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from .._validation import (
    check_batch,
    check_choice,
    check_deferred,
    check_int,
    check_labels,
    check_scalar,
    check_tensor,
    check_unit_range,
    sync_checks,
    value_checks,
)
from ..nvtx import nvtx_range
from ._common import (
    DEFAULT_ALPHA,
    DEFAULT_EPS,
    check_model_mode,
    check_radius,
    fmt_radius,
    frozen_weights,
    model_device,
    model_mode,
    on_device,
)


class PGD:
    """PGD in the l-inf or l2 ball, called as torchattacks' attacks are:

        attack = PGD(model, eps=8/255, alpha=2/255, steps=10)
        adv_images = attack(images, labels)

    model: any nn.Module mapping images in [0, 1] to logits (normalisation belongs to
    the model). targeted=True: `labels` are the targets, and the step descends their
    cross-entropy. The step runs through miga_fast.ops on the selected backend
    (`with miga_fast.set_backend("reference"):` for plain PyTorch). With random_start=False
    the result equals torchattacks.PGD's (torchattacks.PGDL2's for norm="l2") up to
    float rounding. generator: a torch.Generator or int seed for the random start.

    eps, alpha: by default torchattacks' for the norm: 8/255 and 2/255 (l-inf, as PGD),
    1.0 and 0.2 (l2, as PGDL2). model_mode: "eval" (default, as torchattacks: BatchNorm
    and dropout in inference mode during the attack), "train" or "keep"; the caller's
    mode is restored afterwards. Inputs are moved to the model's device, and the
    adversarial images are returned there.
    """

    def __init__(
        self,
        model,
        eps=None,
        alpha=None,
        steps=10,
        norm="linf",
        random_start=True,
        targeted=False,
        loss_fn=None,
        generator=None,
        model_mode="eval",
    ):
        if not callable(model):
            raise TypeError(f"`model` must be callable (an nn.Module), got {type(model).__name__}")
        self.model = model
        norm = check_choice(norm, "norm", ops.projection.NORMS)
        self.eps = check_radius(DEFAULT_EPS[norm] if eps is None else eps, "eps")
        self.alpha = check_radius(DEFAULT_ALPHA[norm] if alpha is None else alpha, "alpha")
        self.model_mode = check_model_mode(model_mode)
        self.steps = check_int(steps, "steps", 0)
        self.norm = norm
        self.random_start = bool(random_start)
        self.targeted = bool(targeted)
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        self.generator = generator

    def __repr__(self):
        return (
            f"{type(self).__name__}(eps={fmt_radius(self.eps)}, alpha={fmt_radius(self.alpha)}, steps={self.steps}, "
            f"norm={self.norm!r}, "
            f"random_start={self.random_start}, targeted={self.targeted})"
        )

    def _check(self, images, labels):
        check_tensor(images, "images")
        check_batch(images, "images")
        check_unit_range(images, "images")
        return check_labels(labels, images)

    def _grad(self, x: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d loss(model(x + delta), labels) / d delta."""
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad(), nvtx_range("attack.forward_backward"):
            loss = self.loss_fn(self.model(x + delta), labels)
            (grad,) = torch.autograd.grad(loss, delta)
        return grad

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward(images, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with sync_checks():  # one wait per attack: a clear error before the loop, GPU or not
            labels = self._check(images, labels)  # int64, on the images' device
        device = model_device(self.model)
        x = images.detach()
        if device is not None:
            x, labels = x.to(device), labels.to(device)
        with model_mode([self.model], self.model_mode), frozen_weights([self.model]):
            adv = self._attack(x, labels)
        check_deferred()  # anything an earlier call of this thread deferred: its verdict now
        return adv

    def _attack(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The attack proper, on checked inputs on the model's device, in the chosen mode."""
        direction = -1.0 if self.targeted else 1.0
        eps, alpha = on_device(self.eps, x.device), on_device(self.alpha, x.device)
        delta = torch.zeros_like(x)
        # The inputs were checked once above; the loop runs without host syncs.
        with value_checks(False):
            if self.random_start:
                ops.random_init_(delta, x, eps, self.norm, self.generator)
            for _ in range(self.steps):
                grad = self._grad(x, delta, labels)
                with torch.no_grad(), nvtx_range("pgd.step"):
                    ops.pgd_step_(delta, grad, x, eps, alpha, self.norm, direction)
        return (x + delta).detach()


class MIFGSM(PGD):
    """MI-FGSM (Dong et al. 2018): l-inf sign steps along a momentum of l1-normalised
    gradients, momentum <- decay * momentum + grad / |grad|_1, through the fused
    ops.mi_fgsm_step_ (step, ball and box in one pass). Called as torchattacks' MIFGSM
    (same defaults: eps 8/255, alpha 2/255, 10 steps, decay 1.0; no random start), and
    equal to it up to float rounding; eps and alpha may be [B] tensors (one per image)."""

    def __init__(
        self,
        model,
        eps=8 / 255,
        alpha=2 / 255,
        steps=10,
        decay=1.0,
        targeted=False,
        loss_fn=None,
        model_mode="eval",
    ):
        super().__init__(
            model, eps, alpha, steps, "linf", False, targeted=targeted, loss_fn=loss_fn, model_mode=model_mode
        )
        self.decay = check_scalar(decay, "decay")

    def _attack(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        direction = -1.0 if self.targeted else 1.0
        eps, alpha = on_device(self.eps, x.device), on_device(self.alpha, x.device)
        delta, momentum = torch.zeros_like(x), torch.zeros_like(x)
        with value_checks(False):
            for _ in range(self.steps):
                grad = self._grad(x, delta, labels)
                with torch.no_grad(), nvtx_range("mifgsm.step"):
                    ops.mi_fgsm_step_(delta, momentum, grad, x, eps, alpha, self.decay, direction)
        return (x + delta).detach()
