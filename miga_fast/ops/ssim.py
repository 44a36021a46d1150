"""The SSIM family (docs/algorithms.md §2): SSIM value and map, differentiable in both
inputs, and the SSIM ball.

Backends: the C++ CPU kernel (the value alone, or the value with its gradients from one
pass over the blurred moments when an input requires grad), the CUDA-extension kernel
(one fused value-and-gradient kernel: shared-memory tiles, the halo recomputed, channels
in the block), the Triton kernels (the same math; CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1) and the plain-PyTorch reference. The SSIM ball (ssim_ball_scale) and
the window ball have kernels in every backend too. A second derivative goes through the
reference (exact, not zero). What each backend's kernel takes (dtypes, return_map, the
CUDA ball's candidate count) is in the dispatch tables below (`miga-fast backends`):
naming a backend that cannot run a call is an error that says why.
"""

from __future__ import annotations

import numbers

import torch

from .. import _backend, _extension
from .._validation import (
    check_batch,
    check_choice,
    check_finite,
    check_int,
    check_like,
    check_no_overlap,
    check_scalar,
    check_tensor,
    check_unit_range,
    judge,
    values_checked,
)
from ..reference import ssim as ref
from ._namespaces import ops_for

PADDINGS = ("valid", "same")
CUDA_MAX_CANDIDATES = 4096  # csrc/cuda/ssim.h: kMaxBallCandidates

SSIM = _backend.register_op(
    _backend.Op(
        "ssim",
        "ops.ssim (with its gradient: ssim_value_and_grad)",
        limits=[
            _backend.Limit(
                ("cuda", "triton", "cpu"),
                "return_map=False (the SSIM map comes from the reference)",
                lambda f: not f.get("return_map", False),
            )
        ],
    )
)
BALL = _backend.register_op(
    _backend.Op(
        "ssim_ball_scale",
        "ops.ssim_ball_scale, ops.ssim_ball_project_",
        limits=[
            _backend.Limit(
                ("cuda",),
                f"candidates <= {CUDA_MAX_CANDIDATES}",
                lambda f: f.get("candidates", 16) <= CUDA_MAX_CANDIDATES,
            )
        ],
    )
)
WINDOW_BALL = _backend.register_op(_backend.Op("ssim_window_ball_project_", "ops.ssim_window_ball_project_"))


def _register_autograd(namespace: str) -> None:
    """Autograd of <namespace>::ssim_value_and_grad: it returns d value_b / d x and
    d value_b / d y, so the backward scales them by the upstream gradient of each sample.
    A backward that must itself be differentiable (create_graph=True: Hessian-vector
    products, gradient penalties) recomputes the gradient through the plain-PyTorch
    reference on the same window, so second derivatives are exact rather than zero."""

    def setup_context(ctx, inputs, output):
        x, y, window, data_range, k1, k2, same, *rest = inputs  # rest: cs_only, when given
        ctx.save_for_backward(output[1], output[2], x, y, window)
        ctx.consts = (data_range, k1, k2, same, bool(rest[0]) if rest else False)
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_value, _grad_gx, _grad_gy):
        gx, gy, x, y, window = ctx.saved_tensors
        none = (None,) * (ctx.n_inputs - 2)
        if torch.is_grad_enabled():  # create_graph=True: a differentiable first derivative
            data_range, k1, k2, same, cs_only = ctx.consts
            with torch.enable_grad():
                value = ref.ssim_with_window(
                    x,
                    y,
                    window,
                    (k1 * data_range) ** 2,
                    (k2 * data_range) ** 2,
                    "same" if same else "valid",
                    cs_only=cs_only,
                )
                wanted = [t for t, need in zip((x, y), ctx.needs_input_grad[:2]) if need]
                grads = iter(torch.autograd.grad(value, wanted, grad_value, create_graph=True))
            return (
                next(grads) if ctx.needs_input_grad[0] else None,
                next(grads) if ctx.needs_input_grad[1] else None,
                *none,
            )
        scale = grad_value.reshape(-1, 1, 1, 1)
        return (
            scale * gx if ctx.needs_input_grad[0] else None,
            scale * gy if ctx.needs_input_grad[1] else None,
            *none,
        )

    torch.library.register_autograd(f"{namespace}::ssim_value_and_grad", backward, setup_context=setup_context)


