"""Triton kernels of the MINE family (docs/algorithms.md §3): the same math as
csrc/cpu/mine_loops.h, tiled as flash attention is.

With u = U + b1, v = V [B, H] and w = w2 [H], T_ij = sum_h w_h act(u_ih + v_jh).
_lse_kernel: a program per block of BI rows walks the columns in blocks of BJ, builds the
BI x BJ tile of T on chip by rank-1 updates over the hidden units (u and v transposed, so
each load is contiguous) and keeps an online log-sum-exp per row: nothing B x B is
written. The backward recomputes the tiles (the hidden units in slices of BH):
_grad_rows_kernel (a program per row block) accumulates d/du and the per-row parts of
d/dw; _grad_cols_kernel (a program per column block) accumulates d/dv. Every output
element belongs to one program, so there are no atomics and the results are
deterministic; memory is O(B H).

Exposed as the opaque custom ops miga_fast_triton::mine_row_lse and
::mine_row_lse_backward (the schemas of the C++ ops) with fake kernels; autograd is
registered by miga_fast.ops.mine.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import DEVICE_TYPES, POISON, check_int32, on_tensor_device

BI, BJ, BH = 32, 32, 8
# The backward kernels hold three BI x BJ x BH temporaries: at 4 warps grad_rows needs 255
# registers and spills 184 bytes on sm_90 (tests/_triton_aot.py); at 8 warps, 174 and none.
BACKWARD_WARPS = 8
FORWARD_TILE = 64  # the forward's BI = BJ: 2-D tiles by rank-1 updates


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 0:  # relu
        return tl.where(z > 0, z, 0.0)
    elif ACT == 1:  # elu, alpha = 1
        return tl.where(z > 0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)
    else:  # softplus, beta = 1, threshold = 20
        return tl.where(z > 20, z, tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))))


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
    u_ptr,
    v_ptr,
    w_ptr,
    rows,
    cols,
    rmask,
    cmask,
    H,
    ACT: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BH: tl.constexpr,
):
    """The BI x BJ tile T[rows, cols] (zero where masked)."""
    t = tl.zeros((BI, BJ), dtype=u_ptr.dtype.element_ty)
    for h0 in range(0, H, BH):
        hs = h0 + tl.arange(0, BH)
        hm = hs < H
        uu = tl.load(u_ptr + rows[:, None] * H + hs[None, :], mask=rmask[:, None] & hm[None, :], other=0.0)
        vv = tl.load(v_ptr + cols[:, None] * H + hs[None, :], mask=cmask[:, None] & hm[None, :], other=0.0)
        ww = tl.load(w_ptr + hs, mask=hm, other=0.0)
        z = uu[:, None, :] + vv[None, :, :]
        t += tl.sum(_act(z, ACT) * ww[None, None, :], axis=2)
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
    """The forward in 2-D tiles: u and v transposed ([H, B], so a hidden unit's values for
    a block of rows are contiguous), the BI x BJ tile of T built by rank-1 updates, one
    hidden unit at a time (no 3-D temporary), and an online log-sum-exp per row."""
    rows = tl.program_id(0).to(tl.int64) * BI + tl.arange(0, BI)
    rmask = rows < B
    m = tl.full((BI,), float("-inf"), dtype=ut_ptr.dtype.element_ty)
    s = tl.zeros((BI,), dtype=ut_ptr.dtype.element_ty)
    for j0 in range(0, B, BJ):
        cols = (j0 + tl.arange(0, BJ)).to(tl.int64)
        cmask = cols < B
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
        t = tl.where(_pair_mask(rows, cols, rmask, cmask, EXCL), t, float("-inf"))
        m_new = tl.maximum(m, tl.max(t, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(t - m_safe[:, None]), axis=1)
        m = m_new
    tl.store(lse_ptr + rows, m + tl.log(tl.where(rmask, s, 1.0)), mask=rmask)


@triton.jit
def _grad_rows_kernel(
    u_ptr,
    v_ptr,
    w_ptr,
    g_ptr,
    lse_ptr,
    gu_ptr,
    gwr_ptr,
    B: tl.int32,
    H: tl.int32,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BH: tl.constexpr,
):
    """gu[i, h] += sum_j p_ij act'(z_ijh), gwr[i, h] += sum_j p_ij act(z_ijh) for this row
    block, p_ij = g_i exp(T_ij - lse_i) (w_h is applied to gu by the caller)."""
    rows = tl.program_id(0).to(tl.int64) * BI + tl.arange(0, BI)
    rmask = rows < B
    gi = tl.load(g_ptr + rows, mask=rmask, other=0.0)
    li = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    for j0 in range(0, B, BJ):
        cols = (j0 + tl.arange(0, BJ)).to(tl.int64)
        cmask = cols < B
        t = _scores(u_ptr, v_ptr, w_ptr, rows, cols, rmask, cmask, H, ACT, BI, BJ, BH)
        p = tl.where(_pair_mask(rows, cols, rmask, cmask, EXCL), gi[:, None] * tl.exp(t - li[:, None]), 0.0)
        for h0 in range(0, H, BH):
            hs = h0 + tl.arange(0, BH)
            hm = hs < H
            rm = rmask[:, None] & hm[None, :]
            uu = tl.load(u_ptr + rows[:, None] * H + hs[None, :], mask=rm, other=0.0)
            vv = tl.load(v_ptr + cols[:, None] * H + hs[None, :], mask=cmask[:, None] & hm[None, :], other=0.0)
            z = uu[:, None, :] + vv[None, :, :]
            off = rows[:, None] * H + hs[None, :]
            du = tl.sum(p[:, :, None] * _dact(z, ACT), axis=1)
            dw = tl.sum(p[:, :, None] * _act(z, ACT), axis=1)
            tl.store(gu_ptr + off, tl.load(gu_ptr + off, mask=rm, other=0.0) + du, mask=rm)
            tl.store(gwr_ptr + off, tl.load(gwr_ptr + off, mask=rm, other=0.0) + dw, mask=rm)


@triton.jit
def _grad_cols_kernel(
    u_ptr,
    v_ptr,
    w_ptr,
    g_ptr,
    lse_ptr,
    gv_ptr,
    B: tl.int32,
    H: tl.int32,
    ACT: tl.constexpr,
    EXCL: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BH: tl.constexpr,
):
    """gv[j, h] += sum_i p_ij act'(z_ijh) for this column block."""
    cols = tl.program_id(0).to(tl.int64) * BJ + tl.arange(0, BJ)
    cmask = cols < B
    for i0 in range(0, B, BI):
        rows = (i0 + tl.arange(0, BI)).to(tl.int64)  # rows * H may pass 2**31
        rmask = rows < B
        gi = tl.load(g_ptr + rows, mask=rmask, other=0.0)
        li = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        t = _scores(u_ptr, v_ptr, w_ptr, rows, cols, rmask, cmask, H, ACT, BI, BJ, BH)
        p = tl.where(_pair_mask(rows, cols, rmask, cmask, EXCL), gi[:, None] * tl.exp(t - li[:, None]), 0.0)
        for h0 in range(0, H, BH):
            hs = h0 + tl.arange(0, BH)
            hm = hs < H
            cm = cmask[:, None] & hm[None, :]
            uu = tl.load(u_ptr + rows[:, None] * H + hs[None, :], mask=rmask[:, None] & hm[None, :], other=0.0)
            vv = tl.load(v_ptr + cols[:, None] * H + hs[None, :], mask=cm, other=0.0)
            z = uu[:, None, :] + vv[None, :, :]
            off = cols[:, None] * H + hs[None, :]
            dv = tl.sum(p[:, :, None] * _dact(z, ACT), axis=0)
            tl.store(gv_ptr + off, tl.load(gv_ptr + off, mask=cm, other=0.0) + dv, mask=cm)


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
    u, v, w2 = u.contiguous(), v.contiguous(), w2.contiguous()
    b, h = u.shape
    check_int32("B + a column tile", b + BJ)  # row and column indices are int32 until multiplied by H
    lse = torch.full((b,), float("nan"), dtype=u.dtype, device=u.device) if POISON else u.new_empty(b)
    ut, vt = u.t().contiguous(), v.t().contiguous()  # [H, B]: O(B H), against the O(B^2 H) of the kernel
    _lse_kernel[(triton.cdiv(b, FORWARD_TILE),)](
        ut, vt, w2, lse, b, h, ACT=activation, EXCL=exclude_diag, BI=FORWARD_TILE, BJ=FORWARD_TILE
    )
    return lse


