"""MINE ops: mine_bound / mine_terms / mine_pair_scores on every backend against the
reference (which materialises the B x B x H hidden tensor), forward and backward, float64
gradcheck, opcheck of the raw kernels, a batch too large for the reference with its peak
memory measured, and bad input."""

import math
import os

import pytest
import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import mine as ref

from conftest import backend_params


def _critic(rng, b, h, dtype=torch.float64, scale=1.0, device="cpu"):
    """u, v [B, H], b1, w2 [H], b2 []: a random critic's first-layer features."""
    u = torch.randn(b, h, generator=rng, dtype=dtype) * scale
    v = torch.randn(b, h, generator=rng, dtype=dtype) * scale
    b1 = torch.randn(h, generator=rng, dtype=dtype) * 0.5
    w2 = torch.randn(h, generator=rng, dtype=dtype) / math.sqrt(h)
    b2 = torch.randn((), generator=rng, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (u, v, b1, w2, b2)]


BOUND_PAIRS = [("dv", "all"), ("nwj", "all"), ("infonce", "all"), ("dv", "shuffle"), ("nwj", "shuffle")]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("bound,pairs", BOUND_PAIRS)
@pytest.mark.parametrize("activation", ["relu", "elu", "softplus"])
@pytest.mark.parametrize("b,h", [(2, 1), (5, 7), (37, 33), (70, 16)])
def test_bound_and_grads_match_reference_float64(backend, device, bound, pairs, activation, b, h, rng):
    args = _critic(rng, b, h, device=device)
    perm = torch.randperm(b, generator=rng).to(device) if pairs == "shuffle" else None
    with miga_fast.set_backend(backend):
        out = ops.mine_bound(*args, bound=bound, pairs=pairs, perm=perm, activation=activation)
    grads = torch.autograd.grad(out, args)
    want = ref.bound(*args, bound, pairs, perm, activation)
    want_grads = torch.autograd.grad(want, args)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for name, g, w in zip(("u", "v", "b1", "w2", "b2"), grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda m: f"d/d{name}: {m}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_float32_matches_reference(backend, device, activation, rng):
    args = _critic(rng, 45, 40, dtype=torch.float32, scale=2.0, device=device)
    for bound in ("dv", "infonce"):
        with miga_fast.set_backend(backend):
            out = ops.mine_bound(*args, bound=bound, activation=activation)
        # against the float64 reference (the truth), not the float32 one (its own rounding)
        args64 = [a.detach().double().requires_grad_() for a in args]
        want = ref.bound(*args64, bound, "all", None, activation)
        torch.testing.assert_close(out, want.float(), rtol=1e-5, atol=1e-5)
        for g, w in zip(torch.autograd.grad(out, args), torch.autograd.grad(want, args64)):
            torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("bound", ["dv", "nwj", "infonce"])
def test_gradcheck(backend, device, bound, rng):
    args = _critic(rng, 6, 5, device=device)
    with miga_fast.set_backend(backend):
        assert torch.autograd.gradcheck(lambda *a: ops.mine_bound(*a, bound=bound, activation="softplus"), args)


@pytest.mark.parametrize("backend,device", backend_params())
def test_terms_give_the_dv_bound(backend, device, rng):
    args = _critic(rng, 20, 9, device=device)
    with miga_fast.set_backend(backend):
        joint, lme = ops.mine_terms(*args)
        dv = ops.mine_bound(*args)
    torch.testing.assert_close(joint - lme, dv)
    want_joint, want_lme = ref.terms(*args)
    torch.testing.assert_close(joint, want_joint)
    torch.testing.assert_close(lme, want_lme)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("exclude_diag", [False, True])
def test_opcheck_raw_kernels(backend, device, exclude_diag, rng):
    namespace = "miga_fast_triton" if backend == "triton" else "miga_fast"
    if backend == "triton":
        from miga_fast import triton_kernels  # noqa: F401
        from miga_fast.ops import mine as mine_module

        mine_module._ops_for("triton")  # registers autograd
    op = getattr(torch.ops, namespace).mine_row_lse
    u, v, _, w2, _ = _critic(rng, 9, 6, device=device)
    torch.library.opcheck(op, (u, v, w2, 0, exclude_diag))
    g = torch.rand(9, generator=rng, dtype=torch.float64).to(device)
    lse = op(u.detach(), v.detach(), w2.detach(), 1, exclude_diag)
    torch.library.opcheck(
        getattr(torch.ops, namespace).mine_row_lse_backward,
        (g, u.detach(), v.detach(), w2.detach(), lse, 1, exclude_diag),
    )


def test_pair_scores_match_reference(rng):
    args = _critic(rng, 13, 10)
    for activation in ("relu", "elu", "softplus"):
        torch.testing.assert_close(
            ops.mine_pair_scores(*args, activation=activation), ref.pair_scores(*args, activation)
        )
    t = ops.mine_pair_scores(*args)
    torch.testing.assert_close(t.diagonal(), ref.joint_scores(*args))


def test_half_inputs_compute_in_float32(rng):
    args = [t.detach().half() for t in _critic(rng, 16, 8)]
    out = ops.mine_bound(*args)
    assert out.dtype == torch.float32
    want = ref.bound(*[t.float() for t in args])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def _peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def test_large_batch_runs_in_o_bh_memory(rng):
    """B = 4096, H = 64: the reference's hidden tensor alone is 4 GiB (float32); the CPU
    kernel's forward and backward stay within a few MiB of extra memory, and agree with a
    row-blocked float64 evaluation of the bound."""
    if not miga_fast.backends()["cpu"]["built"]:
        pytest.skip("C++ kernels not built")
    try:
        _reset_peak_rss()
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    b, h = 4096, 64
    u, v, b1, w2, b2 = _critic(rng, b, h, dtype=torch.float32)
    base = _peak_rss_bytes()
    with miga_fast.set_backend("cpu"):
        out = ops.mine_bound(u, v, b1, w2, b2)
        out.backward()
    extra = _peak_rss_bytes() - base
    reference_bytes = b * b * h * 4
    assert extra < 64 * 2**20, f"peak RSS grew by {extra / 2**20:.1f} MiB"
    assert extra < reference_bytes / 50
    with torch.no_grad():
        t = ops.mine_pair_scores(u.double(), v.double(), b1.double(), w2.double(), b2.double())
        want = t.diagonal().mean() - ref.marginal_log_mean_exp(t, "all", None)
    assert abs(out.item() - want.item()) < 1e-4
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all() and torch.isfinite(w2.grad).all()


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.__setitem__(1, a[1][:, :3]), "`v` has shape"),
        (lambda a: a.__setitem__(0, a[0][:1]), "B >= 2"),
        (lambda a: a.__setitem__(2, a[2][:2]), "`b1` must be"),
        (lambda a: a.__setitem__(3, a[3].float()), "`w2` has dtype"),
        (lambda a: a.__setitem__(4, torch.zeros(2, dtype=torch.float64)), "`b2` must hold one number"),
        (lambda a: a[0].data.__setitem__((0, 0), float("nan")), "`u` contains NaN"),
        (lambda a: a[3].data.__setitem__(0, float("inf")), "`w2` contains NaN or Inf"),
        (lambda a: a.__setitem__(0, a[0][:, :, None]), r"`u` must be \[B, H\]"),
    ],
)
def test_bad_input_names_the_argument(change, match, rng):
    args = _critic(rng, 6, 4)
    change(args)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.mine_bound(*args)


