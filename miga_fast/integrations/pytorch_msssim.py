"""pytorch-msssim on miga_fast's fused SSIM kernels: replacing

    from pytorch_msssim import ssim, ms_ssim, SSIM, MS_SSIM

by

    from miga_fast.integrations.pytorch_msssim import ssim, ms_ssim, SSIM, MS_SSIM

is the whole migration. The signatures, defaults (data_range=255, size_average=True,
an 11-tap Gaussian window of sigma 1.5, K=(0.01, 0.03)) and semantics are pytorch-msssim's:
per-channel SSIM over a "valid" Gaussian blur, `nonnegative_ssim` as a ReLU per channel,
`win` a 1-D window [C, 1, ..., win_size], 4-D [N, C, H, W] and 5-D [N, C, T, H, W] input
(size-1 dims after the channel squeezed away), a warning and no blur along a side shorter
than the window, and MS-SSIM over five scales with its size requirement.

Where the work runs: 4-D input whose sides all hold the window goes to the fused kernels
(one call per scale, every plane of the batch in it; CUDA, Triton or C++ by the active
backend), differentiable in both images. 5-D input (a 3-D blur), a side shorter than the
window, or a `win` whose channels differ runs the same math in plain PyTorch. Unlike
pytorch-msssim, NaN or Inf in an image is an error, not a NaN result.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .._validation import check_finite, check_tensor
from ..ops.ssim import (
    MS_SSIM_WEIGHTS,
    _multi_scale_checked,
    _planes_checked,
    _prepare,
    check_weights,
    ms_ssim_min_side,
)
from ..reference.ssim import gaussian_window

__all__ = ["SSIM", "MS_SSIM", "ssim", "ms_ssim", "ImageTooSmallError"]

DEFAULT_WEIGHTS = list(MS_SSIM_WEIGHTS)


class ImageTooSmallError(ValueError, AssertionError):
    """MS-SSIM on an image too small for its scales. pytorch-msssim raises an
    AssertionError here; this is both that and a ValueError."""


def _fspecial_gauss_1d(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian as pytorch-msssim builds it: float32, [1, 1, size]."""
    return gaussian_window(size, sigma, torch.float32).reshape(1, 1, -1)


