"""The CUDA kernels (csrc/cuda/) and their torch glue, run on CPU tensors through the
emulator of csrc/emulation/ (torch.ops.miga_fast_emu): every projection, SSIM and MINE
kernel against the references in float64 and float32 (float16 and bfloat16 for the
projections), on shapes that span several tiles, partial tiles, grid-stride loops and
misaligned pointers; plus the emulator's own checks on kernels with deliberate bugs.
It needs the CUDA headers only (no GPU); on a GPU the same kernels are tested for real by
the 'cuda' backend of the other test files."""

import math

import pytest
import torch

from miga_fast.reference import projection as ref_proj
from miga_fast.reference import ssim as ref_ssim

import _cuda_emulation  # tests/: a plain import, so a broken module fails the run

if _cuda_emulation.cuda_include() is None:  # the only reason to skip: nothing to build against
    pytest.skip("the CUDA headers are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def emu():
    _cuda_emulation.load()  # a build failure fails the tests: the headers are there
    _cuda_emulation.register_python_parts()
    return torch.ops.miga_fast_emu


# ----------------------------------------------------------------- the emulator itself


# 0: a shared memory shift with a barrier; 9: the same through asynchronous copies
# (cp.async) waited for. (7, the opt-in, runs after the bad launches: the opt-in lasts for
# the process, as on a GPU, and would let kind 6 launch.)
@pytest.mark.parametrize("kind", [0, 9])
def test_emulator_runs_a_correct_kernel(emu, kind):
    out = torch.ops.miga_fast_emu_selftest.run(kind)
    assert torch.equal(out, (torch.arange(64) + 1).remainder(64).float())


# 1: without __syncthreads each thread reads its neighbour's slot before the neighbour wrote
# it; 10: cp.async read before __pipeline_wait_prior, the destination still holding the
# poison written when the copy was issued. Either way the poison shows as NaN (all but the
# last thread, which reads thread 0's slot after thread 0 has written it, or waited).
@pytest.mark.parametrize("kind", [1, 10])
def test_emulator_exposes_a_race(emu, kind):
    out = torch.ops.miga_fast_emu_selftest.run(kind)
    assert torch.isnan(out[:-1]).all()


@pytest.mark.parametrize(
    "kind,match",
    [
        (2, "__syncthreads .* reached by 32 threads while 32 had returned"),
        (3, "__syncthreads .* reached by 48 threads while 16 had returned"),
        (4, "warp shuffle reads lane 31, which has exited"),
    ],
)
def test_emulator_reports_divergent_barriers(emu, kind, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.miga_fast_emu_selftest.run(kind)


@pytest.mark.parametrize(
    "kind,match",
    [
        (5, "invalid block size 2048"),
        (6, "65536 bytes exceeds the kernel's limit of 49152"),
        (8, "cudaFuncSetAttribute refused 307200 bytes"),
    ],
)
def test_emulator_reports_bad_launches(emu, kind, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.miga_fast_emu_selftest.run(kind)


def test_emulator_honours_the_shared_memory_opt_in(emu):
    out = torch.ops.miga_fast_emu_selftest.run(7)
    assert torch.equal(out, (torch.arange(64) + 1).remainder(64).float())


@pytest.mark.parametrize(
    "kind,match",
    [
        (11, "1 asynchronous copies never waited for"),
        (12, "not aligned to its size"),
    ],
)
def test_emulator_reports_bad_asynchronous_copies(emu, kind, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.miga_fast_emu_selftest.run(kind)


# ------------------------------------------------------------------------ projection

ACC = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}
# B, n: a grid-stride loop (the emulated GPU has 2 SMs: 32 blocks of 256 threads), a
# sample length that is no multiple of the 16-byte pack, many small samples, and samples
# of several partial sums (one per 16384 elements) in 16-byte packs.
SIZES = [(3, 9001), (2, 64), (70, 301), (1, 1), (2, 40000)]


def _projection_inputs(rng, b, n, dtype, offset):
    base = torch.rand(b * n + offset, generator=rng, dtype=torch.float64)
    x = base.to(dtype)[offset:].view(b, n)  # offset 1: a misaligned data pointer
    d = ((torch.rand(b, n, generator=rng, dtype=torch.float64) - 0.5) * 0.2).to(dtype)
    g = torch.randn(b, n, generator=rng, dtype=torch.float64).to(dtype)
    g[0, : min(n, 5)] = 0
    eps = torch.rand(b, generator=rng, dtype=torch.float64).to(ACC[dtype]) * 0.1
    alpha = torch.rand(b, generator=rng, dtype=torch.float64).to(ACC[dtype]) * 0.05
    return x, d, g, eps, alpha


def _reference(name, d, g, x, eps, alpha, direction, m=None):
    """The plain-PyTorch reference in the kernels' compute dtype, rounded once at the end."""
    acc = ACC[d.dtype]
    d64, g64, x64 = d.to(acc).clone(), g.to(acc), x.to(acc)
    if name == "pgd_step_linf_":
        ref_proj.pgd_step_(d64, g64, x64, eps, alpha, "linf", direction)
    elif name == "pgd_step_linf_image_":  # `d` holds the adversarial image
        ref_proj.pgd_step_linf_image_(d64, g64, x64, eps, alpha, direction)
    elif name == "pgd_step_l2_":
        ref_proj.pgd_step_(d64, g64, x64, eps, alpha, "l2", direction)
    elif name == "project_linf_":
        ref_proj.project_(d64, x64, eps, "linf")
    elif name == "project_l2_":
        ref_proj.project_(d64, x64, eps, "l2")
    else:
        m64 = m.to(acc).clone()
        ref_proj.mi_fgsm_step_(d64, m64, g64, x64, eps, alpha, 0.9, direction)
        return d64.to(d.dtype), m64.to(d.dtype)
    return d64.to(d.dtype), None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name", ["pgd_step_linf_", "pgd_step_linf_image_", "pgd_step_l2_", "project_linf_", "project_l2_", "mi_fgsm_step_"]
)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_projection_kernels_match_reference(emu, rng, dtype, name, offset):
    for b, n in SIZES:
        x, d, g, eps, alpha = _projection_inputs(rng, b, n, dtype, offset)
        if name == "pgd_step_linf_image_":
            d = (x + d).clamp(0, 1)  # the adversarial image
        direction = -1.0 if name in ("pgd_step_l2_", "pgd_step_linf_image_") else 1.0
        m = torch.randn(b, n, generator=rng, dtype=torch.float64).to(dtype) if name == "mi_fgsm_step_" else None
        out = d.clone()
        if name in ("pgd_step_linf_", "pgd_step_linf_image_", "pgd_step_l2_"):
            getattr(emu, name)(out, g, x, eps, alpha, direction)
        elif name.startswith("project"):
            getattr(emu, name)(out, x, eps)
        else:
            mom = m.clone()
            emu.mi_fgsm_step_(out, mom, g, x, eps, alpha, 0.9, direction)
        exp_d, exp_m = _reference(name, d, g, x, eps, alpha, direction, m)
        tol = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(out, exp_d, rtol=tol, atol=tol, msg=lambda s: f"{name} B={b} n={n}: {s}")
        if m is not None:
            torch.testing.assert_close(mom, exp_m, rtol=tol, atol=tol)
        if dtype in (torch.float32, torch.float64) and name in (
            "pgd_step_linf_",
            "pgd_step_linf_image_",
            "project_linf_",
        ):
            assert torch.equal(out, exp_d), "the l-inf kernels are bit-identical to the reference in float32"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_reductions_give_the_same_bits_packed_or_not(emu, rng, dtype):
    """The reductions take 16-byte packs on aligned tensors and single elements otherwise,
    in the same order: the l2 and MI-FGSM results are bit-identical either way (and the
    partial count depends on n alone, so on any GPU model)."""
    b, n = 2, 40000  # three partial sums per sample
    x, d, g, eps, alpha = _projection_inputs(rng, b, n, dtype, 0)
    x_off = torch.empty(b * n + 1, dtype=dtype)[1:].view(b, n)  # the same values, misaligned
    x_off.copy_(x)
    m = torch.randn(b, n, generator=rng, dtype=torch.float64).to(dtype)
    results = []
    for xx in (x, x_off):
        out, mom = d.clone(), m.clone()
        emu.pgd_step_l2_(out, g, xx, eps, alpha, 1.0)
        out2 = d.clone()
        emu.mi_fgsm_step_(out2, mom, g, xx, eps, alpha, 0.9, 1.0)
        results.append((out, out2, mom))
    for a, c in zip(*results):
        assert torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never(emu, rng, dtype):
    """Hardening item 1 on the CUDA kernels: tiny, huge, zero and mixed gradients give a
    finite step inside the ball and the box, equal to the reference's."""
    from test_hardening import check_extreme_l2, check_extreme_mi_fgsm, extreme_gradients

    acc = ACC[dtype]
    g = extreme_gradients(dtype, rng)

    def l2(d, gg, x, e, a):
        emu.pgd_step_l2_(d, gg, x, torch.tensor([e], dtype=acc), torch.tensor([a], dtype=acc), 1.0)

    def mi(d, m, gg, x, e, a):
        emu.mi_fgsm_step_(d, m, gg, x, torch.tensor([e], dtype=acc), torch.tensor([a], dtype=acc), 1.0, 1.0)

    for step, check, reference in (
        (l2, check_extreme_l2, lambda d, gg, x, e, a: ref_proj.pgd_step_(d, gg, x, e, a, "l2")),
        (mi, check_extreme_mi_fgsm, ref_proj.mi_fgsm_step_),
    ):
        rng.manual_seed(3)
        expected = check(reference, g, rng)
        rng.manual_seed(3)
        torch.testing.assert_close(check(step, g, rng), expected, rtol=1e-5, atol=1e-7)
    d = torch.randn(2, 50, generator=rng, dtype=torch.float64).to(dtype) * (1e30 if dtype == torch.float32 else 1e300)
    emu.project_l2_(d, torch.full_like(d, 0.5), torch.tensor([0.2], dtype=acc))
    torch.testing.assert_close(d.double().norm(dim=1), torch.full((2,), 0.2, dtype=torch.float64))


def test_projection_opcheck(emu, rng):
    x, d, g, eps, alpha = _projection_inputs(rng, 2, 300, torch.float32, 0)
    torch.library.opcheck(emu.pgd_step_l2_, (d, g, x, eps, alpha, 1.0))
    torch.library.opcheck(emu.pgd_step_linf_, (d, g, x, eps, alpha, 1.0))
    torch.library.opcheck(emu.pgd_step_linf_image_, ((x + d).clamp(0, 1), g, x, eps, alpha, -1.0))
    torch.library.opcheck(emu.mi_fgsm_step_, (d, torch.zeros_like(d), g, x, eps, alpha, 1.0, 1.0))


# ------------------------------------------------------------------------------ SSIM

# several fused tiles (32 x 32 in float32, 16 x 16 in float64), partial tiles, images
# smaller than the window (same padding), 1 to 3 channels
SSIM_SHAPES = [(2, 3, 23, 37), (1, 1, 11, 11), (3, 1, 40, 70), (1, 3, 5, 7), (2, 2, 16, 33), (1, 1, 66, 35)]


def _pair(rng, shape, dtype):
    x = torch.rand(shape, generator=rng, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("padding", ["valid", "same"])
# 11 and 7 taps: the kernels compiled for them; 9: the run-time window length
@pytest.mark.parametrize("win_size,win_sigma", [(11, 1.5), (7, 1.0), (9, 1.2)])
@pytest.mark.parametrize("cs_only", [False, True])
def test_ssim_kernels_match_reference(emu, rng, dtype, padding, win_size, win_sigma, cs_only):
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for shape in SSIM_SHAPES:
        if padding == "valid" and min(shape[2:]) < win_size:
            continue
        x, y = _pair(rng, shape, dtype)
        win = ref_ssim.gaussian_window(win_size, win_sigma, dtype)
        args = (win, 2.0, 0.01, 0.03, padding == "same", cs_only)
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        expected = ref_ssim.ssim(xr, yr, 2.0, win_size, win_sigma, padding=padding, cs_only=cs_only)
        ex_gx, ex_gy = torch.autograd.grad(expected.sum(), (xr, yr))
        value = emu.ssim(x, y, *args)
        value2, gx, gy = emu.ssim_value_and_grad(x, y, *args)
        torch.testing.assert_close(value, expected.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(value2, expected.detach(), rtol=tol, atol=tol)
        scale = ex_gx.abs().max().item()
        torch.testing.assert_close(gx, ex_gx, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=tol * scale)
        torch.testing.assert_close(gy, ex_gy, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=tol * scale)


def test_ssim_kernels_on_real_images(emu):
    """Photo patches (scikit-image) against a JPEG-like blocky copy of themselves."""
    from miga_fast import data

    x = data.load_natural_patches("test", size=64)[0][::7][:6].double()
    y = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), scale_factor=4.0)
    win = ref_ssim.gaussian_window(11, 1.5, torch.float64)
    for same in (False, True):
        value, gx, _ = emu.ssim_value_and_grad(x, y, win, 1.0, 0.01, 0.03, same)
        xr = x.clone().requires_grad_()
        expected = ref_ssim.ssim(xr, y, padding="same" if same else "valid")
        torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, torch.autograd.grad(expected.sum(), xr)[0], rtol=1e-9, atol=1e-14)


def test_ssim_window_too_large_for_shared_memory(emu, rng):
    """A 41-tap window in float64 needs 362 KB per block of the fused kernel, dynamic plus
    static (the emulated device is an H100: 227 KiB); a 21-tap one fits once the kernel
    opts in above 48 KiB."""
    x, y = _pair(rng, (1, 2, 60, 50), torch.float64)
    with pytest.raises(RuntimeError, match="needs 362560 bytes of shared memory per block"):  # 64 static
        emu.ssim_value_and_grad(x, y, ref_ssim.gaussian_window(41, 6.0, torch.float64), 1.0, 0.01, 0.03, False)
    win = ref_ssim.gaussian_window(21, 3.0, torch.float64)
    value, gx, _ = emu.ssim_value_and_grad(x, y, win, 1.0, 0.01, 0.03, True)
    xr = x.clone().requires_grad_()
    expected = ref_ssim.ssim(xr, y, 1.0, 21, 3.0, padding="same")
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, torch.autograd.grad(expected.sum(), xr)[0], rtol=1e-9, atol=1e-14)


