"""Plain-PyTorch projection steps (docs/algorithms.md §1): the oracle every backend is
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


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, n] (a 1-D tensor holds one value per sample)."""
    return t.reshape(t.shape[0], -1)


def _norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return _flat(t).norm(p=p, dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _scale(t: torch.Tensor) -> torch.Tensor:
    """Per-sample largest magnitude max|t| as a [B, 1, ...] view, 1 where t = 0: dividing by
    it puts every entry in [-1, 1] (the largest exactly +-1), so the norms that follow can
    neither overflow nor underflow, however small or large t is."""
    m = _flat(t).abs().amax(dim=1).reshape(-1, *([1] * (t.dim() - 1)))
    return torch.where(m > 0, m, torch.ones_like(m))


def _unit(t: torch.Tensor, p: float) -> torch.Tensor:
    """t / |t|_p per sample, computed on t / max|t|; 0 where t = 0."""
    s = t / _scale(t)
    n = _norm(s, p)  # in [1, n^(1/p)] unless t = 0
    return torch.where(n > 0, s / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(s))


def _box(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + d, 0, 1) - x


def _linf_ball(d, e):
    return torch.clamp(d, -e, e)


def _l2_ball(d, e):
    """d * min(1, e / |d|), with |d| formed on d / max|d| (finite for every finite d)."""
    k = _scale(d)
    n = _norm(d / k, 2)  # |d| / k
    ek = e / k  # may be inf (tiny d): then |d| <= e
    return d * torch.where(n > ek, ek / torch.where(n > 0, n, torch.ones_like(n)), torch.ones_like(n))


def pgd_step_(delta, grad, x, eps, alpha, norm="linf", direction=1.0):
    """delta <- box(ball(delta + direction * alpha * dir(grad))), in place.
    dir = sign(grad) for l-inf, grad / |grad|_2 for l2, the norm taken of grad / max|grad|
    (0 where grad = 0: no step)."""
    e = per_sample_view(eps, delta)
    step = per_sample_view(alpha, delta) * direction
    if norm == "linf":
        d = _linf_ball(delta + step * torch.sign(grad), e)
    else:
        d = _l2_ball(delta + step * _unit(grad, 2), e)
    delta.copy_(_box(d, x))
    return delta


def pgd_step_linf_image_(adv, grad, x, eps, alpha, direction=1.0):
    """The l-inf step on the adversarial image adv = x + delta, in place, in torchattacks'
    own operations (PGD.forward): adv + alpha * sign(grad), clamp(adv - x, -eps, eps),
    clamp(x + delta, 0, 1)."""
    e = per_sample_view(eps, adv)
    step = per_sample_view(alpha, adv) * direction
    a = adv + step * torch.sign(grad)
    d = torch.clamp(a - x, -e, e)
    adv.copy_(torch.clamp(x + d, 0, 1))
    return adv


def mi_fgsm_step_(delta, momentum, grad, x, eps, alpha, mu=1.0, direction=1.0):
    """MI-FGSM: momentum <- mu * momentum + grad / |grad|_1 (the norm of grad / max|grad|;
    0 where grad = 0), then the l-inf step on it."""
    m = mu * momentum + _unit(grad, 1)
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
    n = like[0].numel()
    if n == 0:  # samples with no elements: the ball is the single point 0
        return torch.zeros_like(like)
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    r = torch.rand((like.shape[0],), generator=generator, dtype=like.dtype, device=like.device)
    r = r.pow(1.0 / n).reshape(-1, *([1] * (like.dim() - 1)))
    return _unit(z, 2) * r * e


def random_init_(delta, x, eps, norm="linf", generator=None):
    """delta <- a uniform sample of the ball, then the box."""
    delta.copy_(sample_ball(delta, eps, norm, generator))
    return project_(delta, x, eps, norm)