def _register_cpp(namespace: str = "miga_fast") -> None:
    """Fake kernels (torch.compile) and autograd of the compiled SSIM ops in `namespace`
    (torch.ops.miga_fast; the emulated-CUDA test build registers its miga_fast_emu too)."""
    torch.library.register_fake(f"{namespace}::ssim")(lambda x, y, *args: x.new_empty(x.shape[:1]))
    torch.library.register_fake(f"{namespace}::ssim_value_and_grad")(
        lambda x, y, *args: (x.new_empty(x.shape[:1]), torch.empty_like(x), torch.empty_like(y))
    )
    torch.library.register_fake(f"{namespace}::ssim_ball_scale")(lambda delta, x, *args: x.new_empty(x.shape[:1]))
    torch.library.register_fake(f"{namespace}::ssim_window_ball_project_")(lambda *args: None)
    _register_autograd(namespace)


def _ops_for(backend: str):
    return ops_for(backend, "ssim", _register_autograd)


if _extension.load() is not None:
    _register_cpp()


def _check_window(win_size, win_sigma) -> None:
    """win_sigma None: a window given as a tensor (no Gaussian to build)."""
    check_int(win_size, "win_size", 1, odd=True)
    if win_sigma is None:
        return
    check_scalar(win_sigma, "win_sigma")
    if win_sigma <= 0:
        raise ValueError(f"`win_sigma` must be > 0, got {win_sigma}")


def _check_window_tensor(window) -> torch.Tensor:
    """A user's 1-D window: a floating tensor of odd length, finite."""
    check_tensor(window, "window")
    window = window.reshape(-1) if window.dim() > 1 and window.numel() == window.shape[-1] else window
    if window.dim() != 1 or window.numel() % 2 == 0:
        raise ValueError(f"`window` must be a 1-D tensor of odd length, got shape {tuple(window.shape)}")
    check_finite(window, "window")
    return window


def _check_k(K) -> tuple[float, float]:
    if (
        not isinstance(K, (tuple, list))
        or len(K) != 2
        or not all(isinstance(k, numbers.Real) and not isinstance(k, bool) for k in K)
    ):
        raise TypeError(f"`K` must be a pair of numbers (K1, K2), got {K!r}")
    return check_scalar(K[0], "K[0]"), check_scalar(K[1], "K[1]")


def _check_ssim_args(x, x_name, y, y_name, data_range, win_size, win_sigma, K, padding) -> tuple[float, float]:
    """The checks every op of the family shares; returns K as floats."""
    check_tensor(x, x_name)
    check_batch(x, x_name)
    check_like(x, x_name, y, y_name)
    if x.dim() != 4:
        raise ValueError(f"`{x_name}` must be [B, C, H, W], got shape {tuple(x.shape)}")
    data_range = check_scalar(data_range, "data_range")
    if data_range <= 0:
        raise ValueError(f"`data_range` must be > 0, got {data_range}")
    _check_window(win_size, win_sigma)
    K = _check_k(K)
    check_choice(padding, "padding", PADDINGS)
    if padding == "valid" and min(x.shape[-2:]) < win_size:
        raise ValueError(
            f"`{x_name}` is {x.shape[-2]}x{x.shape[-1]}, smaller than the {win_size}x{win_size} window: "
            "use padding='same' or a smaller win_size"
        )
    check_finite(x, x_name)
    check_finite(y, y_name)
    return K


def _prepare(x, x_name, y, y_name, data_range, win_size, win_sigma, K, padding, window):
    """Every check of ssim, ssim_per_channel and ms_ssim, once per call: returns K as
    floats and the window (the Gaussian, or the caller's) in x's dtype and device."""
    if window is not None:
        window = _check_window_tensor(window)
        win_size, win_sigma = window.numel(), None
    K = _check_ssim_args(x, x_name, y, y_name, data_range, win_size, win_sigma, K, padding)
    if window is None:
        return K, ref.gaussian_window(win_size, win_sigma, x.dtype, x.device)
    return K, window.to(device=x.device, dtype=x.dtype)


