"""Triton kernels of the MINE family (docs/algorithms.md §3): the same math as
csrc/cpu/mine_loops.h, tiled as flash attention is.

With u = U + b1, v = V [B, H] and w = w2 [H], T_ij = sum_h w_h act(u_ih + v_jh).
_lse_kernel: a program per block of BI rows walks the columns in blocks of BJ, builds the
BI x BJ tile of T on chip by rank-1 updates over the hidden units (u and v transposed, so
each load is contiguous) and keeps an online log-sum-exp per row: nothing B x B is
written. The backward recomputes the tiles: _grad_rows_kernel (a program per row block)
accumulates d/du and the per-row parts of d/dw, _grad_cols_kernel (a program per column
block) d/dv, one hidden unit at a time into transposed outputs (contiguous rows of
[H, B]). Every output element belongs to one program, so there are no atomics and the
results are deterministic; memory is O(B H).

Exposed as the opaque custom ops miga_fast_triton::mine_row_lse and
::mine_row_lse_backward (the schemas of the C++ ops) with fake kernels; autograd is
registered by miga_fast.ops.mine.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import DEVICE_TYPES, POISON, check_int32, on_tensor_device

TILE = 64  # BI = BJ: 2-D tiles of T built by rank-1 updates over the hidden units
BACKWARD_WARPS = 16  # the backward holds p, z and two products per 64 x 64 tile: no spill at 16 (sm_90)


@triton.jit
def _log1p(y):
    """log(1 + y) to full precision for small y (log(1 + y) alone returns 0 once 1 + y rounds
    to 1): log(u) y / (u - 1) with u = 1 + y (Goldberg). libdevice's log1p has no interpreter
    implementation."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:  # relu
        return tl.where(z > 0, z, 0.0)
    elif ACT == 1:  # elu, alpha = 1
        return tl.where(z > 0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)
    else:  # softplus, beta = 1, threshold = 20
        return tl.where(z > 20, z, tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z))))


@triton.jit
def _dact(z, ACT: tl.constexpr):
    if ACT == 0:
        return tl.where(z > 0, 1.0, 0.0)
    elif ACT == 1:
        return tl.where(z > 0, 1.0, tl.exp(tl.minimum(z, 0.0)))
    else:
        return tl.where(z > 20, 1.0, 1.0 / (1.0 + tl.exp(-tl.minimum(z, 20.0))))


@triton.jit
def _scores(
    ut_ptr, vt_ptr, w_ptr, rows, cols, rmask, cmask, B, H, ACT: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr
):
    """The BI x BJ tile T[rows, cols] by rank-1 updates, one hidden unit at a time, from u and
    v transposed ([H, B]: contiguous loads); zero where masked."""
    t = tl.zeros((BI, BJ), dtype=ut_ptr.dtype.element_ty)
    up = ut_ptr + rows  # pointers advance by B per hidden unit: 64-bit address arithmetic
    vp = vt_ptr + cols
    wp = w_ptr
    for _ in range(0, H):
        uh = tl.load(up, mask=rmask, other=0.0)
        vh = tl.load(vp, mask=cmask, other=0.0)
        t += tl.load(wp) * _act(uh[:, None] + vh[None, :], ACT)
        up += B
        vp += B
        wp += 1
    return t


@triton.jit
def _pair_mask(rows, cols, rmask, cmask, EXCL: tl.constexpr):
    valid = rmask[:, None] & cmask[None, :]
    if EXCL:
        valid = valid & (rows[:, None] != cols[None, :])
    return valid


