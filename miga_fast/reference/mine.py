"""Plain-PyTorch MINE bounds (docs/algorithms.md §3): the oracle for the mine kernels.
It materialises the B x B x H hidden tensor and the B x B score matrix, as eager code
does: B = 4096, H = 256 needs 16 GiB."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "elu", "softplus")
BOUNDS = ("dv", "nwj", "infonce")
PAIRS = ("all", "shuffle")


def activation(name: str):
    return {"relu": F.relu, "elu": F.elu, "softplus": F.softplus}[name]


def pair_scores(u, v, b1, w2, b2, act: str = "relu") -> torch.Tensor:
    """T [B, B] with T_ij = w2 . act(u_i + v_j + b1) + b2."""
    hidden = activation(act)(u[:, None, :] + v[None, :, :] + b1)
    return hidden @ w2 + b2.reshape(())


def row_lse(u, v, w2, act: str = "relu", exclude_diag: bool = False) -> torch.Tensor:
    """r_i = log sum_j exp(w2 . act(u_i + v_j)) (j != i with exclude_diag) [B]: what the
    mine_row_lse kernels compute (b1 folded into u, b2 outside)."""
    t = activation(act)(u[:, None, :] + v[None, :, :]) @ w2
    if exclude_diag:
        t = t.masked_fill(torch.eye(t.shape[0], dtype=torch.bool, device=t.device), float("-inf"))
    return torch.logsumexp(t, 1)


def joint_scores(u, v, b1, w2, b2, act: str = "relu") -> torch.Tensor:
    """T_ii [B]: the critic on the paired rows (O(B H); every backend uses this)."""
    return activation(act)(u + v + b1) @ w2 + b2.reshape(())


def marginal_log_mean_exp(t: torch.Tensor, pairs: str, perm) -> torch.Tensor:
    """log of the mean of exp(T) over the marginal pairs of the score matrix t [B, B]."""
    b = t.shape[0]
    if pairs == "shuffle":
        marg = t[torch.arange(b, device=t.device), perm]
        return torch.logsumexp(marg, 0) - math.log(marg.numel())
    # every i != j: the diagonal masked out (a boolean index would give a data-dependent
    # shape, which torch.compile(fullgraph=True) cannot trace)
    off = t.masked_fill(torch.eye(b, dtype=torch.bool, device=t.device), float("-inf"))
    return torch.logsumexp(off.reshape(-1), 0) - math.log(b * (b - 1))


def combine(bound: str, joint_mean, log_mean_exp_marginal):
    """The DV or NWJ bound from E_P[T] and log E_Q[e^T]."""
    if bound == "dv":
        return joint_mean - log_mean_exp_marginal
    return joint_mean - torch.exp(log_mean_exp_marginal - 1.0)


def terms(u, v, b1, w2, b2, pairs="all", perm=None, act="relu"):
    """(E_P[T], log E_Q[e^T]) from the materialised score matrix."""
    t = pair_scores(u, v, b1, w2, b2, act)
    return t.diagonal().mean(), marginal_log_mean_exp(t, pairs, perm)


def bound(u, v, b1, w2, b2, bound="dv", pairs="all", perm=None, act="relu") -> torch.Tensor:
    """The scalar DV / NWJ / InfoNCE lower bound on I(X; Y) from one batch."""
    if bound == "infonce":
        t = pair_scores(u, v, b1, w2, b2, act)
        return (t.diagonal() - torch.logsumexp(t, 1)).mean() + math.log(t.shape[0])
    return combine(bound, *terms(u, v, b1, w2, b2, pairs, perm, act))
