"""Triton kernels of the SSIM family (docs/algorithms.md §2): the same math as
csrc/cpu/ssim_loops.h.

The Gaussian blur is separable, as in the C++ and CUDA kernels: _hmoments_kernel does the
horizontal k-tap pass of x, y, x^2, y^2, xy for every input row (into a [5, planes, H, WO]
buffer), and _window_moments the vertical pass inside the kernels that need the moments
(2k taps per pixel instead of k^2). _ssim_kernel: a program per tile of output pixels of
one (b, c) plane; SSIM summed into one partial per program (summed afterwards in a fixed
order: deterministic); with WITH_GRAD it also writes the four partial maps of the gradient
(ssim_loops.h explains them). The gradient gathers those maps through the transposed
window, separably too: _hgrad_kernel along rows, _ssim_grad_kernel along columns, combined
with x and y into d value / d x and d value / d y.

Every pass works on 2-D tiles of BH x BW pixels (rows x columns, _tile): a row of a tile
is BW contiguous values (coalesced), the vertical taps of neighbouring rows hit the same
cache lines, and no per-pixel integer division locates a pixel.

_ball_moments_kernel / _ball_sums_kernel: the SSIM ball's scale search (the moments of
(x, delta) once in float64, then per round every candidate scale of every sample scored
from them).

Exposed as the opaque custom ops miga_fast_triton::ssim, ::ssim_value_and_grad and
::ssim_ball_scale (the schemas of the C++ ops) with fake kernels; autograd is registered
by miga_fast.ops.ssim.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import DEVICE_TYPES, POISON, check_int32, chunks, on_tensor_device

BLOCK = 256  # _ball_sums_kernel: pixels per program
BH, BW = 8, 32  # the 2-D tiles of every other kernel


@triton.jit
def _tile(pid, ROWS, COLS, BH: tl.constexpr, BW: tl.constexpr):
    """Tile pid of a ROWS x COLS plane, row-major: its rows [BH, 1], columns [1, BW] and
    mask [BH, BW]."""
    tiles_c = tl.cdiv(COLS, BW)
    r = (pid // tiles_c) * BH + tl.arange(0, BH)[:, None]
    c = (pid % tiles_c) * BW + tl.arange(0, BW)[None, :]
    return r, c, (r < ROWS) & (c < COLS)


def _tiles(rows: int, cols: int) -> int:
    return triton.cdiv(rows, BH) * triton.cdiv(cols, BW)


@triton.jit
def _hmoments_kernel(
    x_ptr,
    y_ptr,
    win_ptr,
    hor_ptr,
    H: tl.int32,
    W: tl.int32,
    WO: tl.int32,
    PAD: tl.int32,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """The horizontal pass of the separable blur: for every input row and output column of
    plane PLANE0 + program_id(1), the k-tap sums of x, y, x^2, y^2, xy (zero padding), in the
    window's dtype, into hor[5, NPLANES, H * WO]."""
    plane = PLANE0 + tl.program_id(1)
    i, oj, mask = _tile(tl.program_id(0), H, WO, BH, BW)
    dt = win_ptr.dtype.element_ty
    m0 = tl.zeros((BH, BW), dtype=dt)
    m1 = tl.zeros((BH, BW), dtype=dt)
    m2 = tl.zeros((BH, BW), dtype=dt)
    m3 = tl.zeros((BH, BW), dtype=dt)
    m4 = tl.zeros((BH, BW), dtype=dt)
    base = plane * H * W + i * W
    for t in tl.static_range(K):
        wt = tl.load(win_ptr + t)
        jj = oj + t - PAD
        inb = mask & (jj >= 0) & (jj < W)
        xv = tl.load(x_ptr + base + jj, mask=inb, other=0.0).to(dt)
        yv = tl.load(y_ptr + base + jj, mask=inb, other=0.0).to(dt)
        m0 += wt * xv
        m1 += wt * yv
        m2 += wt * xv * xv
        m3 += wt * yv * yv
        m4 += wt * xv * yv
    n = H * WO
    o = plane * n + i * WO + oj
    stride = NPLANES * n
    tl.store(hor_ptr + o, m0, mask=mask)
    tl.store(hor_ptr + stride + o, m1, mask=mask)
    tl.store(hor_ptr + 2 * stride + o, m2, mask=mask)
    tl.store(hor_ptr + 3 * stride + o, m3, mask=mask)
    tl.store(hor_ptr + 4 * stride + o, m4, mask=mask)