def test_ssim_opcheck_and_gradcheck(emu, rng):
    """opcheck (schema, fake kernel, autograd registration, AOT dispatch) and float64
    gradcheck of the fused value-and-gradient kernel, through the emulated op."""
    x, y = _pair(rng, (2, 3, 20, 21), torch.float64)
    win = ref_ssim.gaussian_window(11, 1.5, torch.float64)
    for same, cs_only in ((False, False), (True, False), (False, True)):
        args = (x.clone().requires_grad_(), y.clone().requires_grad_(), win, 1.0, 0.01, 0.03, same, cs_only)
        torch.library.opcheck(emu.ssim_value_and_grad, args)
        torch.library.opcheck(emu.ssim, (x, y, win, 1.0, 0.01, 0.03, same, cs_only))
    a, b = _pair(rng, (2, 2, 13, 12), torch.float64)
    for same, cs_only in ((False, False), (True, False), (True, True)):
        assert torch.autograd.gradcheck(
            lambda p, q: emu.ssim_value_and_grad(p, q, win, 1.0, 0.01, 0.03, same, cs_only)[0],
            (a.clone().requires_grad_(), b.clone().requires_grad_()),
        )


def test_ssim_second_derivative_is_never_silently_zero(emu, rng):
    """Hardening item 11 through the CUDA op's autograd: a double backward is exact."""
    a, b = _pair(rng, (1, 2, 9, 10), torch.float64)
    win = ref_ssim.gaussian_window(7, 1.5, torch.float64)
    for same in (False, True):
        assert torch.autograd.gradgradcheck(
            lambda p: emu.ssim_value_and_grad(p, b, win, 1.0, 0.01, 0.03, same)[0], (a.clone().requires_grad_(),)
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ssim_ball_scale_matches_cpu_kernel_and_holds(emu, rng, dtype, padding):
    """Same moments, same candidate grid: the CUDA kernels choose the C++ kernel's scale
    (one grid step apart at most, where a sum sits on tau), and the constraint holds."""
    win = ref_ssim.gaussian_window(11, 1.5, torch.float64)
    for shape in [(3, 3, 23, 37), (2, 1, 40, 70), (1, 2, 9, 12)]:
        if padding == "valid" and min(shape[2:]) < 11:
            continue
        x = torch.rand(shape, generator=rng, dtype=torch.float64)
        delta = (torch.rand(shape, generator=rng, dtype=torch.float64) - x) * 0.6
        tau = torch.rand(shape[0], generator=rng, dtype=torch.float64) * 0.3 + 0.6
        x, delta = x.to(dtype), delta.to(dtype)
        args = (win, tau, 1.0, 0.01, 0.03, padding == "same", 16, 4)
        got = emu.ssim_ball_scale(delta, x, *args)
        want = torch.ops.miga_fast.ssim_ball_scale(delta, x, *args)
        assert got.dtype == dtype
        assert (got.double() - want.double()).abs().max() <= 15.0**-3 + 1e-12
        x64, d64 = x.double(), delta.double()
        reached = ref_ssim.ssim(x64, x64 + got.double().view(-1, 1, 1, 1) * d64, padding=padding)
        assert (reached >= tau - 1e-6).all()


def test_ssim_cpu_and_cuda_kernels_share_the_element_math(emu, rng):
    """common/ssim_math.h is the one definition of the per-position SSIM, its partials and
    the ball's SSIM(x + t delta): in float64 the C++ and the CUDA kernels agree to the
    rounding of their (differently ordered) sums, 1e-14, and the ball search picks the very
    same scales bit for bit."""
    win = ref_ssim.gaussian_window(11, 1.5, torch.float64)
    for shape in [(2, 3, 37, 41), (1, 1, 64, 64)]:
        x = torch.rand(shape, generator=rng, dtype=torch.float64)
        y = (x + 0.05 * torch.randn(shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
        for same in (False, True):
            args = (win, 1.0, 0.01, 0.03, same)
            cpu = torch.ops.miga_fast.ssim_value_and_grad(x, y, *args)
            cuda = emu.ssim_value_and_grad(x, y, *args)
            for a, b in zip(cpu, cuda):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)
            tau = torch.full((shape[0],), 0.9, dtype=torch.float64)
            ball = (win, tau, 1.0, 0.01, 0.03, same, 16, 4)
            got = emu.ssim_ball_scale(y - x, x, *ball)
            assert torch.equal(got, torch.ops.miga_fast.ssim_ball_scale(y - x, x, *ball))


@pytest.mark.parametrize("candidates", [3, 9, 33, 100])
def test_ssim_ball_scale_any_candidate_count(emu, rng, candidates):
    """The candidates go through the sums kernel in register groups of 8: any count runs
    (partial groups included) and matches the C++ kernel; past the cap it is refused."""
    x = torch.rand(2, 3, 16, 16, generator=rng, dtype=torch.float64)
    delta = 0.3 * torch.randn(2, 3, 16, 16, generator=rng, dtype=torch.float64)
    win = ref_ssim.gaussian_window(11, 1.5, torch.float64)
    tau = torch.tensor([0.9, 0.8], dtype=torch.float64)
    args = (win, tau, 1.0, 0.01, 0.03, False, candidates, 3)
    got = emu.ssim_ball_scale(delta, x, *args)
    assert torch.equal(got, torch.ops.miga_fast.ssim_ball_scale(delta, x, *args))
    with pytest.raises(RuntimeError, match="candidates <= 4096"):
        emu.ssim_ball_scale(delta, x, win, tau, 1.0, 0.01, 0.03, False, 4097, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("window", [8, 5, 13, 37])
def test_ssim_window_ball_matches_cpu_kernel(emu, rng, dtype, window):
    """Edge windows smaller than `window`, windows of more than 32 pixels (several per
    lane), per-sample and shared gamma, the box active (x over all of [0, 1])."""
    for shape, per_sample in [((3, 3, 21, 34), True), ((2, 1, 16, 16), False), ((1, 2, 5, 40), True)]:
        x = torch.rand(shape, generator=rng, dtype=torch.float64).to(dtype)
        delta = ((torch.rand(shape, generator=rng, dtype=torch.float64) - 0.5) * 0.4).to(dtype)
        gamma = (torch.rand(shape[0] if per_sample else 1, generator=rng, dtype=torch.float64) * 0.2 + 0.75).to(dtype)
        got, want = delta.clone(), delta.clone()
        emu.ssim_window_ball_project_(got, x, gamma, window, 0.03**2)
        torch.ops.miga_fast.ssim_window_ball_project_(want, x, gamma, window, 0.03**2)
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        again = got.clone()
        emu.ssim_window_ball_project_(again, x, gamma, window, 0.03**2)
        assert torch.equal(again, got)  # idempotent; feasibility and KKT: test_ssim.py on the CPU kernel


def test_ssim_ball_opcheck(emu, rng):
    x = torch.rand(2, 3, 17, 19, generator=rng)
    d = (torch.rand(2, 3, 17, 19, generator=rng) - 0.5) * 0.2
    torch.library.opcheck(emu.ssim_window_ball_project_, (d, x, torch.tensor([0.9]), 8, 0.03**2))
    torch.library.opcheck(
        emu.ssim_ball_scale,
        (
            d,
            x,
            ref_ssim.gaussian_window(11, 1.5, torch.float64),
            torch.full((2,), 0.9, dtype=torch.float64),
            1.0,
            0.01,
            0.03,
            False,
            8,
            3,
        ),
    )


# ------------------------------------------------------------------------------ MINE


def _row_lse_reference(u, v, w, act, exclude_diag):
    f = {0: torch.relu, 1: torch.nn.functional.elu, 2: torch.nn.functional.softplus}[act]
    t = (f(u[:, None, :] + v[None, :, :]) * w).sum(-1)
    if exclude_diag:
        t = t.masked_fill(torch.eye(len(u), dtype=torch.bool), -math.inf)
    return torch.logsumexp(t, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", [0, 1, 2], ids=["relu", "elu", "softplus"])
@pytest.mark.parametrize("exclude_diag", [False, True])
# 130: several 64-row blocks and column tiles, the forward's column splits; H = 400: the
# backward's outputs too large for shared memory (the per-tile global path)
@pytest.mark.parametrize("b,h", [(2, 1), (5, 7), (37, 33), (17, 70), (130, 20), (5, 400)])
def test_mine_kernels_match_reference(emu, rng, dtype, act, exclude_diag, b, h):
    u = torch.randn(b, h, generator=rng, dtype=torch.float64)
    v = torch.randn(b, h, generator=rng, dtype=torch.float64)
    w = torch.randn(h, generator=rng, dtype=torch.float64) / math.sqrt(h)
    g = torch.randn(b, generator=rng, dtype=torch.float64)
    ur, vr, wr = (t.clone().requires_grad_() for t in (u, v, w))
    expected = _row_lse_reference(ur, vr, wr, act, exclude_diag)
    ex_grads = torch.autograd.grad(expected, (ur, vr, wr), g)
    u, v, w, g = (t.to(dtype) for t in (u, v, w, g))
    lse = emu.mine_row_lse(u, v, w, act, exclude_diag)
    grads = emu.mine_row_lse_backward(g, u, v, w, lse, act, exclude_diag)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(lse.double(), expected.detach(), rtol=tol, atol=tol)
    for got, want, name in zip(grads, ex_grads, ("u", "v", "w2")):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=lambda s: f"d/d{name}: {s}")


@pytest.mark.parametrize("act", [0, 1, 2], ids=["relu", "elu", "softplus"])
def test_mine_opcheck_and_gradcheck(emu, rng, act):
    u, v = torch.randn(9, 5, generator=rng, dtype=torch.float64), torch.randn(9, 5, generator=rng, dtype=torch.float64)
    w = torch.randn(5, generator=rng, dtype=torch.float64)
    lse = emu.mine_row_lse(u, v, w, act, True)
    leaves = [t.clone().requires_grad_() for t in (u, v, w)]
    torch.library.opcheck(emu.mine_row_lse, (*leaves, act, True))
    torch.library.opcheck(emu.mine_row_lse_backward, (torch.ones(9, dtype=torch.float64), u, v, w, lse, act, True))
    for exclude_diag in (False, True):
        assert torch.autograd.gradcheck(lambda a, b, c: emu.mine_row_lse(a, b, c, act, exclude_diag), leaves)
        if act:  # relu's second derivative is zero almost everywhere; elu and softplus have one
            assert torch.autograd.gradgradcheck(lambda a, b, c: emu.mine_row_lse(a, b, c, act, exclude_diag), leaves)


# ----------------------------------------------------------------- sampler family

SAMPLER_CASES = [
    # (mode, mask, jump, eta, clip)
    (0, True, False, 0.0, 0.0),  # inpaint_combine
    (1, False, False, 0.0, 0.0),  # resample_forward
    (1, True, False, 0.0, 0.0),  # heterogeneous_noise
    (2, False, False, 0.0, 0.0),  # ddim_step
    (2, False, False, 0.8, 1.0),  # stochastic, clipped
    (2, True, True, 0.5, 1.2),  # the fused stage-1 step
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SAMPLER_CASES)
@pytest.mark.parametrize("shape,offset,channel_mask", [((3, 2, 8, 16), 0, True), ((2, 3, 5, 7), 1, False)])
def test_sampler_kernels_match_reference(emu, rng, dtype, case, shape, offset, channel_mask):
    """Forward and backward against the reference in float64: 16-byte packs (aligned, sizes
    a multiple of the pack) and single elements (a pointer one element off, odd sizes),
    masks of one plane for every channel and one per channel."""
    from miga_fast.reference import sampler as ref_sampler

    mode, has_mask, has_jump, eta, clip = case
    b = shape[0]

    def fresh(s=shape, uniform=False):
        flat = torch.rand if uniform else torch.randn
        t = flat(offset + math.prod(s), generator=rng, dtype=torch.float64)
        return t[offset:].reshape(s).to(dtype)  # storage offset by `offset` elements: misaligned

    x, eps, known, noise, nk, nj = (fresh() for _ in range(6))
    mshape = (b, 1, *shape[2:]) if channel_mask else shape
    mask = (fresh(mshape, uniform=True) > 0.5).to(dtype) if has_mask else None
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    a_from = torch.linspace(0.2, 0.4, b, dtype=compute) if mode == 2 else torch.linspace(0.7, 0.9, b, dtype=compute)
    a_to = torch.linspace(0.5, 0.8, b, dtype=compute) if mode == 2 else torch.linspace(0.3, 0.6, b, dtype=compute)
    a_known = torch.tensor([0.75], dtype=compute)
    a_jump = a_to * 0.5
    args = (
        x,
        eps if mode == 2 else None,
        known if has_mask else None,
        mask,
        noise if mode == 1 or eta > 0 else None,
        nk if has_mask else None,
        nj if has_jump else None,
        a_from,
        a_to,
        a_known,
        a_jump,
        mode,
        eta,
        clip,
    )
    got = emu.sampler_step(*args)
    d = [t.double() if isinstance(t, torch.Tensor) else t for t in args]
    want = ref_sampler.step(*d)
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 4)

    grad = fresh()
    outs = emu.sampler_step_backward(
        grad, x, args[1], mask, a_from, a_to, a_known, a_jump, mode, eta, clip, has_jump, True, mode == 2, has_mask
    )
    leaves = [t.double().requires_grad_(True) for t in (x, eps, known)]
    value = ref_sampler.step(leaves[0], leaves[1] if mode == 2 else None, leaves[2] if has_mask else None, *d[3:])
    wanted = [leaves[0]] + ([leaves[1]] if mode == 2 else []) + ([leaves[2]] if has_mask else [])
    refs = torch.autograd.grad(value, wanted, grad.double())
    assert len(outs) == len(refs)
    for g, w in zip(outs, refs):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol * 4)


def test_sampler_kernels_through_the_public_ops(emu, rng):
    """gradcheck through the emulated kernels with the autograd miga_fast.ops registers."""
    x = torch.randn(2, 2, 4, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(2, 2, 4, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    known = torch.rand(2, 2, 4, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 1, 4, 4, generator=rng) > 0.5).double()
    noises = [torch.randn(2, 2, 4, 4, generator=rng, dtype=torch.float64) for _ in range(3)]
    a_t = torch.tensor([0.3, 0.4], dtype=torch.float64)
    a_p = torch.tensor([0.6, 0.7], dtype=torch.float64)
    one = torch.tensor([0.5], dtype=torch.float64)

    def f(x, eps, known):
        return emu.sampler_step(x, eps, known, mask, *noises, a_t, a_p, a_p, one * 0.4, 2, 0.5, 1.5)

    assert torch.autograd.gradcheck(f, (x, eps, known), eps=1e-6, atol=1e-8)