def _ssim_checked(x, y, window, data_range, K, padding="valid", return_map=False, cs_only=False):
    """SSIM on checked arguments: the backend's kernel (or the reference)."""
    backend = SSIM.select(x.device, x.dtype, return_map=bool(return_map))
    if backend == "reference":
        c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
        return ref.ssim_with_window(x, y, window, c1, c2, padding, return_map, bool(cs_only))
    if padding == "same":
        window = ref.truncate_window(window, *x.shape[-2:])
    args = (x, y, window, float(data_range), K[0], K[1], padding == "same", bool(cs_only))
    ops_ = _ops_for(backend)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return ops_.ssim_value_and_grad(*args)[0]
    return ops_.ssim(*args)


def ssim(
    x,
    y,
    data_range=1.0,
    win_size=11,
    win_sigma=1.5,
    K=(0.01, 0.03),
    padding="valid",
    return_map=False,
    cs_only=False,
    window=None,
):
    """Per-sample SSIM of images x, y [B, C, H, W] -> [B] (and the SSIM map
    [B, C, H', W'] with return_map=True). Gaussian window `win_size` x `win_size` of
    std `win_sigma`; C1 = (K1 * data_range)^2, C2 = (K2 * data_range)^2; the map averaged
    over channels and pixels. padding="valid" (the default) equals
    pytorch_msssim.ssim(x, y, data_range=1, size_average=False); "same" zero-pads
    (fused-ssim's convention). cs_only=True gives the contrast-structure term alone (the
    SSIM map without its luminance factor), the term MS-SSIM takes at its finer scales.
    `window`: a 1-D window of odd length to use instead of the Gaussian (win_size and
    win_sigma are then ignored). Differentiable in x and y."""
    K, window = _prepare(x, "x", y, "y", data_range, win_size, win_sigma, K, padding, window)
    return _ssim_checked(x, y, window, data_range, K, padding, return_map, cs_only)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003


def ms_ssim_min_side(win_size: int, levels: int) -> int:
    """MS-SSIM halves the image levels - 1 times and blurs each scale with a "valid"
    window: the shorter side must exceed (win_size - 1) * 2^(levels - 1)."""
    return (win_size - 1) * 2 ** (levels - 1)


def ssim_per_channel(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), cs_only=False, window=None):
    """SSIM (or with cs_only its contrast-structure term) of every channel: [B, C]. The
    planes are viewed as a batch of one-channel images [B * C, 1, H, W], so one fused
    kernel call serves all of them (no copy for contiguous input)."""
    K, window = _prepare(x, "x", y, "y", data_range, win_size, win_sigma, K, "valid", window)
    return _planes_checked(x, y, window, data_range, K, cs_only)


def _planes_checked(x, y, window, data_range, K, cs_only):
    b, c = x.shape[:2]
    planes = (t.reshape(b * c, 1, *t.shape[2:]) for t in (x, y))
    return _ssim_checked(*planes, window, data_range, K, cs_only=cs_only).reshape(b, c)


def check_weights(weights) -> tuple:
    """MS-SSIM's weights, one per scale (None: the five of Wang et al.)."""
    weights = MS_SSIM_WEIGHTS if weights is None else tuple(weights)
    if not weights or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise TypeError(f"`weights` must be a non-empty sequence of numbers, got {weights!r}")
    return weights