def test_bad_options(rng):
    args = _critic(rng, 6, 4)
    with pytest.raises(ValueError, match="`bound` must be one of"):
        ops.mine_bound(*args, bound="mine")
    with pytest.raises(ValueError, match="`activation` must be one of"):
        ops.mine_bound(*args, activation="tanh")
    with pytest.raises(ValueError, match="`pairs` must be one of"):
        ops.mine_bound(*args, pairs="some")
    with pytest.raises(ValueError, match="infonce"):
        ops.mine_bound(*args, bound="infonce", pairs="shuffle")
    with pytest.raises(ValueError, match="permutation"):
        ops.mine_bound(*args, pairs="shuffle", perm=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[6\]"):
        ops.mine_bound(*args, pairs="shuffle", perm=torch.arange(5))
    with pytest.raises(ValueError, match="only used with pairs='shuffle'"):
        ops.mine_bound(*args, perm=torch.arange(6))


def test_shuffle_without_perm_draws_one(rng):
    args = _critic(rng, 32, 8)
    torch.manual_seed(0)
    a = ops.mine_bound(*args, pairs="shuffle")
    torch.manual_seed(0)
    perm = torch.randperm(32)
    torch.testing.assert_close(a, ref.bound(*args, "dv", "shuffle", perm))


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(), reason="needs Triton to run"
)
def test_compiled_bound_matches_eager(rng):
    args = _critic(rng, 24, 8, dtype=torch.float32)
    fn = torch.compile(lambda *a: ops.mine_bound(*a), backend="aot_eager", fullgraph=True)
    out = fn(*args)
    torch.testing.assert_close(out, ops.mine_bound(*args))
    out.backward()
    assert args[0].grad is not None


def test_softplus_keeps_its_tail(rng):
    """softplus(z) for z -> -inf is exp(z): tiny, and exact only with log1p (log(1 + e^z)
    rounds to 0 once e^z is below the epsilon). Every backend keeps the relative precision."""
    import miga_fast
    from miga_fast.reference import mine as ref

    u = torch.full((3, 2), -30.0, dtype=torch.float64)
    v = torch.zeros(3, 2, dtype=torch.float64)
    w2 = torch.full((2,), 1e12, dtype=torch.float64)  # T = 2e12 softplus(-30), about 0.19: the tail matters
    want = ref.row_lse(u, v, w2, "softplus", True)
    for backend in ("cpu", "triton"):
        if not miga_fast.backends()[backend]["runs_here"]:
            continue
        ops_ = torch.ops.miga_fast_triton if backend == "triton" else torch.ops.miga_fast
        if backend == "triton":
            import importlib

            importlib.import_module("miga_fast.triton_kernels")
        got = ops_.mine_row_lse(u, v, w2, 2, True)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("signs", ["positive", "negative", "some zero", "all zero"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relu_bound_for_every_sign_pattern_of_w2(backend, device, signs, dtype, rng):
    """The ReLU forward splits the hidden units by the sign of w2 (units of w2 = 0 dropped,
    each group padded to whole vectors): every pattern, against the reference."""
    for b, h in [(2, 1), (3, 9), (7, 17), (10, 24)]:
        u, v, b1, w2, b2 = _critic(rng, b, h, dtype=dtype, device=device)
        with torch.no_grad():
            if signs == "positive":
                w2.abs_()
            elif signs == "negative":
                w2.copy_(-w2.abs())
            elif signs == "some zero":
                w2[::2] = 0
            else:
                w2.zero_()
        args = [u, v, b1, w2, b2]
        with miga_fast.set_backend(backend):
            out = ops.mine_bound(*args, bound="dv", activation="relu")
        want = ref.bound(*args, "dv", "all", None, "relu")
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out, want, rtol=tol, atol=tol)
        for g, w in zip(torch.autograd.grad(out, args), torch.autograd.grad(want, args)):
            torch.testing.assert_close(g, w, rtol=100 * tol, atol=tol)
