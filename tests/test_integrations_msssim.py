"""miga_fast.integrations.pytorch_msssim against pytorch-msssim itself: values and
gradients for every argument (data_range, size_average, win_size, win_sigma, win, K,
nonnegative_ssim, weights), 4-D and 5-D input, the modules, the warning for small
images, the errors; every kernel backend; MS-SSIM one fused kernel call per scale; real
photos. (The peer's own test scripts run against the drop-in in test_peer_suites.py.)"""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import miga_fast
from miga_fast import data, ops
from miga_fast.integrations import pytorch_msssim as ours

from conftest import backend_params

theirs = pytest.importorskip("pytorch_msssim")
theirs_impl = pytest.importorskip("pytorch_msssim.ssim")  # the module (the package's `ssim` is the function)


def _pair(rng, shape, dtype=torch.float64, scale=255.0, noise=0.15):
    x = torch.rand(shape, generator=rng, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=rng, dtype=torch.float64)).clamp(0, 1)
    return (x * scale).to(dtype), (y * scale).to(dtype)


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


def _value_and_grads(fn, x, y, **kw):
    xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
    v = fn(xx, yy, **kw)
    upstream = torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).reshape(v.shape)
    gx, gy = torch.autograd.grad((v * upstream).sum(), (xx, yy))
    return v.detach(), gx, gy


def _assert_same(fn_name, x, y, dtype, **kw):
    got = _value_and_grads(getattr(ours, fn_name), x, y, **kw)
    want = _value_and_grads(getattr(theirs, fn_name), x, y, **kw)
    torch.testing.assert_close(got[0], want[0], **_tol(dtype))
    for g, w in zip(got[1:], want[1:]):
        # float32: the variances E[x^2] - mu^2 cancel, so summation order shows at ~1e-5 of the largest
        scale = w.abs().max().item() or 1.0
        atol = (1e-4 if dtype == torch.float32 else 1e-9) * scale
        torch.testing.assert_close(g, w, rtol=1e-4 if dtype == torch.float32 else 1e-8, atol=atol)


SSIM_CASES = [
    {},
    {"size_average": False},
    {"data_range": 255.0, "win_size": 7, "win_sigma": 1.0},
    {"K": (0.05, 0.4), "nonnegative_ssim": True},
    {"win_size": 3, "win_sigma": 0.8, "size_average": False},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(SSIM_CASES)))
def test_ssim_equals_pytorch_msssim(case, dtype, rng):
    kw = SSIM_CASES[case]
    for shape in [(2, 3, 32, 29), (3, 1, 11, 40)]:
        x, y = _pair(rng, shape, dtype)
        _assert_same("ssim", x, y, dtype, **kw)


def test_ssim_nonnegative_clips_each_channel(rng):
    """A channel with negative SSIM (an inverted copy) is zeroed before the channel mean."""
    x, _ = _pair(rng, (2, 3, 24, 24))
    y = x.clone()
    y[:, 1] = 255 - y[:, 1]
    for nonneg in (False, True):
        got = ours.ssim(x, y, size_average=False, nonnegative_ssim=nonneg)
        torch.testing.assert_close(got, theirs.ssim(x, y, size_average=False, nonnegative_ssim=nonneg))
    assert ours.ssim(x, y, nonnegative_ssim=True) > ours.ssim(x, y)


