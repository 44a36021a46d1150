"""Triton kernels of the SSIM family (ALGORITHMS.md section 2): the same math as
csrc/cpu/ssim_loops.h.

_ssim_kernel: a program per tile of output pixels of one (b, c) plane; the five moments
from the k x k window (weights g_i g_j, zero padding for "same"), the SSIM map summed into
one partial per program (summed afterwards in a fixed order: deterministic); with
WITH_GRAD it also writes the four partial maps of the gradient (ssim_loops.h explains
them). _ssim_grad_kernel: a program per tile of input pixels gathers those maps through
the transposed window and combines them into d value / d x and d value / d y.

Exposed as the opaque custom ops miga_fast_triton::ssim and ::ssim_value_and_grad (the
schemas of the C++ ops) with fake kernels; autograd is registered by miga_fast.ops.ssim.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .projection import DEVICE_TYPES

BLOCK = 256


@triton.jit
def _ssim_kernel(x_ptr, y_ptr, win_ptr, part_ptr, pm_ptr, H, W, HO, WO, PAD, c1, c2, gs,
                 K: tl.constexpr, WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    nprog = tl.num_programs(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HO * WO
    oi = offs // WO
    oj = offs % WO
    base = plane * H * W
    w0 = tl.load(win_ptr)
    mx = tl.zeros((BLOCK,), dtype=w0.dtype)
    my = tl.zeros((BLOCK,), dtype=w0.dtype)
    exx = tl.zeros((BLOCK,), dtype=w0.dtype)
    eyy = tl.zeros((BLOCK,), dtype=w0.dtype)
    exy = tl.zeros((BLOCK,), dtype=w0.dtype)
    for i in range(K):
        gi = tl.load(win_ptr + i)
        ii = oi + i - PAD
        for j in range(K):
            wgt = gi * tl.load(win_ptr + j)
            jj = oj + j - PAD
            inb = mask & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
            xv = tl.load(x_ptr + base + ii * W + jj, mask=inb, other=0.0).to(w0.dtype)
            yv = tl.load(y_ptr + base + ii * W + jj, mask=inb, other=0.0).to(w0.dtype)
            mx += wgt * xv
            my += wgt * yv
            exx += wgt * xv * xv
            eyy += wgt * yv * yv
            exy += wgt * xv * yv
    a = 2 * mx * my + c1
    b = 2 * (exy - mx * my) + c2
    c = mx * mx + my * my + c1
    d = (exx - mx * mx) + (eyy - my * my) + c2
    s = (a / c) * (b / d)
    tl.store(part_ptr + plane * nprog + pid, tl.sum(tl.where(mask, s, 0.0).to(tl.float64), axis=0))
    if WITH_GRAD:
        inv_cd = 1.0 / (c * d)
        common = 2 * (b - a) * inv_cd
        s_cd = 2 * s * (1.0 / c - 1.0 / d)
        n = HO * WO
        out = plane * n + offs
        tl.store(pm_ptr + out, gs * (my * common - mx * s_cd), mask=mask)
        tl.store(pm_ptr + n * tl.num_programs(1) + out, gs * (mx * common - my * s_cd), mask=mask)
        tl.store(pm_ptr + 2 * n * tl.num_programs(1) + out, gs * (-s / d), mask=mask)
        tl.store(pm_ptr + 3 * n * tl.num_programs(1) + out, gs * (2 * a * inv_cd), mask=mask)


@triton.jit
def _ssim_grad_kernel(x_ptr, y_ptr, win_ptr, pm_ptr, gx_ptr, gy_ptr, H, W, HO, WO, PAD,
                      K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    nplanes = tl.num_programs(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    pi = offs // W
    pj = offs % W
    w0 = tl.load(win_ptr)
    bmx = tl.zeros((BLOCK,), dtype=w0.dtype)
    bmy = tl.zeros((BLOCK,), dtype=w0.dtype)
    bsq = tl.zeros((BLOCK,), dtype=w0.dtype)
    bxy = tl.zeros((BLOCK,), dtype=w0.dtype)
    n = HO * WO
    base = plane * n
    for i in range(K):
        gi = tl.load(win_ptr + i)
        oi = pi + PAD - i
        for j in range(K):
            wgt = gi * tl.load(win_ptr + j)
            oj = pj + PAD - j
            inb = mask & (oi >= 0) & (oi < HO) & (oj >= 0) & (oj < WO)
            o = base + oi * WO + oj
            bmx += wgt * tl.load(pm_ptr + o, mask=inb, other=0.0)
            bmy += wgt * tl.load(pm_ptr + n * nplanes + o, mask=inb, other=0.0)
            bsq += wgt * tl.load(pm_ptr + 2 * n * nplanes + o, mask=inb, other=0.0)
            bxy += wgt * tl.load(pm_ptr + 3 * n * nplanes + o, mask=inb, other=0.0)
    p = plane * H * W + offs
    xv = tl.load(x_ptr + p, mask=mask, other=0.0).to(w0.dtype)
    yv = tl.load(y_ptr + p, mask=mask, other=0.0).to(w0.dtype)
    tl.store(gx_ptr + p, bmx + 2 * xv * bsq + yv * bxy, mask=mask)
    tl.store(gy_ptr + p, bmy + 2 * yv * bsq + xv * bxy, mask=mask)


def _geometry(x, window, same_padding):
    b, c, h, w = x.shape
    k = window.numel()
    pad = k // 2 if same_padding else 0
    return b, c, h, w, k, pad, h + 2 * pad - k + 1, w + 2 * pad - k + 1


def _run(x, y, window, data_range, k1, k2, same_padding, with_grad):
    x, y = x.contiguous(), y.contiguous()
    # compute in float32 (float64 for float64 data), whatever the storage dtype
    window = window.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    b, c, h, w, k, pad, ho, wo = _geometry(x, window, same_padding)
    planes = b * c
    nprog = triton.cdiv(ho * wo, BLOCK)
    part = torch.empty((planes, nprog), dtype=torch.float64, device=x.device)
    pm = torch.empty((4, planes, ho * wo) if with_grad else (1,), dtype=window.dtype, device=x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    n = c * ho * wo
    _ssim_kernel[(nprog, planes)](x, y, window, part, pm, h, w, ho, wo, pad, c1, c2, 1.0 / n,
                                  K=k, WITH_GRAD=with_grad, BLOCK=BLOCK)
    value = (part.sum(1).reshape(b, c).sum(1) / n).to(x.dtype)
    if not with_grad:
        return value, None, None
    gx, gy = torch.empty_like(x), torch.empty_like(y)
    _ssim_grad_kernel[(triton.cdiv(h * w, BLOCK), planes)](x, y, window, pm, gx, gy, h, w, ho, wo, pad,
                                                            K=k, BLOCK=BLOCK)
    return value, gx, gy


Tensor = torch.Tensor


@torch.library.custom_op("miga_fast_triton::ssim", mutates_args=(), device_types=DEVICE_TYPES)
def ssim(x: Tensor, y: Tensor, window: Tensor, data_range: float, k1: float, k2: float,
         same_padding: bool) -> Tensor:
    return _run(x, y, window, data_range, k1, k2, same_padding, False)[0]


@torch.library.custom_op("miga_fast_triton::ssim_value_and_grad", mutates_args=(), device_types=DEVICE_TYPES)
def ssim_value_and_grad(x: Tensor, y: Tensor, window: Tensor, data_range: float, k1: float, k2: float,
                        same_padding: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _run(x, y, window, data_range, k1, k2, same_padding, True)


@ssim.register_fake
def _(x, y, *args):
    return x.new_empty(x.shape[:1])


@ssim_value_and_grad.register_fake
def _(x, y, *args):
    return x.new_empty(x.shape[:1]), torch.empty_like(x), torch.empty_like(y)
