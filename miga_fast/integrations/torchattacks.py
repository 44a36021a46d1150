"""torchattacks' PGD, PGDL2, MIFGSM, EOTPGD and APGD on miga_fast's fused attack steps.

Each class here subclasses torchattacks' own (same constructor, same call, the whole
`Attack` interface inherited: set_normalization_used, the set_mode_targeted_* methods,
supported_mode, set_model_training_mode, set_device, save) and replaces only `forward`:
the random start draws the same numbers from the same global generator as torchattacks,
the gradient is torchattacks' (cross-entropy through `get_logits`, negated in the
targeted modes, so a normalisation set with set_normalization_used applies), and the
update (step, ball, box) is one fused kernel call (miga_fast.ops) instead of five to
eight elementwise PyTorch ops.

Either import the classes:

    from miga_fast.integrations.torchattacks import PGD
    adv = PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)

or patch torchattacks in place, so that code written for it runs on the fused steps:

    from miga_fast.integrations import torchattacks as fast
    fast.patch()      # torchattacks.PGD is now fast.PGD, ...
    fast.unpatch()    # torchattacks as it was

Beyond torchattacks: `eps` (and `alpha`) may be a [N] tensor, one radius per image.

Agreement (tests/test_integrations_torchattacks.py), float32 and float64, same seed, a
model whose gradients repeat:
- PGD, EOTPGD and MIFGSM give torchattacks' adversarial images bit for bit. Their update
  is ops.pgd_step_linf_image_, which keeps the adversarial image as torchattacks does and
  does torchattacks' operations in its order; MIFGSM's momentum is torchattacks' own
  arithmetic (its per-image mean |g| is a PyTorch reduction, whose summation order only
  PyTorch itself reproduces).
- PGDL2 and APGD agree to float rounding, not bit for bit: their l2 norms are reductions
  summed in another order. PGDL2 keeps torchattacks' step alpha * g / (|g| +
  eps_for_division), which matters where gradients are tiny (a confident classifier).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from .._validation import check_deferred, check_tensor, check_unit_range, per_sample, sync_checks, value_checks

try:
    import torchattacks as _ta
except ImportError as err:  # pragma: no cover - the import error is the message
    raise ImportError("miga_fast.integrations.torchattacks needs torchattacks (pip install torchattacks)") from err

__all__ = ["PGD", "PGDL2", "MIFGSM", "EOTPGD", "APGD", "patch", "unpatch", "PATCHED"]


class _Fused:
    """What the four attacks share: checks, labels and targets, the gradient."""

    def _prepare(self, images, labels):
        check_tensor(images, "images")
        if images.dim() < 2 or images.shape[0] == 0:
            raise ValueError(f"`images` must be a non-empty batch [N, ...], got shape {tuple(images.shape)}")
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        with sync_checks():  # one wait, before the loop: a clear error rather than a bad attack
            check_unit_range(images, "images")
            eps = per_sample(self.eps, "eps", images)
            alpha = per_sample(self.alpha, "alpha", images)
        targets = self.get_target_label(images, labels) if self.targeted else labels
        return images, targets, eps, alpha

    def _grad(self, adv, targets):
        """d cost / d adv with torchattacks' cost: the mean cross-entropy of get_logits(adv),
        negated in the targeted modes (the same operations, so the same gradient bits)."""
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            cost = F.cross_entropy(self.get_logits(adv), targets)
            if self.targeted:
                cost = -cost
            return torch.autograd.grad(cost, adv)[0]

    def _uniform_start(self, images):
        """torchattacks' l-inf random start: uniform in [-eps, eps] from the global generator
        (a per-image eps scales uniform [-1, 1] draws), boxed to [0, 1]; the adversarial image."""
        noise = torch.empty_like(images)
        if isinstance(self.eps, torch.Tensor):
            noise = noise.uniform_(-1, 1) * self.eps.to(images).reshape(-1, *[1] * (images.dim() - 1))
        else:
            noise = noise.uniform_(-self.eps, self.eps)
        return torch.clamp(images + noise, min=0, max=1)

    def _start(self, images):
        return self._uniform_start(images) if getattr(self, "random_start", False) else images.clone()

    def _finish(self, adv):
        check_deferred()
        return adv.detach()


class PGD(_Fused, _ta.PGD):
    """torchattacks.PGD (l-inf), on the fused step: same constructor, same call, the same
    images bit for bit."""

    def forward(self, images, labels):
        images, targets, eps, alpha = self._prepare(images, labels)
        adv = self._start(images)
        with value_checks(False):  # checked once above: no host sync in the loop
            for _ in range(self.steps):
                grad = self._grad(adv, targets)
                with torch.no_grad():
                    ops.pgd_step_linf_image_(adv, grad, images, eps, alpha)
        return self._finish(adv)


class EOTPGD(_Fused, _ta.EOTPGD):
    """torchattacks.EOTPGD: the gradient summed over eot_iter passes of a random model."""

    def forward(self, images, labels):
        images, targets, eps, alpha = self._prepare(images, labels)
        adv = self._start(images)
        with value_checks(False):
            for _ in range(self.steps):
                grad = torch.zeros_like(adv)
                for _ in range(self.eot_iter):
                    grad += self._grad(adv, targets)
                with torch.no_grad():
                    ops.pgd_step_linf_image_(adv, grad, images, eps, alpha)
        return self._finish(adv)


class MIFGSM(_Fused, _ta.MIFGSM):
    """torchattacks.MIFGSM: momentum (decay) over gradients divided by their per-image mean
    magnitude, then the fused l-inf step along the momentum. The momentum is torchattacks'
    arithmetic, so the images are torchattacks' bit for bit. An image whose gradient is all
    zero gets a NaN momentum (0 / 0, as in torchattacks), whose sign is 0 in the step as in
    torch.sign: it takes no step, there as here."""

    def forward(self, images, labels):
        images, targets, eps, alpha = self._prepare(images, labels)
        adv = images.clone()
        momentum = torch.zeros_like(images)
        dims = tuple(range(1, images.dim()))
        with value_checks(False):
            for _ in range(self.steps):
                grad = self._grad(adv, targets)
                with torch.no_grad():
                    grad = grad / torch.mean(torch.abs(grad), dim=dims, keepdim=True)
                    momentum = grad + momentum * self.decay
                    ops.pgd_step_linf_image_(adv, momentum, images, eps, alpha)
        return self._finish(adv)


class PGDL2(_Fused, _ta.PGDL2):
    """torchattacks.PGDL2 (l2), on the fused step."""

    def _normal_start(self, images):
        """torchattacks' l2 random start: a Gaussian direction at radius r * eps, r uniform in
        [0, 1], from the global generator, boxed to [0, 1]; as delta (the l2 step keeps the
        perturbation: its norms agree with torchattacks' to rounding only)."""
        n = images.shape[0]
        delta = torch.empty_like(images).normal_()
        norm = delta.view(n, -1).norm(p=2, dim=1).view(n, *[1] * (images.dim() - 1))
        r = torch.zeros_like(norm).uniform_(0, 1)
        eps = self.eps.to(images).view_as(norm) if isinstance(self.eps, torch.Tensor) else self.eps
        delta *= r / norm * eps
        return torch.clamp(images + delta, min=0, max=1) - images

    def forward(self, images, labels):
        images, targets, eps, alpha = self._prepare(images, labels)
        delta = self._normal_start(images) if self.random_start else torch.zeros_like(images)
        with value_checks(False):
            for _ in range(self.steps):
                grad = self._grad(images + delta, targets)
                with torch.no_grad():
                    # torchattacks steps alpha * g / (|g| + eps_for_division): the fused step
                    # takes alpha * g / |g|, so alpha carries the factor |g| / (|g| + e)
                    norm = grad.flatten(1).norm(p=2, dim=1)
                    step = alpha * norm / (norm + self.eps_for_division)
                    ops.pgd_step_(delta, grad, images, eps, step, "l2")
        return self._finish(images + delta)


class APGD(_ta.APGD):
    """torchattacks.APGD (Croce & Hein 2020: step-size halving at checkpoints, momentum
    0.75, the best point kept), with each iteration's update on the fused ops: the
    step with its ball and box (ops.pgd_step_, the per-image step size as a [B] alpha),
    then the momentum blend and the projection back (ops.project_), in delta form. The
    restarts, seeding, losses ("ce", "dlr"), EOT and the checkpoint rule are torchattacks'
    own (inherited or kept line for line in meaning). eps: a number (restarts attack
    subsets of the batch)."""

    def forward(self, images, labels):
        check_tensor(images, "images")
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"`images` must be a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}")
        with sync_checks():
            check_unit_range(images, "images")
        per_sample(self.eps, "eps", images)  # a number >= 0 (a clear error otherwise)
        if isinstance(self.eps, torch.Tensor):
            raise ValueError("`eps` of APGD must be a number: its restarts attack subsets of the batch")
        adv = super().forward(images, labels)
        check_deferred()
        return adv

    def _update(self, x, x_adv, x_adv_old, grad, step_size, a):
        """One APGD update in delta form: z = step (ball, box), then d + a (z - d) +
        (1 - a) (x_adv - x_adv_old), projected onto the ball and the box."""
        norm = "linf" if self.norm == "Linf" else "l2"
        d = x_adv - x
        z = d.clone()
        with value_checks(False):
            ops.pgd_step_(z, grad, x, self.eps, step_size.reshape(-1), norm)
            blend = d + (z - d) * a + (x_adv - x_adv_old) * (1 - a)
            ops.project_(blend, x, self.eps, norm)
        return x + blend

    def _grad_and_loss(self, x_adv, y, criterion):
        x_adv = x_adv.detach().requires_grad_()
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):
            with torch.enable_grad():
                logits = self.get_logits(x_adv)
                loss_indiv = criterion(logits, y)
            grad += torch.autograd.grad(loss_indiv.sum(), [x_adv])[0].detach()
        return grad / float(self.eot_iter), logits.detach(), loss_indiv.detach()

    def attack_single_run(self, x_in, y_in):
        x = x_in.clone() if x_in.dim() == 4 else x_in.clone().unsqueeze(0)
        y = y_in.clone() if y_in.dim() == 1 else y_in.clone().unsqueeze(0)
        n = x.shape[0]
        self.steps_2 = max(int(0.22 * self.steps), 1)
        self.steps_min = max(int(0.06 * self.steps), 1)
        self.size_decr = max(int(0.03 * self.steps), 1)
        # the random start, drawn as torchattacks draws it (CPU generator, then moved)
        if self.norm == "Linf":
            t = 2 * torch.rand(x.shape).to(self.device) - 1
            scale = t.reshape(n, -1).abs().max(dim=1)[0].reshape(-1, 1, 1, 1)
        else:
            t = torch.randn(x.shape).to(self.device)
            scale = (t**2).sum(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12
        x_adv = (x + self.eps * t / scale).clamp(0.0, 1.0)
        x_best, x_best_adv = x_adv.clone(), x_adv.clone()
        loss_steps = torch.zeros([self.steps, n])
        if self.loss not in ("ce", "dlr"):
            raise ValueError("unknown loss")
        criterion = torch.nn.CrossEntropyLoss(reduction="none") if self.loss == "ce" else self.dlr_loss
        grad, logits, loss_indiv = self._grad_and_loss(x_adv, y, criterion)
        grad_best = grad.clone()
        acc = logits.max(1)[1] == y
        loss_best = loss_indiv.clone()
        step_size = 2.0 * self.eps * torch.ones([n, 1, 1, 1], device=self.device)
        x_adv_old = x_adv.clone()
        counter3, k = 0, self.steps_2
        rows = np.arange(n)
        loss_best_last_check = loss_best.clone()
        reduced_last_check = np.ones(loss_best.shape, dtype=bool)
        for i in range(self.steps):
            with torch.no_grad():
                x_adv, x_adv_old = self._update(x, x_adv, x_adv_old, grad, step_size, 0.75 if i > 0 else 1.0), x_adv
            grad, logits, loss_indiv = self._grad_and_loss(x_adv, y, criterion)
            pred = logits.max(1)[1] == y
            acc = torch.min(acc, pred)
            fooled = ~pred
            x_best_adv[fooled] = x_adv[fooled]
            with torch.no_grad():
                loss_steps[i] = loss_indiv.cpu()
                better = loss_indiv > loss_best
                x_best[better] = x_adv[better]
                grad_best[better] = grad[better]
                loss_best[better] = loss_indiv[better]
                counter3 += 1
                if counter3 == k:  # a checkpoint: halve the step where the loss stalled
                    oscillating = self.check_oscillation(
                        loss_steps.numpy(), i, k, loss_best.cpu().numpy(), k3=self.thr_decr
                    )
                    no_gain = ~reduced_last_check & (loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy())
                    reduce = oscillating | no_gain
                    reduced_last_check = reduce.copy()
                    loss_best_last_check = loss_best.clone()
                    if reduce.any():
                        idx = torch.as_tensor(rows[reduce], device=self.device)
                        step_size[idx] /= 2.0
                        x_adv[idx] = x_best[idx]  # x_adv is this step's own tensor: nothing else holds it
                        grad[idx] = grad_best[idx]
                    counter3 = 0
                    k = max(k - self.size_decr, self.steps_min)
        return x_best, acc, loss_best, x_best_adv


PATCHED = {"PGD": PGD, "PGDL2": PGDL2, "MIFGSM": MIFGSM, "EOTPGD": EOTPGD, "APGD": APGD}
_saved: dict[str, type] = {}


def patch() -> None:
    """Make torchattacks.PGD, PGDL2, MIFGSM, EOTPGD and APGD these classes (idempotent)."""
    for name, cls in PATCHED.items():
        _saved.setdefault(name, getattr(_ta, name))
        setattr(_ta, name, cls)


def unpatch() -> None:
    """Put torchattacks' own classes back."""
    for name, cls in _saved.items():
        setattr(_ta, name, cls)
    _saved.clear()
