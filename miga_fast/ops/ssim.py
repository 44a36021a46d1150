"""The SSIM family (ALGORITHMS.md section 2): SSIM value and map, differentiable in both
inputs.

This slice runs the plain-PyTorch reference on every device (autograd through it); the
fused value+gradient kernels (CPU, CUDA, Triton) and the SSIM-ball projections come next
(issue 4). Asking for a compiled backend by name is an error until they exist.
"""
from __future__ import annotations

import numbers

import torch

from .. import _backend
from .._validation import check_batch, check_choice, check_finite, check_like, check_scalar, check_tensor
from ..reference import ssim as ref

PADDINGS = ("valid", "same")
KERNELS = ()  # compiled backends that implement this family so far


def _check_window(win_size, win_sigma) -> None:
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"`win_size` must be an odd positive int, got {win_size!r}")
    check_scalar(win_sigma, "win_sigma")
    if win_sigma <= 0:
        raise ValueError(f"`win_sigma` must be > 0, got {win_sigma}")


def _check_k(K) -> tuple[float, float]:
    if (not isinstance(K, (tuple, list)) or len(K) != 2
            or not all(isinstance(k, numbers.Real) and not isinstance(k, bool) for k in K)):
        raise TypeError(f"`K` must be a pair of numbers (K1, K2), got {K!r}")
    return check_scalar(K[0], "K[0]"), check_scalar(K[1], "K[1]")


def ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), padding="valid", return_map=False):
    """Per-sample SSIM of images x, y [B, C, H, W] -> [B] (and the SSIM map
    [B, C, H', W'] with return_map=True). Gaussian window `win_size` x `win_size` of
    std `win_sigma`; C1 = (K1 * data_range)^2, C2 = (K2 * data_range)^2; the map averaged
    over channels and pixels. padding="valid" (the default) equals
    pytorch_msssim.ssim(x, y, data_range=1, size_average=False); "same" zero-pads
    (fused-ssim's convention). Differentiable in x and y."""
    check_tensor(x, "x")
    check_batch(x, "x")
    check_like(x, "x", y, "y")
    if x.dim() != 4:
        raise ValueError(f"`x` must be [B, C, H, W], got shape {tuple(x.shape)}")
    data_range = check_scalar(data_range, "data_range")
    if data_range <= 0:
        raise ValueError(f"`data_range` must be > 0, got {data_range}")
    _check_window(win_size, win_sigma)
    K = _check_k(K)
    check_choice(padding, "padding", PADDINGS)
    if padding == "valid" and min(x.shape[-2:]) < win_size:
        raise ValueError(f"`x` is {x.shape[-2]}x{x.shape[-1]}, smaller than the {win_size}x{win_size} window: "
                         "use padding='same' or a smaller win_size")
    check_finite(x, "x")
    check_finite(y, "y")
    _backend.resolve(x.device, x.dtype, KERNELS)  # a backend named without a kernel is an error
    return ref.ssim(x, y, data_range, win_size, win_sigma, K, padding, return_map)