@triton.jit
def _window_moments(
    hor_ptr, win_ptr, plane, oi, oj, mask, H, WO, PAD, NPLANES, K: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr
):
    """The vertical pass: mu_x, mu_y, E[x^2], E[y^2], E[xy] over the k x k window at output
    pixels (oi, oj), from the horizontal sums (rows outside the plane are zero padding)."""
    dt = win_ptr.dtype.element_ty
    mx = tl.zeros((BH, BW), dtype=dt)
    my = tl.zeros((BH, BW), dtype=dt)
    exx = tl.zeros((BH, BW), dtype=dt)
    eyy = tl.zeros((BH, BW), dtype=dt)
    exy = tl.zeros((BH, BW), dtype=dt)
    n = H * WO
    stride = NPLANES * n
    for t in tl.static_range(K):
        wt = tl.load(win_ptr + t)
        ii = oi + t - PAD
        inb = mask & (ii >= 0) & (ii < H)
        o = plane * n + ii * WO + oj
        mx += wt * tl.load(hor_ptr + o, mask=inb, other=0.0)
        my += wt * tl.load(hor_ptr + stride + o, mask=inb, other=0.0)
        exx += wt * tl.load(hor_ptr + 2 * stride + o, mask=inb, other=0.0)
        eyy += wt * tl.load(hor_ptr + 3 * stride + o, mask=inb, other=0.0)
        exy += wt * tl.load(hor_ptr + 4 * stride + o, mask=inb, other=0.0)
    return mx, my, exx, eyy, exy


