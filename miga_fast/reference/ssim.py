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
):
    """Per-sample SSIM [B] (the map [B, C, H', W'] too with return_map=True); with
    cs_only=True the contrast-structure term alone (no luminance term), as MS-SSIM takes it
    at its finer scales."""
    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    win = gaussian_window(win_size, win_sigma, x.dtype, x.device)
    return ssim_with_window(x, y, win, c1, c2, padding, return_map, cs_only)


def ssim_with_window(x, y, win, c1, c2, padding="valid", return_map=False, cs_only=False):
    """SSIM (or its contrast-structure term) with a given 1-D window and constants C1, C2
    (what the kernels receive)."""
    if padding == "same":
        win = truncate_window(win, *x.shape[-2:])
    mu_x, mu_y = blur(x, win, padding), blur(y, win, padding)
    sxx = blur(x * x, win, padding) - mu_x * mu_x
    syy = blur(y * y, win, padding) - mu_y * mu_y
    sxy = blur(x * y, win, padding) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = cs_map if cs_only else ((2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)) * cs_map
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


def _ball_geometry(x, gamma, window, data_range, K2):
    """What every window-ball function needs, planes flattened to [B*C, H*W]: the window of
    each pixel (idx, n windows, gat to spread per-window values to pixels), the pixel
    counts, u (x minus its window mean), a = (1 - gamma) / gamma per plane, and each
    window's squared radius r2 = a (2 |u|^2 + C) + a^2 |u|^2."""
    b, c, h, w = x.shape
    idx, n = window_ids(h, w, window, x.device)
    fx = x.reshape(b * c, h * w)
    count = torch.bincount(idx, minlength=n).to(x.dtype)
    gat = idx.expand_as(fx)
    mx = _window_sum(fx, idx, n) / count
    u = fx - mx.gather(1, gat)
    g = torch.as_tensor(gamma, dtype=x.dtype, device=x.device).reshape(-1, 1)
    a = ((1 - g) / g).repeat_interleave(c, 0) if g.shape[0] == b and b > 1 else (1 - g) / g
    uu = _window_sum(u * u, idx, n)
    r2 = a * (2 * uu + count * (K2 * data_range) ** 2) + a * a * uu
    return idx, n, gat, count, fx, mx, u, a, r2


def window_ball_project_(delta, x, gamma, window=8, data_range=1.0, K2=0.03, outer=60, inner=40):
    """The exact Euclidean projection of delta, per non-overlapping window, onto the convex
    set F = {d : |P d - a u|^2 <= r^2, 0 <= x + d <= 1} (docs/algorithms.md §2): the
    structural-SSIM ball S(u, u + P d) >= gamma on d's zero-mean part P d (a = (1 - gamma) /
    gamma, r^2 = a (2|u|^2 + C) + a^2 |u|^2), d's window mean free, and the box. The
    minimiser for the multiplier (1 - s) / s is d(s, mu) = clip(s z + (1 - s)(a u + mu), -x,
    1 - x) with mean(d(s, mu)) = mu; the violation |P d(s) - a u|^2 grows with s. Here:
    `inner` safeguarded Newton steps for mu, `outer` bisection steps on s, the feasible end
    written (the kernels search s by regula falsi: csrc/common/window_ball.h)."""
    idx, n, gat, count, fx, mx, u, a, r2 = _ball_geometry(x, gamma, window, data_range, K2)
    z = delta.reshape(fx.shape)

    def wmean(t):
        return _window_sum(t, idx, n) / count

    def spread(t):  # per window [P, n] -> per pixel [P, h*w]
        return t.gather(1, gat)

    cu = a * u
    lo, hi = -fx, 1 - fx

    def cand(s, mu):
        sp = spread(s)
        return torch.clamp(sp * z + (1 - sp) * (cu + spread(mu)), lo, hi)

    def psi(d):
        e = d - cu - spread(wmean(d))
        return _window_sum(e * e, idx, n)

    def solve_mu(s):
        mlo, mhi = -mx.clone(), 1 - mx
        mu = 0.5 * (mlo + mhi)
        for _ in range(inner):
            sp, m = spread(s), spread(mu)
            v = sp * z + (1 - sp) * (cu + m)
            free = ((v > lo) & (v < hi)).to(x.dtype)
            hval = wmean(torch.clamp(v, lo, hi)) - mu
            mlo = torch.where(hval > 0, mu, mlo)
            mhi = torch.where(hval < 0, mu, mhi)
            slope = 1 - (1 - s) * wmean(free)
            nxt = torch.where(slope > 0, mu + hval / slope.clamp_min(torch.finfo(x.dtype).tiny), mlo)
            nxt = torch.where((nxt > mlo) & (nxt < mhi), nxt, 0.5 * (mlo + mhi))
            if torch.equal(nxt, mu):
                break
            mu = nxt
        return mu

    box = torch.clamp(z, lo, hi)
    done = psi(box) <= r2
    s_lo, s_hi = torch.zeros_like(r2), torch.ones_like(r2)
    mu_lo = solve_mu(s_lo)
    for _ in range(outer):
        s = 0.5 * (s_lo + s_hi)
        mu = solve_mu(s)
        ok = psi(cand(s, mu)) <= r2
        s_lo = torch.where(ok, s, s_lo)
        mu_lo = torch.where(ok, mu, mu_lo)
        s_hi = torch.where(ok, s_hi, s)
    out = torch.where(spread(done), box, cand(s_lo, mu_lo))
    delta.copy_(out.reshape(delta.shape))
    return delta


def window_ball_violation(delta, x, gamma, window=8, data_range=1.0, K2=0.03):
    """Per window [B, C, n], |P d - a u|^2 - r^2 (<= 0 inside the ball) and the box's largest
    excess max(-x - d, x + d - 1) (<= 0 inside the box): the two tests of feasibility."""
    b, c = x.shape[:2]
    idx, n, gat, count, fx, _, u, a, r2 = _ball_geometry(x, gamma, window, data_range, K2)
    fd = delta.reshape(fx.shape)
    e = fd - (_window_sum(fd, idx, n) / count).gather(1, gat) - a * u
    ball = _window_sum(e * e, idx, n) - r2
    box = torch.maximum(-fx - fd, fx + fd - 1).amax(1)
    return ball.reshape(b, c, n), box.reshape(b, c)