@triton.jit
def _lse_kernel(
    ut_ptr,
    vt_ptr,
    w_ptr,
    lse_ptr,
    B: tl.int32,
    H: tl.int32,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
):
    """An online log-sum-exp per row over the column tiles."""
    rows = tl.program_id(0).to(tl.int64) * BI + tl.arange(0, BI)
    rmask = rows < B
    m = tl.full((BI,), float("-inf"), dtype=ut_ptr.dtype.element_ty)
    s = tl.zeros((BI,), dtype=ut_ptr.dtype.element_ty)
    for j0 in range(0, B, BJ):
        cols = (j0 + tl.arange(0, BJ)).to(tl.int64)
        cmask = cols < B
        t = _scores(ut_ptr, vt_ptr, w_ptr, rows, cols, rmask, cmask, B, H, ACT, BI, BJ)
        t = tl.where(_pair_mask(rows, cols, rmask, cmask, EXCL), t, float("-inf"))
        m_new = tl.maximum(m, tl.max(t, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(t - m_safe[:, None]), axis=1)
        m = m_new
    tl.store(lse_ptr + rows, m + tl.log(tl.where(rmask, s, 1.0)), mask=rmask)


@triton.jit
def _weights(
    ut_ptr,
    vt_ptr,
    w_ptr,
    g_ptr,
    lse_ptr,
    rows,
    cols,
    rmask,
    cmask,
    B,
    H,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
):
    """p_ij = g_i exp(T_ij - lse_i) on the tile (zero where masked)."""
    gi = tl.load(g_ptr + rows, mask=rmask, other=0.0)
    li = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    t = _scores(ut_ptr, vt_ptr, w_ptr, rows, cols, rmask, cmask, B, H, ACT, BI, BJ)
    return tl.where(_pair_mask(rows, cols, rmask, cmask, EXCL), gi[:, None] * tl.exp(t - li[:, None]), 0.0)


@triton.jit
def _grad_rows_kernel(
    ut_ptr,
    vt_ptr,
    w_ptr,
    g_ptr,
    lse_ptr,
    gut_ptr,
    gwt_ptr,
    B: tl.int32,
    H: tl.int32,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
):
    """For this row block, per column tile and hidden unit h (transposed outputs [H, B]):
    gut[h, i] += sum_j p_ij act'(z_ijh), gwt[h, i] += sum_j p_ij act(z_ijh) (w_h is applied
    to gu by the caller)."""
    rows = tl.program_id(0).to(tl.int64) * BI + tl.arange(0, BI)
    rmask = rows < B
    for j0 in range(0, B, BJ):
        cols = (j0 + tl.arange(0, BJ)).to(tl.int64)
        cmask = cols < B
        p = _weights(ut_ptr, vt_ptr, w_ptr, g_ptr, lse_ptr, rows, cols, rmask, cmask, B, H, ACT, EXCL, BI, BJ)
        up = ut_ptr + rows
        vp = vt_ptr + cols
        gup = gut_ptr + rows
        gwp = gwt_ptr + rows
        for _ in range(0, H):
            z = tl.load(up, mask=rmask, other=0.0)[:, None] + tl.load(vp, mask=cmask, other=0.0)[None, :]
            tl.store(gup, tl.load(gup, mask=rmask, other=0.0) + tl.sum(p * _dact(z, ACT), axis=1), mask=rmask)
            tl.store(gwp, tl.load(gwp, mask=rmask, other=0.0) + tl.sum(p * _act(z, ACT), axis=1), mask=rmask)
            up += B
            vp += B
            gup += B
            gwp += B


@triton.jit
def _grad_cols_kernel(
    ut_ptr,
    vt_ptr,
    w_ptr,
    g_ptr,
    lse_ptr,
    gvt_ptr,
    B: tl.int32,
    H: tl.int32,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
):
    """gvt[h, j] += sum_i p_ij act'(z_ijh) for this column block (transposed output [H, B])."""
    cols = tl.program_id(0).to(tl.int64) * BJ + tl.arange(0, BJ)
    cmask = cols < B
    for i0 in range(0, B, BI):
        rows = (i0 + tl.arange(0, BI)).to(tl.int64)  # rows * H may pass 2**31
        rmask = rows < B
        p = _weights(ut_ptr, vt_ptr, w_ptr, g_ptr, lse_ptr, rows, cols, rmask, cmask, B, H, ACT, EXCL, BI, BJ)
        up = ut_ptr + rows
        vp = vt_ptr + cols
        gvp = gvt_ptr + cols
        for _ in range(0, H):
            z = tl.load(up, mask=rmask, other=0.0)[:, None] + tl.load(vp, mask=cmask, other=0.0)[None, :]
            tl.store(gvp, tl.load(gvp, mask=cmask, other=0.0) + tl.sum(p * _dact(z, ACT), axis=0), mask=cmask)
            up += B
            vp += B
            gvp += B


def _check(u, v, w2):
    if u.dim() != 2 or u.shape[0] < 2 or v.shape != u.shape or w2.shape != u.shape[1:]:
        raise ValueError(
            f"miga_fast_triton.mine_row_lse: u, v must be [B, H] with B >= 2 and w2 [H], got "
            f"{tuple(u.shape)}, {tuple(v.shape)}, {tuple(w2.shape)}"
        )
    if not (u.dtype == v.dtype == w2.dtype) or u.dtype not in (torch.float32, torch.float64):
        raise TypeError("miga_fast_triton.mine_row_lse: u, v, w2 must share a dtype, float32 or float64")


Tensor = torch.Tensor


@torch.library.custom_op("miga_fast_triton::mine_row_lse", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def mine_row_lse(u: Tensor, v: Tensor, w2: Tensor, activation: int, exclude_diag: bool) -> Tensor:
    _check(u, v, w2)
    w2 = w2.contiguous()
    b, h = u.shape
    check_int32("B + a tile", b + TILE)  # row and column indices are int32 until widened
    lse = torch.full((b,), float("nan"), dtype=u.dtype, device=u.device) if POISON else u.new_empty(b)
    ut, vt = u.t().contiguous(), v.t().contiguous()  # [H, B]: O(B H), against the O(B^2 H) of the kernel
    _lse_kernel[(triton.cdiv(b, TILE),)](ut, vt, w2, lse, b, h, ACT=activation, EXCL=exclude_diag, BI=TILE, BJ=TILE)
    return lse


@torch.library.custom_op("miga_fast_triton::mine_row_lse_backward", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def mine_row_lse_backward(
    grad: Tensor, u: Tensor, v: Tensor, w2: Tensor, lse: Tensor, activation: int, exclude_diag: bool
) -> tuple[Tensor, Tensor, Tensor]:
    _check(u, v, w2)
    w2, grad, lse = (t.contiguous() for t in (w2, grad, lse))
    b, h = u.shape
    check_int32("B + a tile", b + TILE)
    ut, vt = u.t().contiguous(), v.t().contiguous()
    gut, gvt, gwt = (torch.zeros_like(ut) for _ in range(3))  # [H, B], accumulated in place
    grid = (triton.cdiv(b, TILE),)
    kw = dict(ACT=activation, EXCL=exclude_diag, BI=TILE, BJ=TILE, num_warps=BACKWARD_WARPS)
    _grad_rows_kernel[grid](ut, vt, w2, grad, lse, gut, gwt, b, h, **kw)
    _grad_cols_kernel[grid](ut, vt, w2, grad, lse, gvt, b, h, **kw)
    return (gut * w2[:, None]).t().contiguous(), (gvt * w2[:, None]).t().contiguous(), gwt.sum(1)


@mine_row_lse.register_fake
def _(u, v, w2, activation, exclude_diag):
    return u.new_empty(u.shape[:1])


@mine_row_lse_backward.register_fake
def _(grad, u, v, w2, lse, activation, exclude_diag):
    return torch.empty_like(u), torch.empty_like(v), torch.empty_like(w2)