@triton.jit
def _ssim_kernel(
    hor_ptr,
    win_ptr,
    part_ptr,
    pm_ptr,
    H: tl.int32,
    HO: tl.int32,
    WO: tl.int32,
    PAD: tl.int32,
    c1: tl.float64,
    c2: tl.float64,
    gs: tl.float64,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    K: tl.constexpr,
    CS_ONLY: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """A tile of output pixels of plane PLANE0 + program_id(1) (of NPLANES): its SSIM sum
    into part[plane, pid]; WITH_GRAD: the four partial maps pm[4, NPLANES, HO * WO]."""
    pid = tl.program_id(0)
    plane = PLANE0 + tl.program_id(1)
    nprog = tl.num_programs(0)
    oi, oj, mask = _tile(pid, HO, WO, BH, BW)
    mx, my, exx, eyy, exy = _window_moments(hor_ptr, win_ptr, plane, oi, oj, mask, H, WO, PAD, NPLANES, K, BH, BW)
    dt = win_ptr.dtype.element_ty
    c1 = tl.full((), c1, dt)  # float scalars in the compute dtype (_launch.py)
    c2 = tl.full((), c2, dt)
    gs = tl.full((), gs, dt)
    # ssim_pixel and ssim_partials of csrc/common/ssim_math.h, line for line (CS_ONLY:
    # lum = 0, so a = c = 1 and the lum-scaled terms drop out)
    b = 2 * (exy - mx * my) + c2
    d = (exx - mx * mx) + (eyy - my * my) + c2
    if CS_ONLY:
        a = tl.full((), 1.0, dt)
        c = tl.full((), 1.0, dt)
        lum = tl.full((), 0.0, dt)
    else:
        a = 2 * mx * my + c1
        c = mx * mx + my * my + c1
        lum = tl.full((), 1.0, dt)
    s = (a / c) * (b / d)
    tile_sum = tl.sum(tl.sum(tl.where(mask, s, 0.0).to(tl.float64), axis=1), axis=0)
    tl.store(part_ptr + plane * nprog + pid, tile_sum)
    if WITH_GRAD:
        inv_cd = 1.0 / (c * d)
        common = 2 * (lum * b - a) * inv_cd
        s_cd = 2 * s * (lum / c - 1.0 / d)
        n = HO * WO
        out = plane * n + oi * WO + oj
        stride = NPLANES * n  # int64: the maps may hold 2**31 elements or more
        tl.store(pm_ptr + out, gs * (my * common - mx * s_cd), mask=mask)
        tl.store(pm_ptr + stride + out, gs * (mx * common - my * s_cd), mask=mask)
        tl.store(pm_ptr + 2 * stride + out, gs * (-s / d), mask=mask)
        tl.store(pm_ptr + 3 * stride + out, gs * (2 * a * inv_cd), mask=mask)


@triton.jit
def _transposed_taps(
    src_ptr, win_ptr, base, pos, LIM, STEP, mask, stride, PAD, K: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr
):
    """One axis of the gradient's transposed gather, for the four maps q of src: sum over t
    of w_t src[q * stride + base + (pos + PAD - t) * STEP], zero where pos + PAD - t falls
    outside [0, LIM)."""
    dt = win_ptr.dtype.element_ty
    a0 = tl.zeros((BH, BW), dtype=dt)
    a1 = tl.zeros((BH, BW), dtype=dt)
    a2 = tl.zeros((BH, BW), dtype=dt)
    a3 = tl.zeros((BH, BW), dtype=dt)
    for t in tl.static_range(K):
        wt = tl.load(win_ptr + t)
        q = pos + PAD - t
        inb = mask & (q >= 0) & (q < LIM)
        o = base + q * STEP
        a0 += wt * tl.load(src_ptr + o, mask=inb, other=0.0)
        a1 += wt * tl.load(src_ptr + stride + o, mask=inb, other=0.0)
        a2 += wt * tl.load(src_ptr + 2 * stride + o, mask=inb, other=0.0)
        a3 += wt * tl.load(src_ptr + 3 * stride + o, mask=inb, other=0.0)
    return a0, a1, a2, a3


@triton.jit
def _hgrad_kernel(
    pm_ptr,
    win_ptr,
    hor_ptr,
    HO: tl.int32,
    WO: tl.int32,
    W: tl.int32,
    PAD: tl.int32,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """The transposed horizontal pass of the gradient: input column pj gathers the partial
    maps of the outputs pj + PAD - t with weight w_t, per output row, into hor[4, NPLANES,
    HO * W]."""
    plane = PLANE0 + tl.program_id(1)
    oi, pj, mask = _tile(tl.program_id(0), HO, W, BH, BW)
    n = HO * WO
    a0, a1, a2, a3 = _transposed_taps(
        pm_ptr, win_ptr, plane * n + oi * WO, pj, WO, 1, mask, NPLANES * n, PAD, K, BH, BW
    )
    m = HO * W
    out = plane * m + oi * W + pj
    hstride = NPLANES * m
    tl.store(hor_ptr + out, a0, mask=mask)
    tl.store(hor_ptr + hstride + out, a1, mask=mask)
    tl.store(hor_ptr + 2 * hstride + out, a2, mask=mask)
    tl.store(hor_ptr + 3 * hstride + out, a3, mask=mask)


@triton.jit
def _ssim_grad_kernel(
    x_ptr,
    y_ptr,
    win_ptr,
    hor_ptr,
    gx_ptr,
    gy_ptr,
    H: tl.int32,
    W: tl.int32,
    HO: tl.int32,
    PAD: tl.int32,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """The transposed vertical pass (input row pi gathers rows pi + PAD - t of the
    horizontal pass) and the combination with x, y into d value / d x, d value / d y."""
    plane = PLANE0 + tl.program_id(1)
    pi, pj, mask = _tile(tl.program_id(0), H, W, BH, BW)
    dt = win_ptr.dtype.element_ty
    m = HO * W
    bmx, bmy, bsq, bxy = _transposed_taps(
        hor_ptr, win_ptr, plane * m + pj, pi, HO, W, mask, NPLANES * m, PAD, K, BH, BW
    )
    p = plane * H * W + pi * W + pj
    xv = tl.load(x_ptr + p, mask=mask, other=0.0).to(dt)
    yv = tl.load(y_ptr + p, mask=mask, other=0.0).to(dt)
    tl.store(gx_ptr + p, bmx + 2 * xv * bsq + yv * bxy, mask=mask)
    tl.store(gy_ptr + p, bmy + 2 * yv * bsq + xv * bxy, mask=mask)


def _geometry(x, window, same_padding):
    b, c, h, w = x.shape
    k = window.numel()
    pad = k // 2 if same_padding else 0
    return b, c, h, w, k, pad, h + 2 * pad - k + 1, w + 2 * pad - k + 1


def _horizontal(x, y, window, h, w, wo, pad, k, planes):
    """The separable blur's horizontal pass of (x, y): hor[5, planes, h * wo]."""
    hor = torch.empty((5, planes, h * wo), dtype=window.dtype, device=x.device)
    if POISON:
        hor.fill_(float("nan"))
    for lo, hi in chunks(planes):
        _hmoments_kernel[(_tiles(h, wo), hi - lo)](x, y, window, hor, h, w, wo, pad, lo, planes, K=k, BH=BH, BW=BW)
    return hor


def _run(x, y, window, data_range, k1, k2, same_padding, cs_only, with_grad):
    x, y = x.contiguous(), y.contiguous()
    # compute in float32 (float64 for float64 data), whatever the storage dtype
    window = window.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    b, c, h, w, k, pad, ho, wo = _geometry(x, window, same_padding)
    check_int32("pixels per plane", (h + BH) * (w + BW))  # offsets within a plane stay int32
    planes = b * c
    nprog = _tiles(ho, wo)
    part = torch.empty((planes, nprog), dtype=torch.float64, device=x.device)
    pm = torch.empty((4, planes, ho * wo) if with_grad else (1,), dtype=window.dtype, device=x.device)
    if POISON:
        part.fill_(float("nan"))
        pm.fill_(float("nan"))
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    n = c * ho * wo
    hor = _horizontal(x, y, window, h, w, wo, pad, k, planes)
    for lo, hi in chunks(planes):  # grid axis 1 holds 65535 programs at most
        _ssim_kernel[(nprog, hi - lo)](
            hor,
            window,
            part,
            pm,
            h,
            ho,
            wo,
            pad,
            c1,
            c2,
            1.0 / n,
            lo,
            planes,
            K=k,
            CS_ONLY=cs_only,
            WITH_GRAD=with_grad,
            BH=BH,
            BW=BW,
        )
    value = (part.sum(1).reshape(b, c).sum(1) / n).to(x.dtype)
    if not with_grad:
        return value, None, None
    hor2 = torch.empty((4, planes, ho * w), dtype=window.dtype, device=x.device)
    if POISON:
        hor2.fill_(float("nan"))
    gx, gy = torch.empty_like(x), torch.empty_like(y)
    for lo, hi in chunks(planes):
        _hgrad_kernel[(_tiles(ho, w), hi - lo)](pm, window, hor2, ho, wo, w, pad, lo, planes, K=k, BH=BH, BW=BW)
        _ssim_grad_kernel[(_tiles(h, w), hi - lo)](
            x, y, window, hor2, gx, gy, h, w, ho, pad, lo, planes, K=k, BH=BH, BW=BW
        )
    return value, gx, gy


Tensor = torch.Tensor


@torch.library.custom_op("miga_fast_triton::ssim", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def ssim(
    x: Tensor,
    y: Tensor,
    window: Tensor,
    data_range: float,
    k1: float,
    k2: float,
    same_padding: bool,
    cs_only: bool = False,
) -> Tensor:
    return _run(x, y, window, data_range, k1, k2, same_padding, cs_only, False)[0]


@torch.library.custom_op("miga_fast_triton::ssim_value_and_grad", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def ssim_value_and_grad(
    x: Tensor,
    y: Tensor,
    window: Tensor,
    data_range: float,
    k1: float,
    k2: float,
    same_padding: bool,
    cs_only: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    return _run(x, y, window, data_range, k1, k2, same_padding, cs_only, True)


@ssim.register_fake
def _(x, y, *args):
    return x.new_empty(x.shape[:1])


@ssim_value_and_grad.register_fake
def _(x, y, *args):
    return x.new_empty(x.shape[:1]), torch.empty_like(x), torch.empty_like(y)


# ---------------------------------------------------------------- the SSIM ball


@triton.jit
def _ball_moments_kernel(
    hor_ptr,
    win_ptr,
    mom_ptr,
    H: tl.int32,
    HO: tl.int32,
    WO: tl.int32,
    PAD: tl.int32,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """The ball moments of a tile of output pixels in float64 (the vertical pass over the
    horizontal sums of (x, delta)): mu_x, mu_d, var_x, var_d, cov_xd, stored as
    mom[5, NPLANES, HO * WO]."""
    plane = PLANE0 + tl.program_id(1)
    oi, oj, mask = _tile(tl.program_id(0), HO, WO, BH, BW)
    mx, md, exx, edd, exd = _window_moments(hor_ptr, win_ptr, plane, oi, oj, mask, H, WO, PAD, NPLANES, K, BH, BW)
    n = HO * WO
    o = plane * n + oi * WO + oj
    stride = NPLANES * n
    tl.store(mom_ptr + o, mx, mask=mask)
    tl.store(mom_ptr + stride + o, md, mask=mask)
    tl.store(mom_ptr + 2 * stride + o, exx - mx * mx, mask=mask)
    tl.store(mom_ptr + 3 * stride + o, edd - md * md, mask=mask)
    tl.store(mom_ptr + 4 * stride + o, exd - mx * md, mask=mask)


@triton.jit
def _ball_sums_kernel(
    mom_ptr,
    ts_ptr,
    part_ptr,
    C: tl.int32,
    N: tl.int32,
    c1: tl.float64,
    c2: tl.float64,
    PLANE0: tl.int64,
    NPLANES: tl.int64,
    NT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """part[plane, pid, q] = the sum over this tile of SSIM(x, x + t_q delta), t_q the
    sample's candidates: the moments are polynomials in t (reference.ssim.ssim_at_scales)."""
    pid = tl.program_id(0)
    plane = PLANE0 + tl.program_id(1)
    nprog = tl.num_programs(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    o = plane * N + offs
    stride = NPLANES * N
    c1 = tl.full((), c1, tl.float64)
    c2 = tl.full((), c2, tl.float64)
    mx = tl.load(mom_ptr + o, mask=mask, other=0.0)
    md = tl.load(mom_ptr + stride + o, mask=mask, other=0.0)
    vx = tl.load(mom_ptr + 2 * stride + o, mask=mask, other=0.0)
    vd = tl.load(mom_ptr + 3 * stride + o, mask=mask, other=0.0)
    cv = tl.load(mom_ptr + 4 * stride + o, mask=mask, other=0.0)
    sample = plane // C
    for q in tl.static_range(NT):
        t = tl.load(ts_ptr + sample * NT + q)
        my = mx + t * md
        vy = vx + 2.0 * t * cv + t * t * vd
        cxy = vx + t * cv
        # ssim_at_scale of csrc/common/ssim_math.h
        s = ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        tl.store(part_ptr + (plane * nprog + pid) * NT + q, tl.sum(tl.where(mask, s, 0.0), axis=0))


@torch.library.custom_op("miga_fast_triton::ssim_ball_scale", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def ssim_ball_scale(
    delta: Tensor,
    x: Tensor,
    window: Tensor,
    tau: Tensor,
    data_range: float,
    k1: float,
    k2: float,
    same_padding: bool,
    candidates: int,
    rounds: int,
) -> Tensor:
    """Per sample the largest t in [0, 1] with SSIM(x, x + t delta) >= tau (the schema of
    the C++ op): the moments once, then per round one launch that scores every candidate;
    the choice of the next interval stays on the device (no host sync)."""
    x, delta = x.contiguous(), delta.contiguous()
    window = window.to(torch.float64).contiguous()
    b, c, h, w, k, pad, ho, wo = _geometry(x, window, same_padding)
    check_int32("pixels per plane", (h + BH) * (w + BW))
    planes, n = b * c, ho * wo
    mom = torch.empty((5, planes, n), dtype=torch.float64, device=x.device)
    if POISON:
        mom.fill_(float("nan"))
    nprog = triton.cdiv(n, BLOCK)
    hor = _horizontal(x, delta, window, h, w, wo, pad, k, planes)
    for lo_p, hi_p in chunks(planes):
        _ball_moments_kernel[(_tiles(ho, wo), hi_p - lo_p)](
            hor, window, mom, h, ho, wo, pad, lo_p, planes, K=k, BH=BH, BW=BW
        )
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    tau = tau.to(device=x.device, dtype=torch.float64).reshape(-1, 1)
    lo = torch.zeros(b, 1, dtype=torch.float64, device=x.device)
    hi = torch.ones_like(lo)
    grid = torch.linspace(0, 1, candidates, dtype=torch.float64, device=x.device).reshape(1, -1)
    index = torch.arange(1, candidates + 1, device=x.device)
    part = torch.empty((planes, nprog, candidates), dtype=torch.float64, device=x.device)
    for _ in range(rounds):
        ts = (lo + (hi - lo) * grid).contiguous()
        if POISON:
            part.fill_(float("nan"))
        for lo_p, hi_p in chunks(planes):
            _ball_sums_kernel[(nprog, hi_p - lo_p)](
                mom, ts, part, c, n, c1, c2, lo_p, planes, NT=candidates, BLOCK=BLOCK
            )
        value = part.sum(1).reshape(b, c, candidates).sum(1) / (c * n)
        ok = value >= tau
        ok[:, 0] = True
        last = (ok * index).argmax(1, keepdim=True)
        lo, hi = ts.gather(1, last), ts.gather(1, (last + 1).clamp(max=candidates - 1))
    return lo.squeeze(1).to(x.dtype)


@ssim_ball_scale.register_fake
def _(delta, x, *args):
    return x.new_empty(x.shape[:1])


@triton.jit
def _wb_masked(t, mask):
    return tl.where(mask, t, 0.0).to(t.dtype)


@triton.jit
def _wb_point(s, mu, z, xv, cu, one):
    """d(s, mu) = clip(s z + (1 - s)(a u + mu), -x, 1 - x) (csrc/common/window_ball.h)."""
    v = s * z + (one - s) * (cu + mu)
    return tl.minimum(tl.maximum(v, -xv), one - xv)


@triton.jit
def _wb_psi(s, mu, z, xv, cu, mask, cnt, one):
    """|P d(s, mu) - a u|^2 over the window, mean(d) from the values d takes."""
    d = _wb_masked(_wb_point(s, mu, z, xv, cu, one), mask)
    e = _wb_masked(d - cu - tl.sum(d, axis=0) / cnt, mask)
    return tl.sum(e * e, axis=0)


@triton.jit
def _wb_mu(s, mu0, z, xv, cu, mask, cnt, mx, eps, one):
    """The root of mean(d(s, mu)) = mu: safeguarded Newton in the bracket [-mean(x), 1 - mean(x)]."""
    lo = -mx
    hi = one - mx
    mu = tl.minimum(tl.maximum(mu0, lo), hi)
    it = 0
    go = it < 64
    while go:
        v = s * z + (one - s) * (cu + mu)
        free = _wb_masked(((v > -xv) & (v < one - xv)).to(z.dtype), mask)
        d = _wb_masked(tl.minimum(tl.maximum(v, -xv), one - xv), mask)
        h = tl.sum(d, axis=0) / cnt - mu
        lo = tl.where(h > 0, mu, lo)
        hi = tl.where(h < 0, mu, hi)
        slope = one - (one - s) * tl.sum(free, axis=0) / cnt
        mid = lo + 0.5 * (hi - lo)
        nxt = tl.where(slope > 0, mu + h / tl.where(slope > 0, slope, one), mid)
        nxt = tl.where((nxt > lo) & (nxt < hi), nxt, mid)
        absmu = tl.where(mu < 0, -mu, mu)
        stop = (h == 0) | (nxt == mu) | (hi - lo <= eps * (one + absmu))
        mu = tl.where(h == 0, mu, nxt)
        it += 1
        go = (stop == 0) & (it < 64)
    return mu


@triton.jit
def _window_ball_kernel(
    d_ptr,
    x_ptr,
    g_ptr,
    C: tl.int32,
    H: tl.int32,
    W: tl.int32,
    NWX: tl.int32,
    GSTRIDE: tl.int32,
    c_pixel: tl.float64,
    PLANE0: tl.int64,
    WIN: tl.constexpr,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """A program per (window, plane): the exact Euclidean projection of delta onto the
    window's structural-SSIM ball intersected with the box (csrc/common/window_ball.h, line
    for line; reference/ssim.py: window_ball_project_). Computes in COMPUTE: float64 for
    float64 data, float32 otherwise."""
    wid = tl.program_id(0)
    plane = PLANE0 + tl.program_id(1)
    k = tl.arange(0, BLOCK)
    rows = (wid // NWX) * WIN + k // WIN
    cols = (wid % NWX) * WIN + k % WIN
    mask = (k < WIN * WIN) & (rows < H) & (cols < W)
    p = plane * H * W + rows * W + cols
    xv = tl.load(x_ptr + p, mask=mask, other=0.0).to(COMPUTE)
    z = tl.load(d_ptr + p, mask=mask, other=0.0).to(COMPUTE)
    g = tl.load(g_ptr + (plane // C) * GSTRIDE).to(COMPUTE)
    one = tl.full((), 1.0, COMPUTE)
    zero = tl.full((), 0.0, COMPUTE)
    eps = tl.full((), 1.1920929e-07, COMPUTE)
    if COMPUTE == tl.float64:
        eps = tl.full((), 2.220446049250313e-16, COMPUTE)
    cnt = tl.sum(mask.to(COMPUTE), axis=0)
    a = (one - g) / g
    mx = tl.sum(xv, axis=0) / cnt
    u = _wb_masked(xv - mx, mask)
    cu = a * u
    uu = tl.sum(u * u, axis=0)
    r2 = a * (2.0 * uu + cnt * tl.full((), c_pixel, COMPUTE)) + a * a * uu
    f_hi = _wb_psi(one, zero, z, xv, cu, mask, cnt, one) - r2  # s = 1: the box projection of z
    s_lo = tl.where(f_hi <= 0, one, zero)
    mu_lo = _wb_mu(zero, zero, z, xv, cu, mask, cnt, mx, eps, one)
    f_lo = tl.where(f_hi <= 0, zero, _wb_psi(zero, mu_lo, z, xv, cu, mask, cnt, one) - r2)
    s_hi = one
    mu = mu_lo
    g_lo = f_lo
    g_hi = f_hi
    side = 0
    it = 0
    go = (f_lo < 0) & (s_hi - s_lo > eps) & (-f_lo > 64.0 * eps * r2)
    while go:
        s = s_lo - g_lo * (s_hi - s_lo) / (g_hi - g_lo)
        s = tl.where((s > s_lo) & (s < s_hi), s, s_lo + 0.5 * (s_hi - s_lo))
        mu = _wb_mu(s, mu, z, xv, cu, mask, cnt, mx, eps, one)
        f = _wb_psi(s, mu, z, xv, cu, mask, cnt, one) - r2
        inside = f <= 0
        g_hi = tl.where(inside, tl.where(side < 0, 0.5 * g_hi, g_hi), f)
        g_lo = tl.where(inside, f, tl.where(side > 0, 0.5 * g_lo, g_lo))
        s_lo = tl.where(inside, s, s_lo)
        f_lo = tl.where(inside, f, f_lo)
        mu_lo = tl.where(inside, mu, mu_lo)
        s_hi = tl.where(inside, s_hi, s)
        side = tl.where(inside, -1, 1)
        it += 1
        go = (f_lo < 0) & (s_hi - s_lo > eps) & (-f_lo > 64.0 * eps * r2) & (it < 200)
    out = _wb_point(s_lo, mu_lo, z, xv, cu, one).to(COMPUTE)  # the interpreter keeps Python floats as doubles
    tl.store(d_ptr + p, out.to(d_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op(
    "miga_fast_triton::ssim_window_ball_project_", mutates_args=("delta",), device_types=DEVICE_TYPES
)
@on_tensor_device
def ssim_window_ball_project_(delta: Tensor, x: Tensor, gamma: Tensor, window: int, c_pixel: float) -> None:
    if not delta.is_contiguous():
        raise ValueError("miga_fast_triton.ssim_window_ball_project_: `delta` must be contiguous")
    x = x.contiguous()
    b, c, h, w = x.shape
    check_int32("pixels per plane", h * w + window * window)
    nwy, nwx = triton.cdiv(h, window), triton.cdiv(w, window)
    gamma = gamma.contiguous()
    block = triton.next_power_of_2(window * window)
    compute = tl.float64 if x.dtype == torch.float64 else tl.float32
    for lo, hi in chunks(b * c):
        _window_ball_kernel[(nwy * nwx, hi - lo)](
            delta,
            x,
            gamma,
            c,
            h,
            w,
            nwx,
            0 if gamma.numel() == 1 else 1,
            c_pixel,
            lo,
            WIN=window,
            BLOCK=block,
            COMPUTE=compute,
        )


@ssim_window_ball_project_.register_fake
def _(delta, x, gamma, window, c_pixel):
    return None
