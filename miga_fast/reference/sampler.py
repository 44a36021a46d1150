"""Plain-PyTorch sampler ops (docs/algorithms.md §5): the oracle every backend is tested
against, and the last fallback.

`step` is the one element-wise update of csrc/common/sampler_math.h, in the same order of
operations: stage A by mode (identity, a Gaussian jump a_from -> a_to, or a DDIM step
a_from -> a_to), then with a mask the combine with the noised known image at a_known,
then with noise_jump a jump a_to -> a_jump. Every a_* is an alpha-bar tensor of 1 or B
values; the coefficients are computed in x's dtype. No argument checking here
(miga_fast.ops.sampler does it). Differentiable by autograd.
"""

from __future__ import annotations

import torch

MODES = ("identity", "jump", "ddim")
IDENTITY, JUMP, DDIM = 0, 1, 2


def per_sample_view(value, like: torch.Tensor) -> torch.Tensor:
    """A float or a tensor of 1 or B values as a [B|1, 1, ...] tensor in like's dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def ddim_coefficients(a_from, a_to, eta: float):
    """(sqrt(a_from), sqrt(1 - a_from), sqrt(a_to), dir, sigma) of a DDIM step a_from -> a_to:
    sigma = eta sqrt((1 - a_to) / (1 - a_from) (1 - a_from / a_to)), dir = sqrt(1 - a_to - sigma^2)
    (diffusers' DDIMScheduler.step, its alpha_prod_t = a_from, alpha_prod_t_prev = a_to)."""
    variance = (1 - a_to) / (1 - a_from) * (1 - a_from / a_to)
    sigma = eta * variance.sqrt()
    return a_from.sqrt(), (1 - a_from).sqrt(), a_to.sqrt(), (1 - a_to - sigma * sigma).clamp_min(0).sqrt(), sigma


def step(
    x,
    eps=None,
    known=None,
    mask=None,
    noise=None,
    noise_known=None,
    noise_jump=None,
    a_from=1.0,
    a_to=1.0,
    a_known=1.0,
    a_jump=1.0,
    mode=IDENTITY,
    eta=0.0,
    clip=0.0,
):
    """The sampler update (see the module's doc). Absent inputs are None; clip <= 0: no clip."""
    a_from, a_to, a_known, a_jump = (per_sample_view(a, x) for a in (a_from, a_to, a_known, a_jump))
    y = x
    if mode == JUMP:
        r = a_to / a_from
        y = r.sqrt() * x + (1 - r).sqrt() * noise
    elif mode == DDIM:
        sa, s1m, sa_to, direction, sigma = ddim_coefficients(a_from, a_to, eta)
        x0 = (x - s1m * eps) / sa
        if clip > 0:
            x0 = x0.clamp(-clip, clip)
        y = sa_to * x0 + direction * eps
        if noise is not None:
            y = y + sigma * noise
    if mask is not None:
        y = mask * y + (1 - mask) * (a_known.sqrt() * known + (1 - a_known).sqrt() * noise_known)
    if noise_jump is not None:
        rj = a_jump / a_to
        y = rj.sqrt() * y + (1 - rj).sqrt() * noise_jump
    return y


def noise_partials(x, eps, mask, a_from, a_to, a_known, a_jump, mode, eta, has_jump):
    """d y / d (noise, noise_known, noise_jump) as broadcastable tensors (the output is
    affine in each noise): the sampler ops' backward for noises that require grad."""
    a_from, a_to, a_known, a_jump = (per_sample_view(a, x) for a in (a_from, a_to, a_known, a_jump))
    one = torch.ones_like(a_to)
    if mode == JUMP:
        dn = (1 - a_to / a_from).sqrt()
    elif mode == DDIM:
        dn = ddim_coefficients(a_from, a_to, eta)[4]
    else:
        dn = torch.zeros_like(a_to)
    dnk = torch.zeros_like(a_to)
    if mask is not None:
        dn = mask * dn
        dnk = (1 - mask) * (1 - a_known).sqrt()
    cx, dnj = one, torch.zeros_like(a_to)
    if has_jump:
        rj = a_jump / a_to
        cx, dnj = rj.sqrt(), (1 - rj).sqrt()
    return cx * dn, cx * dnk, dnj
