"""Triton kernels of the sampler family (docs/algorithms.md §5).

The math and the pass mirror csrc/common/sampler_math.h and csrc/cuda/sampler_kernels.cu:
one element-wise pass over a 2-D grid (blocks of a sample, samples), the per-sample
coefficients computed once per program from the alpha-bars, the stages present as
constexpr flags. `sampler_step` and `sampler_step_backward` are opaque
`torch.library.custom_op`s in the `miga_fast_triton` namespace with fake kernels, for CUDA
tensors, and for CPU tensors when TRITON_INTERPRET=1 (how the tests run them without a
GPU); their autograd is registered by miga_fast.ops.sampler.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import DEVICE_TYPES, POISON, check_int32, chunks, on_tensor_device

BLOCK = 1024
IDENTITY, JUMP, DDIM = 0, 1, 2


@triton.jit
def _sqrt(v):
    """A correctly rounded square root (tl.sqrt may be approximate in float32; sqrt_rn takes float32 only)."""
    if v.dtype == tl.float64:
        r = tl.sqrt(v)
    else:
        r = tl.sqrt_rn(v)
    return r


@triton.jit
def _coefficients(
    a_from, a_to, a_known, a_jump, eta, MODE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_JUMP: tl.constexpr
):
    """(jx, jn, sa, s1m, sa_to, dir, sigma, ka, kn, cx, cn): sampler_math.h's SamplerCoef."""
    one = tl.full((), 1.0, a_to.dtype)
    zero = tl.full((), 0.0, a_to.dtype)
    jx, jn, sa, s1m, sa_to, dr, sigma = one, zero, one, zero, one, zero, zero
    ka, kn, cx, cn = one, zero, one, zero
    if MODE == 1:
        r = a_to / a_from
        jx = _sqrt(r)
        jn = _sqrt(one - r)
    if MODE == 2:
        sa = _sqrt(a_from)
        s1m = _sqrt(one - a_from)
        sa_to = _sqrt(a_to)
        variance = (one - a_to) / (one - a_from) * (one - a_from / a_to)
        sigma = eta * _sqrt(variance)
        d2 = one - a_to - sigma * sigma
        dr = _sqrt(tl.where(d2 > zero, d2, zero))
    if HAS_MASK:
        ka = _sqrt(a_known)
        kn = _sqrt(one - a_known)
    if HAS_JUMP:
        rj = a_jump / a_to
        cx = _sqrt(rj)
        cn = _sqrt(one - rj)
    return jx, jn, sa, s1m, sa_to, dr, sigma, ka, kn, cx, cn