def ms_ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), weights=None, window=None):
    """Per-sample multi-scale SSIM of x, y [B, C, H, W] -> [B]: per channel the product
    over scales j of relu(cs_j)^w_j (relu(SSIM)^w_J at the coarsest), each scale the 2x2
    average pool of the one before (an odd side zero-padded by one, the zeros counted in
    the mean), then the mean over channels; equal to pytorch_msssim.ms_ssim(x, y,
    size_average=False). Each scale is one fused kernel call over all planes (the
    contrast-structure term at the finer scales, SSIM at the coarsest); differentiable.
    weights: one per scale (default the five of Wang et al.). The arguments are checked
    once, not at every scale (the pooled images of finite images are finite)."""
    weights = check_weights(weights)
    K, window = _prepare(x, "x", y, "y", data_range, win_size, win_sigma, K, "valid", window)
    need = ms_ssim_min_side(window.numel(), len(weights))
    if min(x.shape[-2:]) <= need:
        raise ValueError(
            f"`x` is {x.shape[-2]}x{x.shape[-1]}: MS-SSIM over {len(weights)} scales with a {window.numel()}-tap "
            f"window needs both sides larger than {need}"
        )
    return _multi_scale_checked(x, y, window, data_range, K, weights)


def _multi_scale_checked(x, y, window, data_range, K, weights):
    terms = []
    for level in range(len(weights)):
        last = level == len(weights) - 1
        terms.append(torch.relu(_planes_checked(x, y, window, data_range, K, cs_only=not last)))
        if not last:
            padding = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=padding)
    w = torch.tensor(weights, dtype=terms[0].dtype, device=terms[0].device).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** w, dim=0).mean(1)


# The window ball's radius grows as ((1 - gamma) / gamma)^2: below this floor it overflows
# float32 (and constrains nothing a user could want), so smaller gamma is rejected.
GAMMA_MIN = 1e-6


def _check_tau(tau, like: torch.Tensor, name: str = "tau", minimum: float = 0.0):
    """tau (or gamma) in (minimum, 1] (minimum > 0: [minimum, 1])."""
    lo = f"[{minimum:g}, 1]" if minimum > 0 else "(0, 1]"
    if isinstance(tau, torch.Tensor):
        if tau.dim() > 1 or (tau.dim() == 1 and tau.shape[0] not in (1, like.shape[0])):
            raise ValueError(f"`{name}` must be a float or a [{like.shape[0]}] tensor, got shape {tuple(tau.shape)}")
        if values_checked():
            ok = ((tau > 0) & (tau >= minimum) & (tau <= 1)).all().reshape(1)
            judge(ok, lambda v: None if v[0] else f"`{name}` must lie in {lo}")
        return tau.to(like.device)
    tau = check_scalar(tau, name, minimum=None)
    if not (0 < tau <= 1 and tau >= minimum):
        raise ValueError(f"`{name}` must lie in {lo}, got {tau}")
    return tau


