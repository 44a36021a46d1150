"""SSIM: the public op and every kernel against the reference and pytorch-msssim on
random and real images, gradients (float64 gradcheck), opcheck, the "same" padding, the
SSIM ball and the window ball, and bad input."""

import importlib

import pytest
import torch

import miga_fast
from miga_fast import data, ops

from conftest import backend_params

pytorch_msssim = pytest.importorskip("pytorch_msssim")


def _pair(rng, shape, dtype=torch.float32):
    x = torch.rand(shape, generator=rng, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("shape", [(3, 1, 11, 11), (2, 3, 32, 32), (1, 3, 37, 53), (4, 1, 64, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_pytorch_msssim_on_random_images(shape, dtype, rng):
    x, y = _pair(rng, shape, dtype)
    ours = ops.ssim(x, y)
    theirs = pytorch_msssim.ssim(x, y, data_range=1, size_average=False)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)


def test_equals_pytorch_msssim_on_real_images():
    x, _ = data.load_natural_patches("test", 64)
    x = x[:16]
    y = data.add_gaussian_noise(x, 25, generator=0)
    torch.testing.assert_close(
        ops.ssim(x, y), pytorch_msssim.ssim(x, y, data_range=1, size_average=False), rtol=0, atol=1e-5
    )
    d, _ = data.load_digits("test")
    d = d[:16]
    dn = data.add_gaussian_noise(d, 15, generator=1)
    torch.testing.assert_close(
        ops.ssim(d, dn, win_size=7, win_sigma=1.0),
        pytorch_msssim.ssim(d, dn, data_range=1, size_average=False, win_size=7, win_sigma=1.0),
        rtol=0,
        atol=1e-5,
    )


def test_identity_symmetry_and_the_map(rng):
    x, y = _pair(rng, (2, 3, 24, 24), torch.float64)
    torch.testing.assert_close(ops.ssim(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ops.ssim(x, y), ops.ssim(y, x))
    value, smap = ops.ssim(x, y, return_map=True)
    assert smap.shape == (2, 3, 14, 14)
    torch.testing.assert_close(value, smap.mean((1, 2, 3)))
    value, smap = ops.ssim(x, y, padding="same", return_map=True)
    assert smap.shape == x.shape and (ops.ssim(x, y, padding="same") < 1).all()


def test_same_padding_runs_on_images_smaller_than_the_window(rng):
    x, y = _pair(rng, (2, 1, 5, 7), torch.float64)
    v = ops.ssim(x, y, padding="same")
    assert v.shape == (2,) and torch.isfinite(v).all()


def test_gradients_in_both_inputs_float64(rng):
    x, y = _pair(rng, (2, 2, 13, 12), torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    for padding in ("valid", "same"):
        assert torch.autograd.gradcheck(lambda a, b: ops.ssim(a, b, padding=padding), (x, y))
    value = ops.ssim(x, y)
    gx, gy = torch.autograd.grad(value.sum(), (x, y))
    theirs = pytorch_msssim.ssim(x, y, data_range=1, size_average=False)
    tx, ty = torch.autograd.grad(theirs.sum(), (x, y))
    torch.testing.assert_close(gx, tx)
    torch.testing.assert_close(gy, ty)


def test_named_backend_that_cannot_run_is_an_error(rng):
    x, y = _pair(rng, (1, 1, 16, 16))
    with miga_fast.set_backend("cpu"):  # float16 has no C++ kernel: an error, not the reference
        with pytest.raises(miga_fast.BackendUnavailableError, match="float32/float64"):
            ops.ssim_window_ball_project_((y - x).half(), x.half(), 0.9)
    with miga_fast.set_backend("reference"):
        ops.ssim_window_ball_project_((y - x).half(), x.half(), 0.9)


# ----------------------------------------------------------------------------- the CPU kernel

CPU = pytest.mark.skipif(not miga_fast.backends()["cpu"]["built"], reason="C++ kernels not built")


def _random_shape(rng, padding, small=False):
    """Random [B, C, H, W]; `small` for the Triton interpreter (every tap is a numpy call)."""
    lo = 1 if padding == "same" else 11
    b, c = int(torch.randint(1, 3 if small else 4, (1,), generator=rng)), int(torch.randint(1, 4, (1,), generator=rng))
    h, w = (int(v) for v in torch.randint(lo, 20 if small else 40, (2,), generator=rng))
    return (b, c, h, w)


KERNEL_BACKENDS = backend_params()  # cpu, triton, cuda (each skipped where it cannot run)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cs_only", [False, True], ids=["ssim", "cs"])
def test_kernels_match_the_reference_forward_and_backward(backend, device, padding, dtype, cs_only, rng):
    for _ in range(4 if backend == "cpu" else 2):
        shape = _random_shape(rng, padding, small=backend == "triton" and device == "cpu")
        x, y = _pair(rng, shape, dtype)
        x, y = x.to(device), y.to(device)
        upstream = torch.randn(shape[0], generator=rng, dtype=torch.float64).to(dtype).to(device)
        results = []
        for backend_ in (backend, "reference"):
            xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
            with miga_fast.set_backend(backend_):
                v = ops.ssim(xx, yy, padding=padding, cs_only=cs_only)
                with torch.no_grad():  # the value-only op
                    torch.testing.assert_close(ops.ssim(x, y, padding=padding, cs_only=cs_only), v.detach())
            gx, gy = torch.autograd.grad((v * upstream).sum(), (xx, yy))
            results.append((v.detach(), gx, gy))
        if dtype == torch.float32:
            tol = dict(rtol=1e-4, atol=1e-5)
        else:  # Triton's scalar arguments (C1, C2) travel as float32: ~1e-8 relative
            tol = dict(rtol=1e-9, atol=1e-11) if backend == "cpu" else dict(rtol=1e-7, atol=1e-9)
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, **tol)


@CPU
def test_cpu_kernel_window_and_constants_and_real_images():
    x, _ = data.load_natural_patches("test", 64)
    x = x[:8]
    y = data.add_gaussian_noise(x, 25, generator=0)
    with miga_fast.set_backend("cpu"):
        got = ops.ssim(x, y, win_size=7, win_sigma=1.2, K=(0.02, 0.05), data_range=1.0)
    want = pytorch_msssim.ssim(x, y, data_range=1, size_average=False, win_size=7, win_sigma=1.2, K=(0.02, 0.05))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@CPU
def test_cpu_kernel_gradcheck_and_opcheck(rng):
    x, y = _pair(rng, (2, 2, 13, 12), torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    with miga_fast.set_backend("cpu"):
        for padding in ("valid", "same"):
            for cs_only in (False, True):
                assert torch.autograd.gradcheck(lambda a, b: ops.ssim(a, b, padding=padding, cs_only=cs_only), (x, y))
    from miga_fast.reference.ssim import gaussian_window

    args = (x.detach(), y.detach(), gaussian_window(11, 1.5, torch.float64), 1.0, 0.01, 0.03, False)
    for extra in ((), (True,)):  # cs_only defaulted, and given
        torch.library.opcheck(torch.ops.miga_fast.ssim.default, args + extra)
        torch.library.opcheck(torch.ops.miga_fast.ssim_value_and_grad.default, args + extra)
    if miga_fast.backends()["triton"]["runs_here"] and not torch.cuda.is_available():
        importlib.import_module("miga_fast.triton_kernels")  # registers torch.ops.miga_fast_triton
        small = (x.detach()[:1, :1], y.detach()[:1, :1]) + args[2:]
        torch.library.opcheck(torch.ops.miga_fast_triton.ssim.default, small)
        torch.library.opcheck(torch.ops.miga_fast_triton.ssim_value_and_grad.default, small)


@pytest.mark.skipif(not miga_fast.backends()["cuda"]["runs_here"], reason="needs a GPU and the CUDA build")
def test_cuda_kernel_gradcheck_opcheck_and_large_tiles(rng):
    x, y = _pair(rng, (2, 2, 21, 19), torch.float64)
    x, y = x.cuda().requires_grad_(True), y.cuda().requires_grad_(True)
    with miga_fast.set_backend("cuda"):
        for padding in ("valid", "same"):
            assert torch.autograd.gradcheck(lambda a, b: ops.ssim(a, b, padding=padding), (x, y))
    from miga_fast.reference.ssim import gaussian_window

    args = (x.detach(), y.detach(), gaussian_window(11, 1.5, torch.float64, "cuda"), 1.0, 0.01, 0.03, False)
    torch.library.opcheck(torch.ops.miga_fast.ssim.default, args)
    torch.library.opcheck(torch.ops.miga_fast.ssim_value_and_grad.default, args)
    a, b = _pair(rng, (3, 3, 131, 77))  # many tiles (32 x 32 float32 fused, 16 x 16 value), ragged edges
    a, b = a.cuda().requires_grad_(True), b.cuda()
    for padding in ("valid", "same"):
        with miga_fast.set_backend("cuda"):
            got = ops.ssim(a, b, padding=padding)
            (g,) = torch.autograd.grad(got.sum(), a)
        want = miga_fast.reference.ssim.ssim(a, b, padding=padding)
        (w,) = torch.autograd.grad(want.sum(), a)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@CPU
def test_cpu_kernel_under_torch_compile(rng):
    x, y = _pair(rng, (2, 3, 16, 16))
    x.requires_grad_(True)

    def loss(a, b):
        return (1 - ops.ssim(a, b)).sum()

    with miga_fast.set_backend("cpu"):
        eager = torch.autograd.grad(loss(x, y), x)[0]
        torch._dynamo.reset()
        compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, y), x)[0]
    torch.testing.assert_close(compiled, eager)


def test_bad_input(rng):
    x, y = _pair(rng, (2, 1, 16, 16))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ops.ssim(x[..., :8, :], y[..., :8, :])
    with pytest.raises(ValueError, match="`y` has shape"):
        ops.ssim(x, y[:1])
    with pytest.raises(TypeError, match="`y` has dtype"):
        ops.ssim(x, y.double())
    with pytest.raises(ValueError, match="`x` contains NaN"):
        ops.ssim(x.index_fill(0, torch.tensor([0]), float("nan")), y)
    with pytest.raises(ValueError, match="`win_size`"):
        ops.ssim(x, y, win_size=10)
    with pytest.raises(ValueError, match="`win_sigma`"):
        ops.ssim(x, y, win_sigma=0)
    with pytest.raises(ValueError, match="`data_range`"):
        ops.ssim(x, y, data_range=0)
    with pytest.raises(TypeError, match="`K`"):
        ops.ssim(x, y, K=0.01)
    with pytest.raises(ValueError, match="`padding`"):
        ops.ssim(x, y, padding="reflect")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ops.ssim(x[0], y[0])
    with pytest.raises(ValueError, match="`x`"):
        ops.ssim(x[:0], y[:0])


# ----------------------------------------------------------------------------- the SSIM ball


def _ball_inputs(rng, shape=(4, 3, 24, 24), dtype=torch.float64, scale=0.3):
    x = torch.rand(shape, generator=rng, dtype=torch.float64) * 0.8 + 0.1
    delta = (torch.rand(shape, generator=rng, dtype=torch.float64) - 0.5) * scale
    delta = (x + delta).clamp(0, 1) - x
    return x.to(dtype), delta.to(dtype)


def _brute_force_scale(x, delta, tau, n=4001):
    """The largest t on a fine grid with SSIM(x, x + t delta) >= tau, by full SSIM passes."""
    ts = torch.linspace(0, 1, n, dtype=torch.float64)
    out = []
    for i in range(x.shape[0]):
        xs = x[i : i + 1].expand(n, *x.shape[1:])
        vals = ops.ssim(xs, xs + ts.reshape(-1, 1, 1, 1) * delta[i : i + 1])
        out.append(ts[(vals >= tau).nonzero().max()])
    return torch.stack(out)


BALL_BACKENDS = [
    "reference",
    pytest.param("cpu", marks=CPU),
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not miga_fast.backends()["triton"]["runs_here"], reason="Triton cannot run here"),
    ),
]


@pytest.mark.parametrize("backend", BALL_BACKENDS)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ball_scale_satisfies_the_constraint_and_is_maximal(backend, padding, rng):
    # small for the Triton interpreter (every window tap is a numpy call on CPU)
    x, delta = _ball_inputs(rng, (2, 2, 16, 13) if backend == "triton" else (4, 3, 24, 24), scale=0.6)
    tau = 0.97
    with miga_fast.set_backend(backend):
        t = ops.ssim_ball_scale(delta, x, tau, padding=padding)
    assert ((t >= 0) & (t <= 1)).all() and (t < 1).any()
    s = ops.ssim(x, x + t.reshape(-1, 1, 1, 1) * delta, padding=padding)
    assert (s >= tau - 1e-12).all()
    above = (t + 1e-5).clamp(max=1)
    s_above = ops.ssim(x, x + above.reshape(-1, 1, 1, 1) * delta, padding=padding)
    assert ((s_above < tau) | (t == 1)).all()


def test_ball_scale_matches_a_brute_force_search_per_sample_tau(rng):
    x, delta = _ball_inputs(rng, (3, 1, 20, 20))
    tau = torch.tensor([0.8, 0.9, 0.97], dtype=torch.float64)
    t = ops.ssim_ball_scale(delta, x, tau)
    torch.testing.assert_close(
        t,
        torch.stack([_brute_force_scale(x[i : i + 1], delta[i : i + 1], float(tau[i]))[0] for i in range(3)]),
        rtol=0,
        atol=3e-4,
    )


@pytest.mark.parametrize("backend", BALL_BACKENDS[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ball_scale_kernels_match_the_reference(backend, dtype, rng):
    """Same moments (float64), same grid: the same t up to a decision right at tau."""
    shapes = (((4, 3, 23, 31), "valid"), ((3, 1, 9, 12), "same"), ((2, 3, 40, 40), "same"))
    if backend == "triton":  # small for the interpreter
        shapes = (((2, 2, 13, 15), "valid"), ((2, 1, 9, 12), "same"))
    for shape, padding in shapes:
        x, delta = _ball_inputs(rng, shape, dtype=dtype)
        tau = torch.rand(shape[0], generator=rng, dtype=torch.float64) * 0.2 + 0.79
        with miga_fast.set_backend(backend):
            t_cpu = ops.ssim_ball_scale(delta, x, tau, padding=padding, candidates=9, rounds=4)
        with miga_fast.set_backend("reference"):
            t_ref = ops.ssim_ball_scale(delta, x, tau, padding=padding, candidates=9, rounds=4)
        assert t_cpu.dtype == dtype
        torch.testing.assert_close(t_cpu, t_ref, rtol=0, atol=1e-6)
    from miga_fast.reference.ssim import gaussian_window

    x, delta = _ball_inputs(rng, (2, 1, 12, 12))
    if backend == "triton":
        importlib.import_module("miga_fast.triton_kernels")
    namespace = torch.ops.miga_fast_triton if backend == "triton" else torch.ops.miga_fast
    torch.library.opcheck(
        namespace.ssim_ball_scale.default,
        (
            delta,
            x,
            gaussian_window(11, 1.5, torch.float64),
            torch.full((2,), 0.9, dtype=torch.float64),
            1.0,
            0.01,
            0.03,
            False,
            8,
            3,
        ),
    )


def test_ball_project_in_place_and_small_deltas_untouched(rng):
    x, delta = _ball_inputs(rng, dtype=torch.float32)
    small = delta * 1e-3
    before = small.clone()
    assert ops.ssim_ball_project_(small, x, 0.95) is small
    assert torch.equal(small, before)  # already inside: t = 1
    ops.ssim_ball_project_(delta, x, 0.95)
    assert (ops.ssim(x, x + delta) >= 0.95 - 1e-5).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_ball_on_real_images():
    x, _ = data.load_natural_patches("test", 32)
    x = x[:8].double()
    noise = data.add_gaussian_noise(x, 50, generator=0) - x
    t = ops.ssim_ball_scale(noise, x, 0.9)
    assert (ops.ssim(x, x + t.reshape(-1, 1, 1, 1) * noise) >= 0.9 - 1e-9).all() and (t < 1).all()


def test_ball_bad_input(rng):
    x, delta = _ball_inputs(rng)
    for tau in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="`tau`"):
            ops.ssim_ball_scale(delta, x, tau)
    with pytest.raises(ValueError, match="`tau`"):
        ops.ssim_ball_scale(delta, x, torch.tensor([0.9, float("nan"), 0.9, 0.9]))
    with pytest.raises(ValueError, match="`tau`"):
        ops.ssim_ball_scale(delta, x, torch.full((3,), 0.9))
    with pytest.raises(ValueError, match="`x` has shape"):
        ops.ssim_ball_scale(delta, x[:2], 0.9)
    with pytest.raises(ValueError, match="`delta` contains NaN"):
        ops.ssim_ball_scale(delta.index_fill(0, torch.tensor([0]), float("nan")), x, 0.9)
    with pytest.raises(ValueError, match="`candidates`"):
        ops.ssim_ball_scale(delta, x, 0.9, candidates=1)


# ----------------------------------------------------------------------------- the window ball


def _window_inputs(rng, shape=(2, 3, 20, 13), scale=0.08):
    x = torch.rand(shape, generator=rng, dtype=torch.float64) * 0.4 + 0.3  # the box stays inactive
    delta = (torch.rand(shape, generator=rng, dtype=torch.float64) - 0.5) * 2 * scale
    return x, delta


@pytest.mark.parametrize("backend", BALL_BACKENDS)
@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_window_ball_lands_in_every_ball_and_is_the_nearest_point(backend, gamma, rng):
    from miga_fast.reference.ssim import structural_ssim_windows, window_ids

    x, d0 = _window_inputs(rng)
    before = structural_ssim_windows(x, d0)
    assert (before < gamma).any()  # some windows start outside
    with miga_fast.set_backend(backend):
        d = ops.ssim_window_ball_project_(d0.clone(), x, gamma, window=8)
    after = structural_ssim_windows(x, d)
    assert (after >= gamma - 1e-10).all()
    active = before < gamma
    torch.testing.assert_close(after[active], torch.full_like(after[active], gamma))  # on the sphere
    torch.testing.assert_close(after[~active], before[~active], rtol=0, atol=1e-12)  # untouched, up to rounding
    # window means of delta are kept; the change is along the outward normal (KKT)
    idx, n = window_ids(20, 13, 8)
    flat0, flat = d0.reshape(6, -1), d.reshape(6, -1)
    count = torch.bincount(idx, minlength=n).double()
    mean = lambda t: torch.zeros(6, n, dtype=t.dtype).scatter_add_(1, idx.expand_as(t), t) / count  # noqa: E731
    torch.testing.assert_close(mean(flat), mean(flat0))
    u = x.reshape(6, -1) - mean(x.reshape(6, -1)).gather(1, idx.expand(6, -1))
    eta = flat - mean(flat).gather(1, idx.expand(6, -1))
    eta0 = flat0 - mean(flat0).gather(1, idx.expand(6, -1))
    a = (1 - gamma) / gamma
    for row in range(6):
        for wdx in torch.nonzero(active.reshape(6, n)[row]).flatten().tolist():
            sel = idx == wdx
            normal = eta[row, sel] - a * u[row, sel]
            step = eta0[row, sel] - eta[row, sel]
            cos = (normal @ step) / (normal.norm() * step.norm())
            assert cos > 1 - 1e-9


@pytest.mark.parametrize("backend", BALL_BACKENDS)
def test_window_ball_is_idempotent_per_sample_gamma(backend, rng):
    x, d0 = _window_inputs(rng, (3, 1, 16, 16))
    gamma = torch.tensor([0.8, 0.95, 0.999], dtype=torch.float64)
    with miga_fast.set_backend(backend):
        once = ops.ssim_window_ball_project_(d0.clone(), x, gamma)
        twice = ops.ssim_window_ball_project_(once.clone(), x, gamma)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-12)
    assert not torch.equal(once[0], d0[0]) or not torch.equal(once[2], d0[2])


@pytest.mark.parametrize("backend", BALL_BACKENDS[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_ball_kernels_match_the_reference(backend, dtype, rng):
    for shape, window in (((2, 3, 20, 13), 8), ((3, 1, 9, 16), 5), ((1, 2, 7, 7), 8)):
        x, d0 = _window_inputs(rng, shape)
        x, d0 = x.to(dtype), d0.to(dtype)
        gamma = torch.rand(shape[0], generator=rng, dtype=torch.float64).to(dtype) * 0.2 + 0.79
        with miga_fast.set_backend(backend):
            got = ops.ssim_window_ball_project_(d0.clone(), x, gamma, window=window)
            strided = d0.clone().transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous delta
            ops.ssim_window_ball_project_(strided, x, gamma, window=window)
        with miga_fast.set_backend("reference"):
            want = ops.ssim_window_ball_project_(d0.clone(), x, gamma, window=window)
        tol = dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=1e-12)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(strided, want, **tol)
    if backend == "triton":
        importlib.import_module("miga_fast.triton_kernels")
    namespace = torch.ops.miga_fast_triton if backend == "triton" else torch.ops.miga_fast
    x, d0 = _window_inputs(rng, (2, 1, 9, 9))
    torch.library.opcheck(
        namespace.ssim_window_ball_project_.default,
        (d0.clone(), x, torch.tensor([0.9, 0.8], dtype=torch.float64), 4, 0.03**2),
    )


def _window_kkt(z, d, x, gamma, window):
    """Checks, window by window, that d is the Euclidean projection of z onto the window
    ball intersected with the box (csrc/common/window_ball.h): d feasible; where d is not the
    box projection of z, the ball is tight and z - d = lam e + (box normals), lam >= 0, with
    e = d - a u - mean(d). Returns the number of windows where the ball is active."""
    from miga_fast.reference.ssim import window_ball_violation, window_ids

    ball, box = window_ball_violation(d, x, gamma, window)
    assert (box <= 0).all()
    b, c, h, w = x.shape
    idx, n = window_ids(h, w, window)
    assert (ball <= 1e-12 * (1 + ball.abs())).all(), ball.max()
    g = torch.as_tensor(gamma, dtype=x.dtype).reshape(-1)
    active = 0
    for bi in range(b):
        a = float((1 - g[bi % g.numel()]) / g[bi % g.numel()])
        for ci in range(c):
            for k in range(n):
                sel = (idx == k).reshape(h, w)
                xs, zs, ds = x[bi, ci][sel], z[bi, ci][sel], d[bi, ci][sel]
                boxed = torch.minimum(torch.maximum(zs, -xs), 1 - xs)
                if torch.allclose(ds, boxed, rtol=0, atol=1e-12):
                    continue  # the box projection was feasible
                active += 1
                assert abs(ball[bi, ci, k].item()) <= 1e-9  # tight
                e = ds - a * (xs - xs.mean()) - ds.mean()
                r = zs - ds
                free = (ds > -xs + 1e-12) & (ds < 1 - xs - 1e-12)
                lam = (r[free] @ e[free]) / (e[free] @ e[free])
                assert lam >= -1e-9
                torch.testing.assert_close(r[free], lam * e[free], rtol=0, atol=1e-8)
                at_lo, at_hi = ~free & (ds <= -xs + 1e-12), ~free & (ds >= 1 - xs - 1e-12)
                assert (r[at_lo] <= lam * e[at_lo] + 1e-8).all() and (r[at_hi] >= lam * e[at_hi] - 1e-8).all()
    return active


@pytest.mark.parametrize("backend", BALL_BACKENDS)
@pytest.mark.parametrize("gamma", [0.7, 0.95])
def test_window_ball_with_the_box_active_is_the_projection_onto_the_intersection(backend, gamma, rng):
    """Images over all of [0, 1] and large perturbations, so the box and the ball are both
    active: the result is feasible, satisfies the projection's KKT conditions, is no
    farther from z than sampled feasible points, and a second projection leaves it as it
    is (to the bit)."""
    x = torch.rand((2, 2, 12, 11), generator=rng, dtype=torch.float64)
    z = (torch.rand((2, 2, 12, 11), generator=rng, dtype=torch.float64) - 0.5) * 1.2
    with miga_fast.set_backend(backend):
        d = ops.ssim_window_ball_project_(z.clone(), x, gamma, window=6)
        again = ops.ssim_window_ball_project_(d.clone(), x, gamma, window=6)
        assert torch.equal(again, d)
        assert _window_kkt(z, d, x, gamma, 6) >= 8
        # variational inequality <z - d, f - d> <= 0 for feasible f: t * (a projection) is feasible
        dist = (z - d).flatten(1).norm(dim=1)
        for _ in range(5):
            f = ops.ssim_window_ball_project_(z + 0.3 * torch.randn(z.shape, generator=rng, dtype=z.dtype), x, gamma, 6)
            f.mul_(torch.rand((2, 1, 1, 1), generator=rng, dtype=z.dtype))
            assert ((z - d) * (f - d)).flatten(1).sum(1).max() <= 1e-10
            assert (dist <= (z - f).flatten(1).norm(dim=1) + 1e-12).all()


@pytest.mark.parametrize("backend", BALL_BACKENDS)
def test_window_ball_float32_is_feasible_and_idempotent(backend, rng):
    from miga_fast.reference.ssim import window_ball_violation

    x = torch.rand((2, 3, 16, 16), generator=rng)
    z = torch.randn((2, 3, 16, 16), generator=rng) * 0.3
    with miga_fast.set_backend(backend):
        d = ops.ssim_window_ball_project_(z.clone(), x, 0.9)
        again = ops.ssim_window_ball_project_(d.clone(), x, 0.9)
    assert torch.equal(again, d)
    ball, box = window_ball_violation(d.double(), x.double(), 0.9)
    assert ball.max() <= 1e-5 and box.max() <= 1e-7


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=CPU)])
def test_overlapping_window_ball_is_in_both_grids_and_converges(backend, rng):
    """overlap=True: Dykstra's alternation lands in the first grid's set exactly and in the
    shifted grid's to a small residual, converges (more rounds barely move it) and is the
    projection onto the intersection (no farther from z than feasible points of it). The
    reference backend takes the same path (a few rounds, compared)."""
    from miga_fast.reference.ssim import window_ball_violation

    xr = torch.rand((1, 2, 12, 12), generator=rng, dtype=torch.float64)
    zr = (torch.rand((1, 2, 12, 12), generator=rng, dtype=torch.float64) - 0.5) * 0.8
    got = {}
    for b in ("reference", backend):
        with miga_fast.set_backend(b):
            got[b] = ops.ssim_window_ball_project_(zr.clone(), xr, 0.9, window=6, overlap=True, iters=3)
    torch.testing.assert_close(got[backend], got["reference"], rtol=0, atol=1e-12)

    x = torch.rand((2, 1, 16, 16), generator=rng, dtype=torch.float64)
    z = (torch.rand((2, 1, 16, 16), generator=rng, dtype=torch.float64) - 0.5) * 0.8
    with miga_fast.set_backend(backend):
        d = ops.ssim_window_ball_project_(z.clone(), x, 0.9, window=8, overlap=True, iters=200)
        longer = ops.ssim_window_ball_project_(z.clone(), x, 0.9, window=8, overlap=True, iters=800)
        single = ops.ssim_window_ball_project_(z.clone(), x, 0.9, window=8)
        ball0, box = window_ball_violation(d, x, 0.9, 8)
        ball4, _ = window_ball_violation(d[..., 4:, 4:].contiguous(), x[..., 4:, 4:].contiguous(), 0.9, 8)
        assert ball0.max() <= 1e-12 and box.max() <= 0
        assert ball4.max() <= 1e-4
        assert (
            window_ball_violation(single[..., 4:, 4:].contiguous(), x[..., 4:, 4:].contiguous(), 0.9, 8)[0] > 1e-3
        ).any()
        assert (d - longer).abs().max() <= 1e-3
        # feasible points of the intersection: t * (a converged projection of another point)
        dist = (z - longer).flatten(1).norm(dim=1)
        for _ in range(3):
            other = z + 0.3 * torch.randn(z.shape, generator=rng, dtype=z.dtype)
            f = ops.ssim_window_ball_project_(other, x, 0.9, window=8, overlap=True, iters=800)
            f.mul_(torch.rand((2, 1, 1, 1), generator=rng, dtype=z.dtype))
            assert (dist <= (z - f).flatten(1).norm(dim=1) + 1e-6).all()


def test_window_ball_then_box(rng):
    x = torch.rand((2, 3, 16, 16), generator=rng)
    d = ops.ssim_window_ball_project_(torch.randn((2, 3, 16, 16), generator=rng), x, 0.9)
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()


def test_window_ball_bad_input(rng):
    x, d = _window_inputs(rng)
    with pytest.raises(ValueError, match="`gamma`"):
        ops.ssim_window_ball_project_(d, x, 0.0)
    with pytest.raises(ValueError, match="`window`"):
        ops.ssim_window_ball_project_(d, x, 0.9, window=1)
    with pytest.raises(ValueError, match="`x`"):
        ops.ssim_window_ball_project_(d, x + 1, 0.9)
    with pytest.raises(ValueError, match="`x` has shape"):
        ops.ssim_window_ball_project_(d, x[:1], 0.9)