@triton.jit
def _prologue(
    af_ptr, at_ptr, ak_ptr, aj_ptr, s_from, s_to, s_known, s_jump, eta_in, n, b0,
    MODE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_JUMP: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """What both kernels start with: this program's sample, offsets and element pointers, the
    sample's alpha-bars and its coefficients (the last element, zero, gives the compute dtype)."""
    b = b0 + tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    ptr = b * n + offs
    a_from = tl.load(af_ptr + b * s_from)
    a_to = tl.load(at_ptr + b * s_to)
    a_known = tl.load(ak_ptr + b * s_known)
    a_jump = tl.load(aj_ptr + b * s_jump)
    eta = tl.full((), eta_in, a_to.dtype)
    coef = _coefficients(a_from, a_to, a_known, a_jump, eta, MODE, HAS_MASK, HAS_JUMP)
    return b, offs, inb, ptr, a_to, coef


@triton.jit
def _sampler_forward_kernel(
    x_ptr, e_ptr, n_ptr, m_ptr, k_ptr, nk_ptr, nj_ptr, out_ptr,
    af_ptr, at_ptr, ak_ptr, aj_ptr,
    s_from: tl.int32, s_to: tl.int32, s_known: tl.int32, s_jump: tl.int32,
    eta_in: tl.float64, clip_in: tl.float64,
    n: tl.int32, mask_n: tl.int32, b0: tl.int64,
    MODE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_JUMP: tl.constexpr, CLIP: tl.constexpr,
    HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    b, offs, inb, ptr, a_to, coef = _prologue(
        af_ptr, at_ptr, ak_ptr, aj_ptr, s_from, s_to, s_known, s_jump, eta_in, n, b0, MODE, HAS_MASK, HAS_JUMP, BLOCK
    )
    jx, jn, sa, s1m, sa_to, dr, sigma, ka, kn, cx, cn = coef
    x = tl.load(x_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
    y = x
    if MODE == 1:
        nz = tl.load(n_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
        y = jx * x + jn * nz
    if MODE == 2:
        e = tl.load(e_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
        x0 = (x - s1m * e) / sa
        if CLIP:
            c = tl.full((), clip_in, a_to.dtype)
            x0 = tl.where(x0 < -c, -c, x0)
            x0 = tl.where(x0 > c, c, x0)
        y = sa_to * x0 + dr * e
        if HAS_NOISE:
            nz = tl.load(n_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
            y = y + sigma * nz
    if HAS_MASK:
        m = tl.load(m_ptr + b * mask_n + offs % mask_n, mask=inb, other=0).to(a_to.dtype)
        k = tl.load(k_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
        nk = tl.load(nk_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
        y = m * y + (1.0 - m) * (ka * k + kn * nk)
    if HAS_JUMP:
        nj = tl.load(nj_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
        y = cx * y + cn * nj
    tl.store(out_ptr + ptr, y.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _sampler_backward_kernel(
    g_ptr, x_ptr, e_ptr, m_ptr, gx_ptr, ge_ptr, gk_ptr,
    af_ptr, at_ptr, ak_ptr, aj_ptr,
    s_from: tl.int32, s_to: tl.int32, s_known: tl.int32, s_jump: tl.int32,
    eta_in: tl.float64, clip_in: tl.float64,
    n: tl.int32, mask_n: tl.int32, b0: tl.int64,
    MODE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_JUMP: tl.constexpr, CLIP: tl.constexpr,
    NEED_X: tl.constexpr, NEED_E: tl.constexpr, NEED_K: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    b, offs, inb, ptr, a_to, coef = _prologue(
        af_ptr, at_ptr, ak_ptr, aj_ptr, s_from, s_to, s_known, s_jump, eta_in, n, b0, MODE, HAS_MASK, HAS_JUMP, BLOCK
    )
    jx, jn, sa, s1m, sa_to, dr, sigma, ka, kn, cx, cn = coef
    g = tl.load(g_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
    dx = tl.full((BLOCK,), 1.0, a_to.dtype)
    de = tl.zeros((BLOCK,), a_to.dtype)
    dk = tl.zeros((BLOCK,), a_to.dtype)
    if MODE == 1:
        dx = dx * jx
    if MODE == 2:
        dx = dx * (sa_to / sa)
        de = de + (dr - sa_to * s1m / sa)
        if CLIP:
            x = tl.load(x_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
            e = tl.load(e_ptr + ptr, mask=inb, other=0).to(a_to.dtype)
            x0 = (x - s1m * e) / sa
            c = tl.full((), clip_in, a_to.dtype)
            inside = (x0 >= -c) & (x0 <= c)
            dx = tl.where(inside, dx, 0.0)
            de = tl.where(inside, de, dr)
    if HAS_MASK:
        m = tl.load(m_ptr + b * mask_n + offs % mask_n, mask=inb, other=0).to(a_to.dtype)
        dx = m * dx
        de = m * de
        dk = (1.0 - m) * ka
    if HAS_JUMP:
        dx = cx * dx
        de = cx * de
        dk = cx * dk
    if NEED_X:
        tl.store(gx_ptr + ptr, (dx * g).to(gx_ptr.dtype.element_ty), mask=inb)
    if NEED_E:
        tl.store(ge_ptr + ptr, (de * g).to(ge_ptr.dtype.element_ty), mask=inb)
    if NEED_K:
        tl.store(gk_ptr + ptr, (dk * g).to(gk_ptr.dtype.element_ty), mask=inb)


Tensor = torch.Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _params(x: Tensor, **alpha_bars: Tensor) -> list[tuple[Tensor, int]]:
    """Each alpha-bar in the compute dtype, contiguous, with its stride (0: one value, 1: per sample)."""
    out = []
    for name, p in alpha_bars.items():
        if p.dim() != 1 or p.numel() not in (1, x.shape[0]) or p.device != x.device:
            raise ValueError(
                f"miga_fast_triton.sampler_step: `{name}` must be a 1-D tensor of 1 or B values on x's device"
            )
        out.append((p.to(_compute_dtype(x)).contiguous(), 0 if p.numel() == 1 else 1))
    return out


def _check(x: Tensor, mask: Tensor | None, **others: Tensor | None) -> int:
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("miga_fast_triton.sampler_step: `x` must have a non-empty batch dimension")
    for name, t in others.items():
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"miga_fast_triton.sampler_step: `{name}` must match `x` in shape, dtype and device")
    if mask is None:
        return 0
    ok = mask.dim() == x.dim() and all(
        m == s or (d == 1 and m == 1) for d, (m, s) in enumerate(zip(mask.shape, x.shape))
    )
    if not ok or mask.dtype != x.dtype or mask.device != x.device:
        raise ValueError(
            "miga_fast_triton.sampler_step: `mask` must be x's shape (or with dim 1 of size 1), dtype, device"
        )
    return mask.numel() // x.shape[0]


def _new(x: Tensor) -> Tensor:
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    return out.fill_(float("nan")) if POISON else out


def _c(t: Tensor | None, x: Tensor) -> Tensor:
    return x if t is None else t.contiguous()


@torch.library.custom_op("miga_fast_triton::sampler_step", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def sampler_step(
    x: Tensor,
    eps: Tensor | None,
    known: Tensor | None,
    mask: Tensor | None,
    noise: Tensor | None,
    noise_known: Tensor | None,
    noise_jump: Tensor | None,
    a_from: Tensor,
    a_to: Tensor,
    a_known: Tensor,
    a_jump: Tensor,
    mode: int,
    eta: float,
    clip: float,
) -> Tensor:
    mask_n = _check(x, mask, eps=eps, known=known, noise=noise, noise_known=noise_known, noise_jump=noise_jump)
    if mode == DDIM and eps is None:
        raise ValueError("miga_fast_triton.sampler_step: ddim needs `eps`")
    if mode == JUMP and noise is None:
        raise ValueError("miga_fast_triton.sampler_step: a jump needs `noise`")
    if mask is not None and (known is None or noise_known is None):
        raise ValueError("miga_fast_triton.sampler_step: a mask needs `known` and `noise_known`")
    xc = x.contiguous()
    out = _new(xc)
    b, n = x.shape[0], x[0].numel()
    if n == 0:
        return out
    check_int32("elements per sample + a block", n + BLOCK)
    params = _params(x, a_from=a_from, a_to=a_to, a_known=a_known, a_jump=a_jump)
    ptrs = [_c(t, xc) for t in (eps, noise, mask, known, noise_known, noise_jump)]
    for lo, hi in chunks(b):
        _sampler_forward_kernel[(triton.cdiv(n, BLOCK), hi - lo)](
            xc, *ptrs, out, *(p for p, _ in params), *(s for _, s in params), float(eta), float(clip), n,
            max(mask_n, 1), lo, MODE=mode, HAS_MASK=mask is not None, HAS_JUMP=noise_jump is not None,
            CLIP=clip > 0, HAS_NOISE=noise is not None, BLOCK=BLOCK,
        )  # fmt: skip
    return out


@torch.library.custom_op("miga_fast_triton::sampler_step_backward", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def sampler_step_backward(
    grad: Tensor,
    x: Tensor,
    eps: Tensor | None,
    mask: Tensor | None,
    a_from: Tensor,
    a_to: Tensor,
    a_known: Tensor,
    a_jump: Tensor,
    mode: int,
    eta: float,
    clip: float,
    has_jump: bool,
    need_x: bool,
    need_eps: bool,
    need_known: bool,
) -> list[Tensor]:
    mask_n = _check(x, mask, eps=eps, grad=grad)
    if mode == DDIM and eps is None:
        raise ValueError("miga_fast_triton.sampler_step_backward: ddim needs `eps`")
    xc, gc = x.contiguous(), grad.contiguous()
    outs = [_new(xc) if need else None for need in (need_x, need_eps, need_known)]
    b, n = x.shape[0], x[0].numel()
    if n > 0:
        check_int32("elements per sample + a block", n + BLOCK)
        params = _params(x, a_from=a_from, a_to=a_to, a_known=a_known, a_jump=a_jump)
        for lo, hi in chunks(b):
            _sampler_backward_kernel[(triton.cdiv(n, BLOCK), hi - lo)](
                gc, xc, _c(eps, xc), _c(mask, xc), *(_c(o, xc) for o in outs), *(p for p, _ in params),
                *(s for _, s in params), float(eta), float(clip), n, max(mask_n, 1), lo, MODE=mode,
                HAS_MASK=mask is not None, HAS_JUMP=has_jump, CLIP=clip > 0, NEED_X=need_x, NEED_E=need_eps,
                NEED_K=need_known, BLOCK=BLOCK,
            )  # fmt: skip
    return [o for o in outs if o is not None]


@sampler_step.register_fake
def _(x, *args):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@sampler_step_backward.register_fake
def _(grad, x, eps, mask, a_from, a_to, a_known, a_jump, mode, eta, clip, has_jump, need_x, need_eps, need_known):
    return [
        torch.empty_like(x, memory_format=torch.contiguous_format) for need in (need_x, need_eps, need_known) if need
    ]
