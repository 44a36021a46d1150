"""The MINE family (docs/algorithms.md §3): critic scores and the DV / NWJ / InfoNCE
bounds on I(X; Y) for the split-first-layer critic

    T(x_i, y_j) = w2 . act(u_i + v_j + b1) + b2,   u = f(x) W_x^T,  v = g(y) W_y^T.

`mine_bound` with pairs="all" (and InfoNCE) needs a log-sum-exp over every pair (i, j).
The compiled backends compute it row by row without storing the B x B x H hidden tensor
or the B x B score matrix (memory O(B H)), and their backward recomputes the scores
instead of keeping them. Joint pairs (i, i) and shuffled pairs (i, perm[i]) are B rows:
plain PyTorch on every backend.

Backends: the C++ CPU kernel, the Triton kernel (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), the CUDA-extension kernel, and the reference, which materialises
the score matrix (the oracle). float16 / bfloat16 inputs compute in float32.
"""

from __future__ import annotations

import math

import torch

from .. import _backend, _extension
from .._validation import check_choice, check_finite, check_like, check_tensor, judge, values_checked
from ..reference import mine as ref
from ..reference.mine import ACTIVATIONS, BOUNDS, PAIRS
from ._namespaces import ops_for

# float16 / bfloat16 inputs are computed in float32 before dispatch: every kernel takes them
ROW_LSE = _backend.register_op(
    _backend.Op(
        "mine_row_lse",
        "ops.mine_bound, ops.mine_terms (pairs='all')",
        dtypes={"cpu": _backend.ANY_FLOAT, "cuda": _backend.ANY_FLOAT},
    )
)
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # csrc/common/mine_checks.h