def ssim_ball_scale(
    delta, x, tau, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), padding="valid", candidates=16, rounds=5
):
    """Per sample [B], the largest t in [0, 1] with SSIM(x, x + t*delta) >= tau, to
    (candidates - 1) ** -rounds (default about 1e-6) in t. The moments of SSIM(x, x + t
    delta) are polynomials in t, so one blur pass over (x, delta) serves every candidate.
    tau: a float or a [B] tensor in (0, 1]. Not differentiable (a projection)."""
    K = _check_ssim_args(delta, "delta", x, "x", data_range, win_size, win_sigma, K, padding)
    tau = _check_tau(tau, delta)
    for name, v in (("candidates", candidates), ("rounds", rounds)):
        check_int(v, name, 2 if name == "candidates" else 1)
    backend = BALL.select(x.device, x.dtype, candidates=candidates)
    with torch.no_grad():
        if backend == "reference":
            return ref.ssim_ball_scale(
                delta, x, tau, float(data_range), win_size, win_sigma, K, padding, candidates, rounds
            )
        tau_t = torch.as_tensor(tau, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        window = ref.gaussian_window(win_size, win_sigma, torch.float64, x.device)
        if padding == "same":
            window = ref.truncate_window(window, *x.shape[-2:])
        return _ops_for(backend).ssim_ball_scale(
            delta.detach(),
            x.detach(),
            window,
            tau_t.contiguous(),
            float(data_range),
            K[0],
            K[1],
            padding == "same",
            candidates,
            rounds,
        )


def ssim_ball_project_(delta, x, tau, **kwargs):
    """delta <- t * delta with t = ssim_ball_scale(delta, x, tau, **kwargs): the largest
    step back along delta into the SSIM ball {x' : SSIM(x, x') >= tau}. When x and x + delta
    lie in the box [0, 1], so does x + t * delta. Returns delta."""
    check_tensor(delta, "delta")
    if isinstance(x, torch.Tensor):
        check_no_overlap({"delta": delta}, {"x": x})
    t = ssim_ball_scale(delta, x, tau, **kwargs)
    with torch.no_grad():
        delta.mul_(t.reshape(-1, *([1] * (delta.dim() - 1))))
    return delta


def ssim_window_ball_project_(delta, x, gamma, window=8, data_range=1.0, K=(0.01, 0.03), overlap=False, iters=100):
    """The convex SSIM set (docs/algorithms.md §2: the perceptual-SSIM paper's "mathematically
    amenable variant", our reconstruction), in place: delta <- its exact Euclidean projection
    onto F = {d : per window, S(u, u + P d) >= gamma, and 0 <= x + d <= 1}, S the zero-mean
    structural SSIM of `window` x `window` non-overlapping windows of each channel (edge
    windows smaller), P d the window's zero-mean part of d (its mean is free). F is convex;
    per window the projection is a one-dimensional search on the multiplier (exact to
    rounding, idempotent). gamma: a float or [B] tensor in [1e-6, 1].

    overlap=True: F is intersected with the same windows on the grid shifted by window // 2
    in both axes (windows that overlap the first grid's; the strips before the shift belong
    to the first grid only), and the projection onto the intersection is Dykstra's
    alternation of the two exact projections, `iters` rounds, ending on the first grid (so
    its windows and the box hold exactly; the shifted grid's to the residual that
    docs/ops.md reports). Returns delta."""
    check_tensor(delta, "delta")
    check_batch(delta, "delta")
    check_like(delta, "delta", x, "x")
    if x.dim() != 4:
        raise ValueError(f"`x` must be [B, C, H, W], got shape {tuple(x.shape)}")
    gamma = _check_tau(gamma, delta, name="gamma", minimum=GAMMA_MIN)
    check_int(window, "window", 2, 32768)
    data_range = check_scalar(data_range, "data_range")
    K = _check_k(K)
    if not isinstance(overlap, bool):
        raise TypeError(f"`overlap` must be a bool, got {type(overlap).__name__}")
    check_int(iters, "iters", 1)
    check_no_overlap({"delta": delta}, {"x": x})
    check_unit_range(x, "x")
    check_finite(delta, "delta")
    backend = WINDOW_BALL.select(x.device, x.dtype)
    g = torch.as_tensor(gamma, dtype=x.dtype, device=x.device).reshape(-1).contiguous()

    def project(d, xx):  # d: contiguous, projected in place on the non-overlapping grid
        if backend == "reference":
            ref.window_ball_project_(d, xx, g, window, data_range, K[1])
        else:
            _ops_for(backend).ssim_window_ball_project_(d, xx, g, window, (K[1] * data_range) ** 2)

    with torch.no_grad():
        target = delta if delta.is_contiguous() else delta.contiguous()
        if not overlap:
            project(target, x.contiguous())
        else:
            s = window // 2
            x0, xs = x.contiguous(), x[..., s:, s:].contiguous()
            p0, ps = torch.zeros_like(target), torch.zeros_like(target)  # Dykstra's corrections
            for _ in range(iters):
                y = target + ps
                shifted = y[..., s:, s:].contiguous()
                project(shifted, xs)
                ps = y.clone()
                ps[..., s:, s:] -= shifted
                ps[..., :s, :] = 0
                ps[..., :, :s] = 0
                y[..., s:, s:] = shifted
                z = y + p0
                target.copy_(z)
                project(target, x0)
                p0 = z - target
        if target is not delta:
            delta.copy_(target)
        return delta
