"""The sampler family (docs/algorithms.md §5): every update a diffusion purifier makes
outside its model, element-wise, in one pass over memory.

    heterogeneous_noise  x(t_l) M + x(t_s) (1 - M): strong noise inside the mask, weak outside
    ddim_step            one DDIM step a_t -> a_prev (diffusers' DDIMScheduler.step)
    inpaint_combine      M x_unknown + (1 - M) (sqrt(a) x0_known + sqrt(1 - a) noise)
    resample_forward     one Gaussian jump q(x_{t+U} | x_t)
    sampler_step         the fused step: a DDIM step (or a jump, or nothing), the combine with
                         the noised known image, and a re-noising jump, in one pass

Every alpha-bar (a_*, abar_*) is a float or a [B] tensor on the images' device (one value
per sample: no host synchronisation). A noise that is not passed is drawn with
torch.randn from `generator` (a torch.Generator or an int seed), so the same seed gives
the same result on every backend. The mask is x's shape, or x's with dimension 1 of size
1 (one mask for every channel); its values must be 0 or 1 and it carries no gradient.

Every op is differentiable in the images, the model's prediction and the noises, with an
analytic backward on every backend (the schedule's alpha-bars get no gradient).
Backends: the C++ CPU kernel, the CUDA kernel, the Triton kernel (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1) and the plain-PyTorch reference. Inside a graph that
torch.compile traces with the backend on "auto", the ops decompose into the reference
(element-wise: inductor fuses them with their neighbours; see COMPILE_RULE in
ops/projection.py).
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import _backend, _extension
from .._validation import (
    check_batch,
    check_finite,
    check_like,
    check_scalar,
    check_tensor,
    judge,
    per_sample,
    values_checked,
)
from ..reference import sampler as ref
from ._namespaces import ops_for
from .projection import _as_generator

STEP = _backend.register_op(
    _backend.Op(
        "sampler_step",
        "ops.sampler_step, ops.ddim_step, ops.inpaint_combine, ops.resample_forward, ops.heterogeneous_noise",
        dtypes={"cuda": _backend.ANY_FLOAT},
    )
)
_MODES = {"identity": ref.IDENTITY, "jump": ref.JUMP, "ddim": ref.DDIM}


def _register_autograd(namespace: str) -> None:
    """Autograd of <namespace>::sampler_step through its backward op (d/dx, d/deps,
    d/dknown) and the closed form of the noises' gradients (the output is affine in each
    noise). A backward that must itself be differentiable goes through the reference."""
    ops_ = getattr(torch.ops, namespace)

    def setup_context(ctx, inputs, output):
        x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump, mode, eta, clip = inputs
        ctx.save_for_backward(x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump)
        ctx.consts = (mode, eta, clip)

    def backward(ctx, grad):
        x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump = ctx.saved_tensors
        mode, eta, clip = ctx.consts
        need = ctx.needs_input_grad
        out = [None] * 14
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference
            with torch.enable_grad():
                value = ref.step(
                    x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump, mode, eta, clip
                )
                idx = [i for i in (0, 1, 2, 4, 5, 6) if need[i]]
                tensors = (x, eps, known, mask, noise, noise_known, noise_jump)
                grads = torch.autograd.grad(value, [tensors[i] for i in idx], grad, create_graph=True)
            for i, g in zip(idx, grads):
                out[i] = g
            return tuple(out)
        need_x, need_eps, need_known = need[0], need[1] and eps is not None, need[2] and known is not None
        if need_x or need_eps or need_known:
            grads = iter(
                ops_.sampler_step_backward(
                    grad.contiguous(),
                    x,
                    eps,
                    mask,
                    a_from,
                    a_to,
                    a_known,
                    a_jump,
                    mode,
                    eta,
                    clip,
                    noise_jump is not None,
                    need_x,
                    need_eps,
                    need_known,
                )
            )
            for i, wanted in ((0, need_x), (1, need_eps), (2, need_known)):
                if wanted:
                    out[i] = next(grads)
        if any(need[4:7]):
            partials = ref.noise_partials(
                x, eps, mask, a_from, a_to, a_known, a_jump, mode, eta, noise_jump is not None
            )
            for i, p in zip((4, 5, 6), partials):
                if need[i]:
                    out[i] = (p * grad).to(grad.dtype)
        return tuple(out)

    torch.library.register_autograd(f"{namespace}::sampler_step", backward, setup_context=setup_context)


def _register_cpp(namespace: str = "miga_fast") -> None:
    """Fake kernels (torch.compile) and autograd of the compiled sampler ops in `namespace`
    (torch.ops.miga_fast; the emulated-CUDA test build registers its miga_fast_emu too)."""
    torch.library.register_fake(f"{namespace}::sampler_step")(
        lambda x, *args: torch.empty_like(x, memory_format=torch.contiguous_format)
    )

    def backward_fake(grad, x, *args):
        need = args[-3:]
        return [torch.empty_like(x, memory_format=torch.contiguous_format) for wanted in need if wanted]

    torch.library.register_fake(f"{namespace}::sampler_step_backward")(backward_fake)
    _register_autograd(namespace)


def _ops_for(backend: str):
    return ops_for(backend, "sampler", _register_autograd)


if _extension.load() is not None:
    _register_cpp()


# --- argument checks ----------------------------------------------------------------------


def _check_image(t, name: str, like=None, like_name: str = "x"):
    check_tensor(t, name)
    if like is None:
        check_batch(t, name)
    else:
        check_like(like, like_name, t, name)
    check_finite(t, name)
    return t


def _check_mask(mask, x):
    """A 0/1 mask of x's shape (or with dimension 1 of size 1), as x's dtype; no gradient."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`mask` must be a torch.Tensor, got {type(mask).__name__}")
    shape_ok = mask.dim() == x.dim() and all(
        m == s or (d == 1 and m == 1) for d, (m, s) in enumerate(zip(mask.shape, x.shape))
    )
    if not shape_ok:
        want = tuple(x.shape) if x.dim() < 2 else f"{tuple(x.shape)} or {(x.shape[0], 1, *x.shape[2:])}"
        raise ValueError(f"`mask` must have shape {want} (x's, or one mask for every channel), got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"`mask` is on {mask.device}, expected {x.device} (the device of `x`)")
    if mask.requires_grad and torch.is_grad_enabled():
        raise ValueError("`mask` requires grad: the sampler ops take the mask as a constant; pass mask.detach()")
    if not (mask.dtype == torch.bool or mask.dtype.is_floating_point):
        raise TypeError(f"`mask` must be a bool or floating tensor of 0s and 1s, got dtype {mask.dtype}")
    m = mask.to(x.dtype)
    if values_checked() and m.numel():
        bad = ((m != 0) & (m != 1)).any().reshape(1)
        judge(bad, lambda v: "`mask` must hold only 0s and 1s (a binary mask)" if v[0] else None)
    return m


def _check_abar(value, name: str, like, *, below_one: bool = False):
    """An alpha-bar: a float or a [B] tensor in (0, 1] ((0, 1) with below_one)."""
    t = per_sample(value, name, like)
    upper = "< 1" if below_one else "<= 1"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if not (v > 0 and (v < 1 if below_one else v <= 1)):
            raise ValueError(f"`{name}` must be an alpha-bar in (0, 1{')' if below_one else ']'}, got {v}")
    elif values_checked() and t.numel():
        stats = torch.stack((t.min(), t.max())).double()

        def verdict(v):
            lo, hi = v
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return f"`{name}` contains NaN or Inf"
            if lo <= 0 or (hi >= 1 if below_one else hi > 1):
                return f"`{name}` must hold alpha-bars > 0 and {upper}, got values in [{lo:.4g}, {hi:.4g}]"
            return None

        judge(stats, verdict)
    return t


def _check_order(lo, hi, lo_name: str, hi_name: str, why: str):
    """lo <= hi element-wise (per-sample alpha-bars), checked on the values."""
    if not values_checked():
        return
    bad = (lo.reshape(-1) > hi.reshape(-1)).any().reshape(1)
    judge(bad, lambda v: f"`{hi_name}` must be >= `{lo_name}` ({why})" if v[0] else None)


def _noise(noise, name, x, generator):
    if noise is None:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return _check_image(noise, name, x)


def _clip(clip) -> float:
    if clip is None:
        return 0.0
    c = check_scalar(clip, "clip")
    if c <= 0:
        raise ValueError(f"`clip` must be > 0 (the x0 prediction is clamped to [-clip, clip]) or None, got {c}")
    return c


# --- dispatch -------------------------------------------------------------------------------


def _run(x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump, mode, eta, clip):
    backend = STEP.select(x.device, x.dtype)
    if backend != "reference" and torch.compiler.is_compiling() and _backend.get_backend() == "auto":
        backend = "reference"  # element-wise: inductor fuses the traced reference with its neighbours
    args = (x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump, mode, eta, clip)
    if backend == "reference":
        return ref.step(*args)
    return _ops_for(backend).sampler_step(*args)


def sampler_step(
    x,
    *,
    mode="identity",
    eps=None,
    a_from=1.0,
    a_to=1.0,
    eta=0.0,
    noise=None,
    clip=None,
    mask=None,
    known=None,
    a_known=None,
    noise_known=None,
    a_jump=None,
    noise_jump=None,
    generator=None,
):
    """The fused sampler step, one pass over memory (csrc/common/sampler_math.h):

    A  mode="identity": y = x; "jump": y = sqrt(r) x + sqrt(1 - r) noise, r = a_to / a_from;
       "ddim": the DDIM step a_from -> a_to with the model's noise prediction `eps`
       (ddim_step's arguments: eta, noise, clip).
    B  with `mask`: y = M y + (1 - M) (sqrt(a_known) known + sqrt(1 - a_known) noise_known)
       (a_known defaults to a_to).
    C  with `a_jump`: y = sqrt(rj) y + sqrt(1 - rj) noise_jump, rj = a_jump / a_to (re-noising
       for the next model call).

    A heterogeneous purifier's stage-1 step is mode="ddim" with the mask, and with a_jump
    when the next model call is a resampling jump. Returns a new tensor of x's shape.
    """
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {tuple(_MODES)}, got {mode!r}")
    m = _MODES[mode]
    _check_image(x, "x")
    gen = _as_generator(generator, x.device)
    eta = check_scalar(eta, "eta")
    if eta > 1:
        raise ValueError(f"`eta` must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    clip = _clip(clip)
    if m != ref.DDIM:
        if eps is not None:
            raise ValueError("`eps` (the model's noise prediction) is read by mode='ddim' only")
        if eta or clip:
            raise ValueError("`eta` and `clip` belong to mode='ddim'")
    fa = _check_abar(a_from, "a_from", x, below_one=m == ref.DDIM)
    ta = _check_abar(a_to, "a_to", x)
    if m == ref.JUMP:
        _check_order(ta, fa, "a_to", "a_from", "a jump adds noise: a_to <= a_from")
        noise = _noise(noise, "noise", x, gen)
    elif m == ref.DDIM:
        if eps is None:
            raise ValueError("mode='ddim' needs `eps`, the model's noise prediction")
        _check_image(eps, "eps", x)
        if eta > 0:
            _check_order(fa, ta, "a_from", "a_to", "a stochastic DDIM step (eta > 0) removes noise: a_to >= a_from")
            noise = _noise(noise, "noise", x, gen)
        elif noise is not None:
            raise ValueError("`noise` is not read by a deterministic DDIM step (eta = 0)")
    elif noise is not None:
        raise ValueError("`noise` is read by mode='jump' and by mode='ddim' with eta > 0")
    if mask is not None:
        mask = _check_mask(mask, x)
        if known is None:
            raise ValueError("a `mask` needs `known`, the clean image whose noised version fills 1 - mask")
        _check_image(known, "known", x)
        ka = ta if a_known is None else _check_abar(a_known, "a_known", x)
        noise_known = _noise(noise_known, "noise_known", x, gen)
    else:
        if known is not None or a_known is not None or noise_known is not None:
            raise ValueError("`known`, `a_known` and `noise_known` are read only with a `mask`")
        ka = ta
    if a_jump is not None:
        ja = _check_abar(a_jump, "a_jump", x)
        _check_order(ja, ta, "a_jump", "a_to", "the re-noising jump adds noise: a_jump <= a_to")
        noise_jump = _noise(noise_jump, "noise_jump", x, gen)
    else:
        if noise_jump is not None:
            raise ValueError("`noise_jump` is read only with `a_jump`")
        ja = ta
    return _run(x, eps, known, mask, noise, noise_known, noise_jump, fa, ta, ka, ja, m, eta, clip)


def ddim_step(x_t, eps_pred, abar_t, abar_prev, eta=0.0, noise=None, clip=None, generator=None):
    """One DDIM step from alpha-bar abar_t to abar_prev (abar_prev = 1: the final step to
    x0), equal to diffusers' `DDIMScheduler.step(eps_pred, t, x_t, eta, variance_noise=noise)
    .prev_sample` for the same alpha-bars: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    (clamped to [-clip, clip] when clip is given: diffusers' clip_sample, eps not
    re-derived), then sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))."""
    return sampler_step(
        x_t, mode="ddim", eps=eps_pred, a_from=abar_t, a_to=abar_prev, eta=eta, noise=noise, clip=clip,
        generator=generator,
    )  # fmt: skip


def inpaint_combine(x_unknown, x0_known, mask, abar, noise=None, generator=None):
    """M x_unknown + (1 - M) (sqrt(abar) x0_known + sqrt(1 - abar) noise): the model's sample
    inside the mask, the known image noised to the same level outside it."""
    return sampler_step(
        x_unknown, mode="identity", a_to=abar, mask=mask, known=x0_known, noise_known=noise, generator=generator
    )


def resample_forward(x_t, abar_t, abar_tU, noise=None, generator=None):
    """One Gaussian jump from t to t + U: sqrt(r) x_t + sqrt(1 - r) noise, r = abar_tU / abar_t,
    a sample of q(x_{t+U} | x_t)."""
    return sampler_step(x_t, mode="jump", a_from=abar_t, a_to=abar_tU, noise=noise, generator=generator)


def heterogeneous_noise(x0, mask, abar_l, abar_s, noise_l=None, noise_s=None, generator=None):
    """The heterogeneous forward process x(t_l) M + x(t_s) (1 - M), where
    x(t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise: strong noise (abar_l, the larger t) inside
    the mask, weak noise (abar_s) outside; abar_l < abar_s is required (t_l > t_s).

    The two noise draws: with a binary mask every pixel reads exactly one of them, so one
    shared draw (noise_s=None: noise_s = noise_l) gives the paper's distribution exactly;
    pass noise_s to use a second draw."""
    _check_image(x0, "x0")
    la = _check_abar(abar_l, "abar_l", x0)
    sa = _check_abar(abar_s, "abar_s", x0)
    if isinstance(abar_l, numbers.Real) and isinstance(abar_s, numbers.Real) and not abar_l < abar_s:
        raise ValueError(
            f"`abar_l` must be < `abar_s` (t_l > t_s: the masked pixels get the stronger noise), got {abar_l} "
            f">= {abar_s}; equal levels would make the purification uniform"
        )
    if values_checked():
        bad = (la.reshape(-1) >= sa.reshape(-1)).any().reshape(1)
        judge(
            bad,
            lambda v: (
                (
                    "`abar_l` must be < `abar_s`: the masked pixels get the stronger noise (t_l > t_s); "
                    "equal levels would make the purification uniform"
                )
                if v[0]
                else None
            ),
        )
    gen = _as_generator(generator, x0.device)
    noise_l = _noise(noise_l, "noise_l", x0, gen)
    if noise_s is None:
        noise_s = noise_l
    return sampler_step(
        x0, mode="jump", a_from=1.0, a_to=la, noise=noise_l, mask=mask, known=x0, a_known=sa, noise_known=noise_s
    )