def test_ssim_with_a_given_window_and_the_modules(rng):
    x, y = _pair(rng, (2, 3, 30, 30), torch.float64, scale=1.0)
    win = theirs_impl._fspecial_gauss_1d(5, 0.9).repeat(3, 1, 1, 1)
    torch.testing.assert_close(ours.ssim(x, y, data_range=1, win=win), theirs.ssim(x, y, data_range=1, win=win))
    # channels with different windows run in plain PyTorch, with the same result
    mixed = torch.cat([win[:1], theirs_impl._fspecial_gauss_1d(5, 2.0)[None], win[:1]])
    torch.testing.assert_close(ours.ssim(x, y, data_range=1, win=mixed), theirs.ssim(x, y, data_range=1, win=mixed))
    for kw in ({}, {"size_average": False, "win_size": 7, "K": (0.02, 0.05)}, {"nonnegative_ssim": True}):
        mine, peer = ours.SSIM(data_range=1, channel=3, **kw), theirs.SSIM(data_range=1, channel=3, **kw)
        torch.testing.assert_close(mine(x, y), peer(x, y))
        assert mine.win.shape == peer.win.shape and torch.equal(mine.win, peer.win)
    X, Y = _pair(rng, (1, 2, 170, 165), torch.float64, scale=1.0)
    mine, peer = ours.MS_SSIM(data_range=1, channel=2), theirs.MS_SSIM(data_range=1, channel=2)
    torch.testing.assert_close(mine(X, Y), peer(X, Y))
    assert mine.weights is None and mine.win_size == peer.win_size == 11


def test_five_d_input_and_squeezed_dims(rng):
    x, y = _pair(rng, (2, 2, 13, 16, 15), torch.float64, scale=1.0)
    _assert_same("ssim", x, y, torch.float64, data_range=1)
    _assert_same("ssim", x, y, torch.float64, data_range=1, size_average=False, win_size=5)
    m3 = (ours.SSIM(data_range=1, channel=2, spatial_dims=3), theirs.SSIM(data_range=1, channel=2, spatial_dims=3))
    torch.testing.assert_close(m3[0](x, y), m3[1](x, y))
    # [N, C, 1, H, W] is a 4-D image: the fused path, pytorch-msssim's value
    x4, y4 = x[:, :, :1], y[:, :, :1]
    torch.testing.assert_close(ours.ssim(x4, y4, data_range=1), theirs.ssim(x4, y4, data_range=1))
    X, Y = _pair(rng, (1, 1, 16, 40, 36), torch.float64, scale=1.0)  # MS-SSIM in 3-D (3-tap window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # T reaches 2, then 1: shorter than the window (both warn)
        _assert_same("ms_ssim", X, Y, torch.float64, data_range=1, win_size=3)


def test_small_images_warn_and_skip_the_blur_on_that_side(rng):
    x, y = _pair(rng, (2, 1, 8, 30), torch.float64)
    with pytest.warns(UserWarning, match="Skipping Gaussian Smoothing at dimension 2\\+0"):
        got = ours.ssim(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(got, theirs.ssim(x, y))
        _assert_same("ssim", x, y, torch.float64)
        x, y = _pair(rng, (1, 2, 5, 6), torch.float64)  # both sides: no blur at all
        _assert_same("ssim", x, y, torch.float64)


MS_CASES = [
    {"data_range": 1.0, "win_size": 3, "win_sigma": 0.8},
    {"data_range": 1.0, "win_size": 3, "size_average": False, "weights": [0.2, 0.3, 0.5]},
    {"data_range": 1.0, "win_size": 5, "win_sigma": 1.0, "K": (0.02, 0.05), "size_average": False},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(MS_CASES)))
def test_ms_ssim_equals_pytorch_msssim(case, dtype, rng):
    kw = MS_CASES[case]
    for shape in [(2, 3, 80, 70), (1, 1, 67, 75)]:  # odd sides: the padded average pool
        x, y = _pair(rng, shape, dtype, scale=1.0)
        _assert_same("ms_ssim", x, y, dtype, **kw)