@torch.library.custom_op("miga_fast_triton::mine_row_lse_backward", mutates_args=(), device_types=DEVICE_TYPES)
@on_tensor_device
def mine_row_lse_backward(
    grad: Tensor, u: Tensor, v: Tensor, w2: Tensor, lse: Tensor, activation: int, exclude_diag: bool
) -> tuple[Tensor, Tensor, Tensor]:
    _check(u, v, w2)
    u, v, w2, grad, lse = (t.contiguous() for t in (u, v, w2, grad, lse))
    b, h = u.shape
    check_int32("B + a row tile", b + BI)
    gu, gv, gw_rows = torch.zeros_like(u), torch.zeros_like(v), torch.zeros_like(u)
    _grad_rows_kernel[(triton.cdiv(b, BI),)](
        u,
        v,
        w2,
        grad,
        lse,
        gu,
        gw_rows,
        b,
        h,
        ACT=activation,
        EXCL=exclude_diag,
        BI=BI,
        BJ=BJ,
        BH=BH,
        num_warps=BACKWARD_WARPS,
    )
    _grad_cols_kernel[(triton.cdiv(b, BJ),)](
        u,
        v,
        w2,
        grad,
        lse,
        gv,
        b,
        h,
        ACT=activation,
        EXCL=exclude_diag,
        BI=BI,
        BJ=BJ,
        BH=BH,
        num_warps=BACKWARD_WARPS,
    )
    return gu * w2, gv * w2, gw_rows.sum(0)


@mine_row_lse.register_fake
def _(u, v, w2, activation, exclude_diag):
    return u.new_empty(u.shape[:1])


@mine_row_lse_backward.register_fake
def _(grad, u, v, w2, lse, activation, exclude_diag):
    return torch.empty_like(u), torch.empty_like(v), torch.empty_like(w2)
