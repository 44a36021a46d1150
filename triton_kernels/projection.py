"""Triton kernels of the projection family (docs/algorithms.md §1).

The math and the passes mirror csrc/cuda/projection_kernels.cu:
  l-inf:        one pass, a 2-D grid (blocks of a sample, samples).
  l2, MI-FGSM:  a reduction pass writing per-program partial sums and maxima (float64;
                float64 data takes a maxima pass first), then an update pass whose
                programs combine their sample's partials in a fixed order. The gradient
                is scaled by its largest magnitude before any norm, so tiny, huge and
                zero gradients are defined (csrc/common/projection_math.h).
Each launcher is the kernel of an opaque `torch.library.custom_op` in the
`miga_fast_triton` namespace with an explicit fake kernel, so the ops pass `opcheck` and
trace under torch.compile. They are registered for CUDA tensors, and also for CPU
tensors when TRITON_INTERPRET=1 (the Triton interpreter; how the tests run them
without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import DEVICE_TYPES, POISON, check_int32, chunks, on_tensor_device

BLOCK = 1024
MAX_PARTIALS = 256
PARTIAL_CHUNK = 4 * BLOCK  # elements per partial sum (small: the interpreter tests see several)

MODE_L2_STEP = 0  # partial sums {s.s, s.u, u.u}
MODE_L2_PROJECT = 1  # {0, 0, u.u}
MODE_L1_GRAD = 2  # {|s|_1, 0, 0}


@triton.jit
def _clamp(v, lo, hi):
    v = tl.where(v < lo, lo, v)
    return tl.where(v > hi, hi, v)


@triton.jit
def _sign(g):
    return (g > 0).to(g.dtype) - (g < 0).to(g.dtype)


@triton.jit
def _linf_kernel(
    d_ptr,
    g_ptr,
    x_ptr,
    eps_ptr,
    alpha_ptr,
    eps_stride: tl.int32,
    alpha_stride: tl.int32,
    direction: tl.float64,
    n: tl.int32,
    HAS_GRAD: tl.constexpr,
    IMAGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """IMAGE: `d_ptr` holds the adversarial image x + delta, stepped in torchattacks'
    arithmetic (csrc/common/projection_math.h, linf_step_image); only with a gradient."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ptr = b * n + offs
    e = tl.load(eps_ptr + b * eps_stride)
    d = tl.load(d_ptr + ptr, mask=mask, other=0).to(e.dtype)
    x = tl.load(x_ptr + ptr, mask=mask, other=0).to(e.dtype)
    if HAS_GRAD:
        g = tl.load(g_ptr + ptr, mask=mask, other=0).to(e.dtype)
        step = tl.full((), direction, e.dtype) * tl.load(alpha_ptr + b * alpha_stride)
        d = d + step * _sign(g)
    if IMAGE:
        d = _clamp(x + _clamp(d - x, -e, e), 0.0, 1.0)
    else:
        d = _clamp(d, -e, e)
        d = _clamp(x + d, 0.0, 1.0) - x
    tl.store(d_ptr + ptr, d.to(d_ptr.dtype.element_ty), mask=mask)


SLOTS = 5  # per-program partials: {sum0, sum1, sum2, max|g|, max|d|}
PASS_FUSED = 0  # the unscaled sums and the maxima, one pass (float, half, bfloat16 data)
PASS_MAX = 1  # the maxima only (float64 data) ...
PASS_SCALED = 2  # ... then the sums of the values scaled by them


@triton.jit
def _scale_of(vmax):
    return tl.where(vmax > 0, vmax, 1.0)


@triton.jit
def _sample_maxima(part_ptr, b, nprog, NPART: tl.constexpr):
    k = tl.arange(0, NPART)
    kmask = k < nprog
    part = part_ptr + (b * nprog + k) * 5
    gm = tl.max(tl.load(part + 3, mask=kmask, other=0.0), axis=0)
    dm = tl.max(tl.load(part + 4, mask=kmask, other=0.0), axis=0)
    return gm, dm