def _squeeze(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor(X, "X")
    check_tensor(Y, "Y")
    if X.shape != Y.shape:
        raise ValueError(f"Input images should have the same dimensions, but got {X.shape} and {Y.shape}.")
    for d in range(X.dim() - 1, 1, -1):  # size-1 dims after the channel go (a [N, C, 1, H, W] is 4-D)
        X, Y = X.squeeze(dim=d), Y.squeeze(dim=d)
    if X.dim() not in (4, 5):
        raise ValueError(f"Input images should be 4-d or 5-d tensors, but got {X.shape}")
    return X, Y


def _prepare_fused(X, Y, data_range, taps, K):
    """The fused path's checks, once (the SSIM family's own, naming X and Y): K and the taps."""
    return _prepare(X, "X", Y, "Y", data_range, taps.numel(), None, K, "valid", taps)


def _check_finite_images(X, Y):
    """The plain-PyTorch path's data check (the fused path's is in _prepare_fused)."""
    check_finite(X, "X")
    check_finite(Y, "Y")


def _window(X, win, win_size, win_sigma, taps=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The window as [C, 1, ..., k] (pytorch-msssim's layout), from `win` or the Gaussian,
    and its 1-D taps when every channel's are the same (`taps`: already known, as for the
    modules' windows; a user's `win` is compared row by row, which reads its values)."""
    if win is not None:
        check_tensor(win, "win")
        win_size = win.shape[-1]
    if win_size % 2 != 1:
        raise ValueError("Window size should be odd.")
    if win is None:
        g = _fspecial_gauss_1d(win_size, win_sigma)
        return g.repeat([X.shape[1]] + [1] * (X.dim() - 1)), g.reshape(-1)
    return win, (taps if taps is not None else _shared_taps(win))


def _shared_taps(win: torch.Tensor) -> torch.Tensor | None:
    """The 1-D taps when every channel's window is the same one (the fused path), else None."""
    rows = win.reshape(-1, win.shape[-1])
    return rows[0] if bool((rows == rows[:1]).all()) else None


def _fused(X: torch.Tensor, taps: torch.Tensor | None) -> bool:
    return X.dim() == 4 and taps is not None and min(X.shape[-2:]) >= taps.numel()


def _gaussian_filter(t: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable "valid" blur of t [N, C, *spatial] per channel with win [C, 1, ..., k];
    a side shorter than the window is left unblurred, with a warning."""
    conv = F.conv2d if t.dim() == 4 else F.conv3d
    k = win.shape[-1]
    out = t
    for i, s in enumerate(t.shape[2:]):
        if s >= k:
            out = conv(out, weight=win.transpose(2 + i, -1), stride=1, padding=0, groups=t.shape[1])
        else:
            warnings.warn(
                f"Skipping Gaussian Smoothing at dimension 2+{i} for input: {t.shape} and win size: {k}", stacklevel=4
            )
    return out


def _torch_terms(X, Y, data_range, win, K) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSIM, cs) per channel [N, C] in plain PyTorch: any rank, small sides, any window."""
    win = win.to(X.device, dtype=X.dtype)
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    mu1, mu2 = _gaussian_filter(X, win), _gaussian_filter(Y, win)
    s11 = _gaussian_filter(X * X, win) - mu1 * mu1
    s22 = _gaussian_filter(Y * Y, win) - mu2 * mu2
    s12 = _gaussian_filter(X * Y, win) - mu1 * mu2
    cs_map = (2 * s12 + c2) / (s11 + s22 + c2)
    ssim_map = ((2 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1)) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _per_channel(X, Y, data_range, win, taps, K, cs_only: bool) -> torch.Tensor:
    """SSIM (cs_only: the contrast-structure term) per channel [N, C]."""
    if _fused(X, taps):
        K, window = _prepare_fused(X, Y, data_range, taps, K)
        return _planes_checked(X, Y, window, data_range, K, cs_only)
    _check_finite_images(X, Y)
    return _torch_terms(X, Y, data_range, win, K)[1 if cs_only else 0]


def _reduce(per_channel: torch.Tensor, size_average: bool) -> torch.Tensor:
    return per_channel.mean() if size_average else per_channel.mean(1)


def ssim(
    X: torch.Tensor,
    Y: torch.Tensor,
    data_range: float = 255,
    size_average: bool = True,
    win_size: int = 11,
    win_sigma: float = 1.5,
    win: torch.Tensor | None = None,
    K: tuple[float, float] | list[float] = (0.01, 0.03),
    nonnegative_ssim: bool = False,
) -> torch.Tensor:
    """SSIM of X, Y [N, C, H, W] or [N, C, T, H, W]: a scalar (size_average) or [N].
    win: a 1-D window [C, 1, ..., win_size] (then win_size is its length);
    nonnegative_ssim: a ReLU on each channel's SSIM."""
    return _ssim(X, Y, data_range, size_average, win_size, win_sigma, win, K, nonnegative_ssim)


def _ssim(X, Y, data_range, size_average, win_size, win_sigma, win, K, nonnegative_ssim, taps=None):
    X, Y = _squeeze(X, Y)
    win, taps = _window(X, win, win_size, win_sigma, taps)
    per_channel = _per_channel(X, Y, data_range, win, taps, K, cs_only=False)
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    return _reduce(per_channel, size_average)


def ms_ssim(
    X: torch.Tensor,
    Y: torch.Tensor,
    data_range: float = 255,
    size_average: bool = True,
    win_size: int = 11,
    win_sigma: float = 1.5,
    win: torch.Tensor | None = None,
    weights: list[float] | None = None,
    K: tuple[float, float] | list[float] = (0.01, 0.03),
) -> torch.Tensor:
    """Multi-scale SSIM of X, Y [N, C, H, W] or [N, C, T, H, W]: a scalar (size_average)
    or [N]. One scale per weight (default five); the shorter of H, W must exceed
    (win_size - 1) * 16 (ImageTooSmallError, an AssertionError as in pytorch-msssim)."""
    return _ms_ssim(X, Y, data_range, size_average, win_size, win_sigma, win, weights, K)


def _ms_ssim(X, Y, data_range, size_average, win_size, win_sigma, win, weights, K, taps=None):
    X, Y = _squeeze(X, Y)
    win, taps = _window(X, win, win_size, win_sigma, taps)
    k = win.shape[-1]
    weights = check_weights(weights)
    # pytorch-msssim's bound: four halvings, whatever the number of weights
    need = ms_ssim_min_side(k, 5)
    if min(X.shape[-2:]) <= need:
        raise ImageTooSmallError(f"Image size should be larger than {need} due to the 4 downsamplings in ms-ssim")
    if _fused(X, taps) and min(X.shape[-2:]) > ms_ssim_min_side(k, len(weights)):
        K, window = _prepare_fused(X, Y, data_range, taps, K)
        value = _multi_scale_checked(X, Y, window, data_range, K, weights)
        return value.mean() if size_average else value
    _check_finite_images(X, Y)
    pool = F.avg_pool2d if X.dim() == 4 else F.avg_pool3d
    w = X.new_tensor(weights)
    terms = []
    for level in range(w.shape[0]):
        ssim_c, cs = _torch_terms(X, Y, data_range, win, K)
        if level < w.shape[0] - 1:
            terms.append(torch.relu(cs))
            padding = [s % 2 for s in X.shape[2:]]
            X, Y = pool(X, kernel_size=2, padding=padding), pool(Y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_c))
    per_channel = torch.prod(torch.stack(terms) ** w.view(-1, 1, 1), dim=0)
    return _reduce(per_channel, size_average)


class _Windowed(torch.nn.Module):
    """What SSIM and MS_SSIM share: pytorch-msssim's attributes (win_size, win built once
    for `channel` channels and `spatial_dims` spatial dims, size_average, data_range, K)
    and the window's 1-D taps, known without reading it while this `win` is in place."""

    def __init__(self, data_range, size_average, win_size, win_sigma, channel, spatial_dims, K) -> None:
        super().__init__()
        self.win_size = win_size
        self.win = _fspecial_gauss_1d(win_size, win_sigma).repeat([channel, 1] + [1] * spatial_dims)
        self.size_average = size_average
        self.data_range = data_range
        self.K = K
        self._taps = (self.win, self.win.reshape(-1, win_size)[0])  # every channel's window is this Gaussian

    def _known_taps(self) -> torch.Tensor | None:
        return self._taps[1] if self._taps[0] is self.win else None  # (unless the caller replaced self.win)


class SSIM(_Windowed):
    """pytorch_msssim.SSIM: the window is built once for `channel` channels and
    `spatial_dims` (2 or 3) spatial dimensions."""

    def __init__(
        self,
        data_range: float = 255,
        size_average: bool = True,
        win_size: int = 11,
        win_sigma: float = 1.5,
        channel: int = 3,
        spatial_dims: int = 2,
        K: tuple[float, float] | list[float] = (0.01, 0.03),
        nonnegative_ssim: bool = False,
    ) -> None:
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.nonnegative_ssim = nonnegative_ssim

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return _ssim(
            X,
            Y,
            self.data_range,
            self.size_average,
            None,
            None,
            self.win,
            self.K,
            self.nonnegative_ssim,
            self._known_taps(),
        )


class MS_SSIM(_Windowed):  # noqa: N801 (pytorch-msssim's name)
    """pytorch_msssim.MS_SSIM."""

    def __init__(
        self,
        data_range: float = 255,
        size_average: bool = True,
        win_size: int = 11,
        win_sigma: float = 1.5,
        channel: int = 3,
        spatial_dims: int = 2,
        weights: list[float] | None = None,
        K: tuple[float, float] | list[float] = (0.01, 0.03),
    ) -> None:
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.weights = weights

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        args = (self.data_range, self.size_average, None, None, self.win, self.weights, self.K)
        return _ms_ssim(X, Y, *args, self._known_taps())