def test_ms_ssim_defaults_on_real_photos():
    """Two bundled photos (scikit-image), each against a noisy and a blurred copy of itself,
    with pytorch-msssim's defaults (data_range 255, 11-tap window, five scales)."""
    x = torch.stack([data._read_photo(n)[:, :200, :200] for n in ("astronaut.png", "coffee.png")]).double() * 255
    noisy = (x + 20 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)).clamp(0, 255)
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    for y in (noisy, blurred):
        _assert_same("ms_ssim", x, y, torch.float64, size_average=False)
        _assert_same("ssim", x, y, torch.float64, size_average=False)
    assert (ours.ms_ssim(x, noisy, size_average=False) < 0.99).all()


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not miga_fast.backends()["cpu"]["built"], reason="C++ kernels not built")
def test_ms_ssim_is_one_fused_kernel_call_per_scale(rng):
    x, y = _pair(rng, (2, 3, 100, 90), torch.float32, scale=1.0)
    x.requires_grad_()
    with miga_fast.set_backend("cpu"):
        for weights, grad in ((None, False), ([0.5, 0.5], True)):
            with _CountOps() as mode, torch.set_grad_enabled(grad):
                ours.ms_ssim(x, y, data_range=1, win_size=5, weights=weights)
            kernel = "miga_fast.ssim_value_and_grad" if grad else "miga_fast.ssim"
            assert mode.names.count(kernel) == len(weights or ours.DEFAULT_WEIGHTS)
            assert not any("conv" in n for n in mode.names)  # no blur outside the kernels


@pytest.mark.parametrize("backend,device", backend_params())
def test_every_kernel_backend_matches_pytorch_msssim(backend, device, rng):
    small = backend == "triton" and device == "cpu"  # the Triton interpreter: small images
    x, y = _pair(rng, (1, 2, 36, 34) if small else (2, 3, 70, 66), torch.float64, scale=1.0)
    x, y = x.to(device), y.to(device)
    with miga_fast.set_backend(backend):
        for fn, kw in (("ssim", {"win_size": 7}), ("ms_ssim", {"win_size": 3, "weights": [0.3, 0.3, 0.4]})):
            got = _value_and_grads(getattr(ours, fn), x, y, data_range=1, size_average=False, **kw)
            want = _value_and_grads(getattr(theirs, fn), x, y, data_range=1, size_average=False, **kw)
            tol = dict(rtol=1e-9, atol=1e-11) if backend == "cpu" else dict(rtol=1e-6, atol=1e-8)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **tol)


def test_ops_ms_ssim_and_the_contrast_structure_term(rng):
    x, y = _pair(rng, (2, 3, 40, 44), torch.float64, scale=1.0)
    torch.testing.assert_close(
        ops.ms_ssim(x, y, win_size=3), theirs.ms_ssim(x, y, data_range=1, win_size=3, size_average=False)
    )
    per_channel = ops.ssim_per_channel(x, y)
    torch.testing.assert_close(per_channel.mean(1), ops.ssim(x, y))
    cs = ops.ssim_per_channel(x, y, cs_only=True)
    _, cs_theirs = theirs_impl._ssim(x, y, 1.0, theirs_impl._fspecial_gauss_1d(11, 1.5).repeat(3, 1, 1, 1))
    torch.testing.assert_close(cs, cs_theirs)
    xx = x[:1, :1, :14, :13].clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: ops.ssim(t, y[:1, :1, :14, :13], cs_only=True), (xx,))


def test_errors_match_pytorch_msssim(rng):
    x, y = _pair(rng, (1, 3, 40, 40))
    for fn in (ours.ssim, ours.ms_ssim):
        with pytest.raises(ValueError, match="same dimensions"):
            fn(x, y[:, :2])
        with pytest.raises(ValueError, match="4-d or 5-d"):
            fn(x[0], y[0])
        with pytest.raises(ValueError, match="Window size should be odd"):
            fn(x, y, win_size=4)
    with pytest.raises(AssertionError, match="larger than 160"):
        ours.ms_ssim(x, y)
    with pytest.raises(ValueError, match="larger than 32"):  # the same error is a ValueError too
        ours.ms_ssim(x[..., :30, :30], y[..., :30, :30], win_size=3)
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="`X` contains NaN or Inf"):
        ours.ssim(bad, y)
    with pytest.raises(ValueError, match="`X` contains NaN or Inf"):
        ours.ssim(bad[..., :8, :], y[..., :8, :])  # the plain-PyTorch path checks too
    with pytest.raises(TypeError, match="`X`"):
        ours.ssim(x.numpy(), y)
