"""Plain-PyTorch projection steps (ALGORITHMS.md section 1): the oracle every backend is
tested against, and the last fallback.

The order of operations is torchattacks': step, ball projection, then the box
`x + delta in [0, 1]`. Everything is computed in delta's dtype. These functions do no
argument checking (miga_fast.ops does): `eps`, `alpha` are floats or tensors of 1 or B
values.
"""
from __future__ import annotations

import torch


def per_sample_view(value, like: torch.Tensor) -> torch.Tensor:
    """A float or a tensor of 1 or B values as a [B|1, 1, ...] tensor in like's dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _box(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + d, 0, 1) - x


def _linf_ball(d, e):
    return torch.clamp(d, -e, e)


def _l2_ball(d, e):
    n = _norm(d, 2)
    return d * torch.where(n > e, e / n, torch.ones_like(n))


def pgd_step_(delta, grad, x, eps, alpha, norm="linf", direction=1.0):
    """delta <- box(ball(delta + direction * alpha * dir(grad))), in place.
    dir = sign(grad) for l-inf, grad / |grad|_2 for l2 (0 where grad = 0)."""
    e = per_sample_view(eps, delta)
    step = per_sample_view(alpha, delta) * direction
    if norm == "linf":
        d = _linf_ball(delta + step * torch.sign(grad), e)
    else:
        gn = _norm(grad, 2)
        unit = torch.where(gn > 0, grad / gn, torch.zeros_like(grad))
        d = _l2_ball(delta + step * unit, e)
    delta.copy_(_box(d, x))
    return delta


def mi_fgsm_step_(delta, momentum, grad, x, eps, alpha, mu=1.0, direction=1.0):
    """MI-FGSM: momentum <- mu * momentum + grad / |grad|_1, then the l-inf step on it."""
    l1 = _norm(grad, 1)
    m = mu * momentum + torch.where(l1 > 0, grad / l1, torch.zeros_like(grad))
    momentum.copy_(m)
    return pgd_step_(delta, m, x, eps, alpha, "linf", direction)


def project_(delta, x, eps, norm="linf"):
    """Ball then box, in place."""
    e = per_sample_view(eps, delta)
    d = _linf_ball(delta, e) if norm == "linf" else _l2_ball(delta, e)
    delta.copy_(_box(d, x))
    return delta


def sample_ball(like: torch.Tensor, eps, norm="linf", generator=None) -> torch.Tensor:
    """Uniform samples in the l-inf or l2 ball of per-sample radius eps, shaped like `like`.
    l2: a Gaussian direction times radius eps * U^(1/n), uniform in volume."""
    e = per_sample_view(eps, like)
    if norm == "linf":
        u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return (2 * u - 1) * e
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    n = like[0].numel()
    r = torch.rand((like.shape[0],), generator=generator, dtype=like.dtype, device=like.device)
    r = r.pow(1.0 / n).reshape(-1, *([1] * (like.dim() - 1)))
    zn = _norm(z, 2)
    return z / torch.where(zn > 0, zn, torch.ones_like(zn)) * r * e


def random_init_(delta, x, eps, norm="linf", generator=None):
    """delta <- a uniform sample of the ball, then the box."""
    delta.copy_(sample_ball(delta, eps, norm, generator))
    return project_(delta, x, eps, norm)