def _register_autograd(namespace: str) -> None:
    """Autograd of <namespace>::mine_row_lse through its backward op (which recomputes)."""
    ops_ = getattr(torch.ops, namespace)

    def setup_context(ctx, inputs, output):
        u, v, w2, activation, exclude_diag = inputs
        ctx.save_for_backward(u, v, w2, output)
        ctx.activation, ctx.exclude_diag = activation, exclude_diag

    def backward(ctx, grad):
        u, v, w2, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference (exact second derivatives)
            with torch.enable_grad():
                value = ref.row_lse(u, v, w2, ACTIVATIONS[ctx.activation], ctx.exclude_diag)
                wanted = [t for t, need in zip((u, v, w2), ctx.needs_input_grad[:3]) if need]
                grads = iter(torch.autograd.grad(value, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None)
        gu, gv, gw = ops_.mine_row_lse_backward(grad.contiguous(), u, v, w2, lse, ctx.activation, ctx.exclude_diag)
        return gu, gv, gw, None, None

    torch.library.register_autograd(f"{namespace}::mine_row_lse", backward, setup_context=setup_context)


def _register_cpp(namespace: str = "miga_fast") -> None:
    """Fake kernels (torch.compile) and autograd of the compiled MINE ops in `namespace`
    (torch.ops.miga_fast; the emulated-CUDA test build registers its miga_fast_emu too)."""
    torch.library.register_fake(f"{namespace}::mine_row_lse")(lambda u, *args: u.new_empty(u.shape[:1]))
    torch.library.register_fake(f"{namespace}::mine_row_lse_backward")(
        lambda grad, u, v, w2, *args: (torch.empty_like(u), torch.empty_like(v), torch.empty_like(w2))
    )
    _register_autograd(namespace)


def _ops_for(backend: str):
    return ops_for(backend, "mine", _register_autograd)


if _extension.load() is not None:
    _register_cpp()


def _check_critic(u, v, b1, w2, b2, activation):
    """Checks shared by the family; returns b2 as a 0-d tensor of u's dtype."""
    check_tensor(u, "u")
    if u.dim() != 2:
        raise ValueError(f"`u` must be [B, H] (the first-layer features of x), got shape {tuple(u.shape)}")
    if u.shape[0] < 2:
        raise ValueError(f"`u` must hold a batch of B >= 2 samples (marginal pairs need two), got B = {u.shape[0]}")
    if u.shape[1] == 0:
        raise ValueError("`u` must have H >= 1 hidden units, got H = 0")
    check_like(u, "u", v, "v")
    for t, name in ((b1, "b1"), (w2, "w2")):
        check_tensor(t, name)
        if t.shape != u.shape[1:]:
            raise ValueError(f"`{name}` must be [H] = [{u.shape[1]}] (u's width), got shape {tuple(t.shape)}")
        check_like(u[0], "u", t, name)
    if not isinstance(b2, torch.Tensor):
        b2 = torch.as_tensor(b2, dtype=u.dtype, device=u.device)
    check_tensor(b2, "b2")
    if b2.numel() != 1:
        raise ValueError(f"`b2` must hold one number, got shape {tuple(b2.shape)}")
    if b2.device != u.device or b2.dtype != u.dtype:
        raise ValueError(f"`b2` must be {u.dtype} on {u.device}, got {b2.dtype} on {b2.device}")
    check_choice(activation, "activation", ACTIVATIONS)
    for t, name in ((u, "u"), (v, "v"), (b1, "b1"), (w2, "w2"), (b2, "b2")):
        check_finite(t, name)
    return b2.reshape(())


def _check_perm(perm, b: int, device) -> torch.Tensor:
    if perm is None:
        return torch.randperm(b, device=device)
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`perm` must be an int64 tensor (a permutation of range(B)), got {perm!r:.60}")
    if perm.shape != (b,):
        raise ValueError(f"`perm` must have shape [{b}], got {tuple(perm.shape)}")
    if perm.device != device:
        raise ValueError(f"`perm` is on {perm.device}, expected {device}")
    if values_checked():
        ok = (perm.sort().values.long() == torch.arange(b, device=device)).all().reshape(1)
        judge(ok, lambda v: None if v[0] else "`perm` must be a permutation of range(B)")
    return perm.long()


def _compute(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def mine_pair_scores(u, v, b1, w2, b2, activation="relu"):
    """The critic scores T [B, B], T_ij = w2 . act(u_i + v_j + b1) + b2, for tests and small
    B (the output itself is B x B; the hidden tensor is built a block of rows at a time,
    never B x B x H). Differentiable."""
    b2 = _check_critic(u, v, b1, w2, b2, activation)
    rows = max(1, (1 << 22) // (u.shape[0] * u.shape[1]))
    return torch.cat([ref.pair_scores(u[i : i + rows], v, b1, w2, b2, activation) for i in range(0, u.shape[0], rows)])


def _row_lse(ub, v, w2, activation, exclude_diag, backend):
    return _ops_for(backend).mine_row_lse(
        ub.contiguous(), v.contiguous(), w2.contiguous(), _ACT_CODE[activation], exclude_diag
    )


def _terms(u, v, b1, w2, b2, pairs, perm, activation, backend):
    """(E_P[T], log E_Q[e^T]) without the score matrix."""
    b = u.shape[0]
    joint = ref.joint_scores(u, v, b1, w2, b2, activation).mean()
    if pairs == "shuffle":
        marg = ref.joint_scores(u, v[perm], b1, w2, b2, activation)
        return joint, torch.logsumexp(marg, 0) - math.log(b)
    lse = _row_lse(u + b1, v, w2, activation, True, backend) + b2
    return joint, torch.logsumexp(lse, 0) - math.log(b * (b - 1))


def _prepare(u, v, b1, w2, b2, pairs, perm, activation):
    b2 = _check_critic(u, v, b1, w2, b2, activation)
    check_choice(pairs, "pairs", PAIRS)
    if pairs == "shuffle":
        perm = _check_perm(perm, u.shape[0], u.device)
    elif perm is not None:
        raise ValueError("`perm` is only used with pairs='shuffle'")
    backend = ROW_LSE.select(u.device, u.dtype)
    return [_compute(t) for t in (u, v, b1, w2, b2)], perm, backend


def mine_terms(u, v, b1, w2, b2, pairs="all", perm=None, activation="relu"):
    """(E_P[T], log E_Q[e^T]): the mean critic score on the joint pairs (i, i) and the log of
    the mean of e^T over the marginal pairs (every i != j, or (i, perm[i]) with
    pairs="shuffle"; perm=None draws one). The DV bound is their difference; MINE's
    bias-corrected gradient (miga_fast.mine) needs them apart. Differentiable."""
    (u, v, b1, w2, b2), perm, backend = _prepare(u, v, b1, w2, b2, pairs, perm, activation)
    if backend == "reference":
        return ref.terms(u, v, b1, w2, b2, pairs, perm, activation)
    return _terms(u, v, b1, w2, b2, pairs, perm, activation, backend)


def mine_bound(u, v, b1, w2, b2, bound="dv", pairs="all", perm=None, activation="relu"):
    """The scalar lower bound on I(X; Y) in nats from one batch of critic features:
    "dv" (Donsker-Varadhan, E_P[T] - log E_Q[e^T]), "nwj" (E_P[T] - E_Q[e^(T-1)]) or
    "infonce" (mean_i T_ii - logsumexp_j T_ij, plus log B; every pair by definition).
    u, v [B, H] (B >= 2), b1, w2 [H], b2 one number. pairs="all" takes every i != j as a
    marginal pair, "shuffle" the pairs (i, perm[i]). Differentiable in u, v, b1, w2, b2;
    the compiled backends never store the B x B scores (memory O(B H))."""
    check_choice(bound, "bound", BOUNDS)
    if bound == "infonce" and pairs != "all":
        raise ValueError("`bound='infonce'` contrasts every pair (i, j); it takes pairs='all' only")
    (u, v, b1, w2, b2), perm, backend = _prepare(u, v, b1, w2, b2, pairs, perm, activation)
    if backend == "reference":
        return ref.bound(u, v, b1, w2, b2, bound, pairs, perm, activation)
    if bound == "infonce":
        joint = ref.joint_scores(u, v, b1, w2, b2, activation)
        lse = _row_lse(u + b1, v, w2, activation, False, backend) + b2
        return (joint - lse).mean() + math.log(u.shape[0])
    return ref.combine(bound, *_terms(u, v, b1, w2, b2, pairs, perm, activation, backend))
