"""Plain-PyTorch SSIM (Wang et al. 2004; docs/algorithms.md §2): the oracle for the
SSIM kernels. With the defaults it equals pytorch_msssim.ssim(x, y, data_range=1,
size_average=False)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(win_size: int, win_sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian [win_size], built in float32 as pytorch-msssim does, and
    directly on `device` (no host-to-device copy in an attack step). A sigma so small that
    2 sigma^2 underflows float32 is built in float64 (the window is then the centre tap
    alone, 1), where float32 would give 0 / 0."""
    build = torch.float32 if 2 * win_sigma**2 >= torch.finfo(torch.float32).tiny else torch.float64
    coords = torch.arange(win_size, dtype=build, device=device) - win_size // 2
    g = torch.exp(-(coords**2) / (2 * win_sigma**2))
    return (g / g.sum()).to(dtype=dtype)


def truncate_window(win: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """With zero ("same") padding, taps further than max(h, w) - 1 from the centre only
    ever meet padding: dropping them (without renormalising) gives the same blur, and
    bounds the work and the scratch by the image rather than the window."""
    keep = 2 * max(h, w) - 1
    k = win.numel()
    if k <= keep:
        return win
    start = k // 2 - (keep // 2)
    return win[start : start + keep].contiguous()


def blur(t: torch.Tensor, win: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    """Separable Gaussian blur per channel of t [B, C, H, W]; "same" pads with zeros."""
    c = t.shape[1]
    k = win.numel()
    pad = k // 2 if padding == "same" else 0
    t = F.conv2d(t, win.reshape(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, pad), groups=c)
    return F.conv2d(t, win.reshape(1, 1, k, 1).expand(c, 1, k, 1), padding=(pad, 0), groups=c)


def ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), padding="valid", return_map=False):
    """Per-sample SSIM [B] (the map [B, C, H', W'] too with return_map=True)."""
    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    win = gaussian_window(win_size, win_sigma, x.dtype, x.device)
    return ssim_with_window(x, y, win, c1, c2, padding, return_map)


def ssim_with_window(x, y, win, c1, c2, padding="valid", return_map=False):
    """SSIM with a given 1-D window and constants C1, C2 (what the kernels receive)."""
    if padding == "same":
        win = truncate_window(win, *x.shape[-2:])
    mu_x, mu_y = blur(x, win, padding), blur(y, win, padding)
    sxx = blur(x * x, win, padding) - mu_x * mu_x
    syy = blur(y * y, win, padding) - mu_y * mu_y
    sxy = blur(x * y, win, padding) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)) * cs_map
    value = ssim_map.flatten(2).mean(-1).mean(-1)
    return (value, ssim_map) if return_map else value


def ball_moments(x, delta, win, padding="valid"):
    """The blurred moments of (x, delta) from which SSIM(x, x + t*delta) follows for any t:
    mu_x, mu_d, var_x, var_d, cov_xd (each [B, C, H', W'])."""
    if padding == "same":
        win = truncate_window(win, *x.shape[-2:])
    mu_x, mu_d = blur(x, win, padding), blur(delta, win, padding)
    var_x = blur(x * x, win, padding) - mu_x * mu_x
    var_d = blur(delta * delta, win, padding) - mu_d * mu_d
    cov = blur(x * delta, win, padding) - mu_x * mu_d
    return mu_x, mu_d, var_x, var_d, cov


def ssim_at_scales(moments, t, c1, c2):
    """SSIM(x, x + t*delta) per sample for candidate scales t [B, K] -> [B, K]. With
    y = x + t*delta: mu_y = mu_x + t mu_d, var_y = var_x + 2t cov + t^2 var_d,
    cov_xy = var_x + t cov: polynomials in t, so no image is blurred again."""
    mu_x, mu_d, var_x, var_d, cov = (m.unsqueeze(1) for m in moments)  # [B, 1, C, H, W]
    t = t.reshape(t.shape[0], t.shape[1], 1, 1, 1).to(mu_x.dtype)
    mu_y = mu_x + t * mu_d
    var_y = var_x + 2 * t * cov + t * t * var_d
    cov_xy = var_x + t * cov
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return smap.flatten(2).mean(-1)


def ssim_ball_scale(
    delta, x, tau, data_range=1.0, win_size=11, win_sigma=1.5, K=(0.01, 0.03), padding="valid", candidates=16, rounds=5
):
    """Per sample, the largest t in [0, 1] (on a grid refined `rounds` times, to
    (candidates - 1) ** -rounds) with SSIM(x, x + t*delta) >= tau. Each round evaluates
    `candidates` values of t at once from one set of moments, keeps the largest feasible
    one and refines up to the next candidate. The result always satisfies the constraint
    (t = 0 does: SSIM(x, x) = 1)."""
    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    # float64 moments: the constraint is checked right at tau, where float32 rounding
    # (about 1e-5 in SSIM) would decide.
    win = gaussian_window(win_size, win_sigma, torch.float64, x.device)
    moments = ball_moments(x.double(), delta.double(), win, padding)
    b = x.shape[0]
    tau = torch.as_tensor(tau, dtype=torch.float64, device=x.device).reshape(-1, 1).expand(b, 1)
    lo = torch.zeros(b, 1, dtype=torch.float64, device=x.device)
    hi = torch.ones_like(lo)
    grid = torch.linspace(0, 1, candidates, dtype=torch.float64, device=x.device).reshape(1, -1)
    for _ in range(rounds):
        ts = lo + (hi - lo) * grid  # [B, K]; ts[:, 0] = lo is feasible
        ok = ssim_at_scales(moments, ts, c1, c2).double() >= tau
        ok[:, 0] = True
        last = (ok * torch.arange(1, candidates + 1, device=x.device)).argmax(1, keepdim=True)  # last feasible
        lo = ts.gather(1, last)
        hi = ts.gather(1, (last + 1).clamp(max=candidates - 1))
    return lo.squeeze(1).to(x.dtype)