@triton.jit
def _reduce_kernel(
    d_ptr,
    g_ptr,
    part_ptr,
    n: tl.int32,
    MODE: tl.constexpr,
    PASS: tl.constexpr,
    NPART: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums over s = g / max|g| and u = d / dscale (see csrc/common/projection_math.h,
    l2_factors): PASS_FUSED sums the unscaled values in float64 (the update rescales),
    PASS_MAX / PASS_SCALED take the maxima first (float64 data)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    gs = 1.0
    ds = 1.0
    if PASS == 2:
        gm, dm = _sample_maxima(part_ptr, b, nprog, NPART)
        gs = _scale_of(gm)
        ds = _scale_of(dm)
    s0 = tl.zeros((BLOCK,), dtype=tl.float64)
    s1 = tl.zeros((BLOCK,), dtype=tl.float64)
    s2 = tl.zeros((BLOCK,), dtype=tl.float64)
    mg = tl.zeros((BLOCK,), dtype=tl.float64)
    md = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(pid * BLOCK, n, nprog * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.zeros((BLOCK,), dtype=tl.float64)
        d = tl.zeros((BLOCK,), dtype=tl.float64)
        if MODE != 1:
            g = tl.load(g_ptr + b * n + offs, mask=mask, other=0).to(tl.float64) / gs
        if MODE != 2:
            d = tl.load(d_ptr + b * n + offs, mask=mask, other=0).to(tl.float64) / ds
        if PASS != 2:
            mg = tl.maximum(mg, tl.abs(g))
            md = tl.maximum(md, tl.abs(d))
        if PASS != 1:
            if MODE == 2:
                s0 += tl.abs(g)
            else:
                s0 += g * g
                s1 += g * d
                s2 += d * d
    out = part_ptr + (b * nprog + pid) * 5
    if PASS != 1:
        tl.store(out + 0, tl.sum(s0, axis=0))
        tl.store(out + 1, tl.sum(s1, axis=0))
        tl.store(out + 2, tl.sum(s2, axis=0))
    if PASS != 2:
        tl.store(out + 3, tl.max(mg, axis=0))
        tl.store(out + 4, tl.max(md, axis=0))


@triton.jit
def _update_kernel(
    d_ptr,
    m_ptr,
    g_ptr,
    x_ptr,
    eps_ptr,
    alpha_ptr,
    part_ptr,
    eps_stride: tl.int32,
    alpha_stride: tl.int32,
    mu: tl.float64,
    direction: tl.float64,
    n: tl.int32,
    MODE: tl.constexpr,
    SCALED: tl.constexpr,
    NPART: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.arange(0, NPART)
    kmask = k < nprog
    part = part_ptr + (b * nprog + k) * 5
    s0 = tl.sum(tl.load(part + 0, mask=kmask, other=0.0), axis=0)
    s1 = tl.sum(tl.load(part + 1, mask=kmask, other=0.0), axis=0)
    s2 = tl.sum(tl.load(part + 2, mask=kmask, other=0.0), axis=0)
    gm, dm = _sample_maxima(part_ptr, b, nprog, NPART)
    gs64 = _scale_of(gm)
    if SCALED:
        ds64 = _scale_of(dm)
        ss = s0
        su = s1
        l1_64 = s0
    else:
        ds64 = gm * 0.0 + 1.0
        ss = s0 / (gs64 * gs64)
        su = s1 / gs64
        l1_64 = s0 / gs64
    e = tl.load(eps_ptr + b * eps_stride)
    e64 = e.to(tl.float64)
    gs = gs64.to(e.dtype)
    mu_c = tl.full((), mu, e.dtype)  # the scalars in the compute dtype (_launch.py: float scalars)
    step = tl.full((), direction, e.dtype) * tl.load(alpha_ptr + b * alpha_stride)
    if MODE != 2:
        # l2_factors (csrc/common/projection_math.h): |d + c s| relative to K = max(ds, |c|)
        snorm = tl.sqrt(tl.maximum(ss, 0.0))
        c64 = tl.where(snorm > 0, step.to(tl.float64) / tl.where(snorm > 0, snorm, 1.0), 0.0)  # 0 for MODE 1: ss = 0
        kk = tl.maximum(ds64, tl.abs(c64))
        kk_safe = tl.where(kk > 0, kk, 1.0)
        a = ds64 / kk_safe
        bb = c64 / kk_safe
        q = tl.maximum(a * a * s2 + 2.0 * a * bb * su + bb * bb * ss, 0.0)
        nq = tl.sqrt(q)
        ek = e64 / kk_safe
        f = tl.where((kk > 0) & (nq > ek), ek / tl.where(nq > 0, nq, 1.0), 1.0).to(e.dtype)
        c = c64.to(e.dtype)
    else:
        l1 = l1_64.to(e.dtype)
    for start in range(pid * BLOCK, n, nprog * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        ptr = b * n + offs
        d = tl.load(d_ptr + ptr, mask=mask, other=0).to(e.dtype)
        x = tl.load(x_ptr + ptr, mask=mask, other=0).to(e.dtype)
        if MODE == 0:
            g = tl.load(g_ptr + ptr, mask=mask, other=0).to(e.dtype)
            d = (d + c * (g / gs)) * f
        elif MODE == 1:
            d = d * f
        else:
            g = tl.load(g_ptr + ptr, mask=mask, other=0).to(e.dtype)
            m = tl.load(m_ptr + ptr, mask=mask, other=0).to(e.dtype)
            gn = tl.where(l1 > 0, (g / gs) / tl.where(l1 > 0, l1, 1.0), 0.0)
            m = mu_c * m + gn
            tl.store(m_ptr + ptr, m.to(m_ptr.dtype.element_ty), mask=mask)
            d = _clamp(d + step * _sign(m), -e, e)
        d = _clamp(x + d, 0.0, 1.0) - x
        tl.store(d_ptr + ptr, d.to(d_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def partial_programs(batch: int, n: int, device: torch.device) -> int:
    """Reduction programs per sample: one per PARTIAL_CHUNK elements, at most MAX_PARTIALS,
    a function of n alone (as the CUDA launcher's), so the order of every sum, and every
    bit of the result, is the same on every GPU model."""
    return max(1, min(triton.cdiv(n, PARTIAL_CHUNK), MAX_PARTIALS))


def _param(p: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, int]:
    """A per-sample parameter's slice for samples [lo, hi) and its stride (0: shared)."""
    return (p, 0) if p.numel() == 1 else (p[lo:hi], 1)


def _run_in_place(fn, delta: torch.Tensor, *others: torch.Tensor, momentum: torch.Tensor | None = None):
    """Run `fn` on contiguous views; copy results back into strided outputs."""
    d = delta.contiguous()
    m = momentum.contiguous() if momentum is not None else None
    fn(d, m, *[t.contiguous() for t in others])
    if d.data_ptr() != delta.data_ptr():
        delta.copy_(d)
    if m is not None and m.data_ptr() != momentum.data_ptr():
        momentum.copy_(m)


def _launch_linf(d, _m, x, eps, g=None, alpha=None, direction=1.0, image=False):
    batch = d.shape[0]
    n = check_int32("elements per sample", d[0].numel() + BLOCK)
    n -= BLOCK
    if n == 0:
        return
    d2, x2 = d.reshape(batch, n), x.reshape(batch, n)
    g2 = g.reshape(batch, n) if g is not None else d2
    for lo, hi in chunks(batch):
        e, es = _param(eps, lo, hi)
        a, as_ = _param(alpha if alpha is not None else eps, lo, hi)
        grid = (triton.cdiv(n, BLOCK), hi - lo)
        _linf_kernel[grid](
            d2[lo:hi],
            g2[lo:hi],
            x2[lo:hi],
            e,
            a,
            es,
            as_,
            float(direction),
            n,
            HAS_GRAD=g is not None,
            IMAGE=image,
            BLOCK=BLOCK,
        )


def _launch_two_pass(mode, d, m, x, eps, g=None, alpha=None, mu=0.0, direction=1.0):
    batch = d.shape[0]
    n = check_int32("elements per sample", d[0].numel() + BLOCK)  # offsets within a sample stay int32
    n -= BLOCK
    if n == 0:
        return
    d2, x2 = d.reshape(batch, n), x.reshape(batch, n)
    g2 = g.reshape(batch, n) if g is not None else d2
    m2 = m.reshape(batch, n) if m is not None else d2
    nprog = partial_programs(batch, n, d.device)
    scaled = d.dtype == torch.float64  # float64 sums could overflow: take the maxima first
    for lo, hi in chunks(batch):
        part = torch.empty((hi - lo, nprog, SLOTS), dtype=torch.float64, device=d.device)
        if POISON:  # tests: a partial the reduction failed to write shows up as NaN
            part.fill_(float("nan"))
        e, es = _param(eps, lo, hi)
        a, as_ = _param(alpha if alpha is not None else eps, lo, hi)
        grid = (nprog, hi - lo)
        npart = triton.next_power_of_2(nprog)
        passes = (PASS_MAX, PASS_SCALED) if scaled else (PASS_FUSED,)
        for p in passes:
            _reduce_kernel[grid](d2[lo:hi], g2[lo:hi], part, n, MODE=mode, PASS=p, NPART=npart, BLOCK=BLOCK)
        _update_kernel[grid](
            d2[lo:hi],
            m2[lo:hi],
            g2[lo:hi],
            x2[lo:hi],
            e,
            a,
            part,
            es,
            as_,
            float(mu),
            float(direction),
            n,
            MODE=mode,
            SCALED=scaled,
            NPART=npart,
            BLOCK=BLOCK,
        )


# ------------------------------------------------------------------- the custom ops

Tensor = torch.Tensor


@torch.library.custom_op("miga_fast_triton::pgd_step_linf_", mutates_args=("delta",), device_types=DEVICE_TYPES)
@on_tensor_device
def pgd_step_linf_(delta: Tensor, grad: Tensor, x: Tensor, eps: Tensor, alpha: Tensor, direction: float) -> None:
    _run_in_place(lambda d, _m, g, xx: _launch_linf(d, None, xx, eps, g, alpha, direction), delta, grad, x)


@torch.library.custom_op("miga_fast_triton::pgd_step_linf_image_", mutates_args=("adv",), device_types=DEVICE_TYPES)
@on_tensor_device
def pgd_step_linf_image_(adv: Tensor, grad: Tensor, x: Tensor, eps: Tensor, alpha: Tensor, direction: float) -> None:
    _run_in_place(lambda a, _m, g, xx: _launch_linf(a, None, xx, eps, g, alpha, direction, image=True), adv, grad, x)


@torch.library.custom_op("miga_fast_triton::pgd_step_l2_", mutates_args=("delta",), device_types=DEVICE_TYPES)
@on_tensor_device
def pgd_step_l2_(delta: Tensor, grad: Tensor, x: Tensor, eps: Tensor, alpha: Tensor, direction: float) -> None:
    _run_in_place(
        lambda d, _m, g, xx: _launch_two_pass(MODE_L2_STEP, d, None, xx, eps, g, alpha, 0.0, direction), delta, grad, x
    )


@torch.library.custom_op(
    "miga_fast_triton::mi_fgsm_step_", mutates_args=("delta", "momentum"), device_types=DEVICE_TYPES
)
@on_tensor_device
def mi_fgsm_step_(
    delta: Tensor, momentum: Tensor, grad: Tensor, x: Tensor, eps: Tensor, alpha: Tensor, mu: float, direction: float
) -> None:
    _run_in_place(
        lambda d, m, g, xx: _launch_two_pass(MODE_L1_GRAD, d, m, xx, eps, g, alpha, mu, direction),
        delta,
        grad,
        x,
        momentum=momentum,
    )


@torch.library.custom_op("miga_fast_triton::project_linf_", mutates_args=("delta",), device_types=DEVICE_TYPES)
@on_tensor_device
def project_linf_(delta: Tensor, x: Tensor, eps: Tensor) -> None:
    _run_in_place(lambda d, _m, xx: _launch_linf(d, None, xx, eps), delta, x)


@torch.library.custom_op("miga_fast_triton::project_l2_", mutates_args=("delta",), device_types=DEVICE_TYPES)
@on_tensor_device
def project_l2_(delta: Tensor, x: Tensor, eps: Tensor) -> None:
    _run_in_place(lambda d, _m, xx: _launch_two_pass(MODE_L2_PROJECT, d, None, xx, eps), delta, x)


for _op in (pgd_step_linf_, pgd_step_linf_image_, pgd_step_l2_, mi_fgsm_step_, project_linf_, project_l2_):
    _op.register_fake(lambda *args, **kwargs: None)