def window_ids(h: int, w: int, window: int, device=None) -> tuple[torch.Tensor, int]:
    """Index [H*W] of the non-overlapping window of each pixel (edge windows may be
    smaller), and the number of windows."""
    nh, nw = -(-h // window), -(-w // window)
    rows = torch.arange(h, device=device) // window
    cols = torch.arange(w, device=device) // window
    return (rows[:, None] * nw + cols[None, :]).flatten(), nh * nw


def _window_sum(t: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(t.shape[0], n, dtype=t.dtype, device=t.device).scatter_add_(1, idx.expand_as(t), t)


def structural_ssim_windows(x, delta, window=8, data_range=1.0, K2=0.03):
    """Per window (b, c, window) the zero-mean structural SSIM
    S(u, u + eta) = (2 u.(u + eta) + C) / (|u|^2 + |u + eta|^2 + C), u and eta the window's
    mean-removed pixels of x and delta, C = (pixels in the window) * (K2 * data_range)^2."""
    b, c, h, w = x.shape
    idx, n = window_ids(h, w, window, x.device)
    fx, fd = x.reshape(b * c, h * w), delta.reshape(b * c, h * w)
    count = torch.bincount(idx, minlength=n).to(x.dtype)
    u = fx - (_window_sum(fx, idx, n) / count).gather(1, idx.expand_as(fx))
    eta = fd - (_window_sum(fd, idx, n) / count).gather(1, idx.expand_as(fd))
    cw = count * (K2 * data_range) ** 2
    v = u + eta
    num = 2 * _window_sum(u * v, idx, n) + cw
    den = _window_sum(u * u, idx, n) + _window_sum(v * v, idx, n) + cw
    return (num / den).reshape(b, c, n)


def window_ball_project_(delta, x, gamma, window=8, data_range=1.0, K2=0.03):
    """The exact Euclidean projection, per non-overlapping window, onto the convex set
    {eta : S(u, u + eta) >= gamma} (docs/algorithms.md §2: the ball |eta - a u|^2 <= a (2|u|^2 + C)
    + a^2 |u|^2, a = (1 - gamma) / gamma) of the zero-mean part of delta; the window means
    of delta are left as they are (the structural SSIM does not see them). Then the box."""
    b, c, h, w = x.shape
    idx, n = window_ids(h, w, window, x.device)
    fx, fd = x.reshape(b * c, h * w), delta.reshape(b * c, h * w)
    count = torch.bincount(idx, minlength=n).to(x.dtype)
    gat = idx.expand_as(fx)
    mean_d = (_window_sum(fd, idx, n) / count).gather(1, gat)
    u = fx - (_window_sum(fx, idx, n) / count).gather(1, gat)
    eta = fd - mean_d
    g = torch.as_tensor(gamma, dtype=x.dtype, device=x.device).reshape(-1, 1)
    a = ((1 - g) / g).repeat_interleave(c, 0) if g.shape[0] == b and b > 1 else (1 - g) / g
    cw = count * (K2 * data_range) ** 2
    uu = _window_sum(u * u, idx, n)
    r2 = a * (2 * uu + cw) + a * a * uu
    off = eta - a * u
    oo = _window_sum(off * off, idx, n)
    scale = torch.where(oo > r2, torch.sqrt(r2 / oo.clamp_min(torch.finfo(x.dtype).tiny)), torch.ones_like(oo))
    d = mean_d + a * u + off * scale.gather(1, gat)
    delta.copy_((torch.clamp(x.reshape(b * c, h * w) + d, 0, 1) - fx).reshape(delta.shape))
    return delta


def window_ball_linear_max(x, g, gamma, window=8, data_range=1.0, K2=0.03):
    """argmax of <g, eta> over the zero-mean perturbations eta in every window's
    structural-SSIM ball (the linear step of the convex solver): per window,
    eta* = a u + r g0 / |g0|, with g0 the window's zero-mean part of g, u that of x,
    a = (1 - gamma) / gamma and r the ball's radius. Windows where g0 = 0 get eta* = a u."""
    b, c, h, w = x.shape
    idx, n = window_ids(h, w, window, x.device)
    fx, fg = x.reshape(b * c, h * w), g.reshape(b * c, h * w)
    count = torch.bincount(idx, minlength=n).to(x.dtype)
    gat = idx.expand_as(fx)
    u = fx - (_window_sum(fx, idx, n) / count).gather(1, gat)
    g0 = fg - (_window_sum(fg, idx, n) / count).gather(1, gat)
    gm = torch.as_tensor(gamma, dtype=x.dtype, device=x.device).reshape(-1, 1)
    a = ((1 - gm) / gm).repeat_interleave(c, 0) if gm.shape[0] == b and b > 1 else (1 - gm) / gm
    uu = _window_sum(u * u, idx, n)
    r = torch.sqrt(a * (2 * uu + count * (K2 * data_range) ** 2) + a * a * uu)
    gn = torch.sqrt(_window_sum(g0 * g0, idx, n))
    coef = torch.where(gn > 0, r / gn.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(gn))
    return (a * u + g0 * coef.gather(1, gat)).reshape(x.shape)
