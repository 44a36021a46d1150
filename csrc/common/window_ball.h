// The exact Euclidean projection onto one window's convex SSIM set, shared by the CPU and
// CUDA kernels (docs/algorithms.md §2; reference/ssim.py: window_ball_project_).
//
// In a window of m pixels, with x the image, u = x - mean(x), c = a u, a = (1 - gamma) /
// gamma, r^2 = a (2 |u|^2 + m C) + a^2 |u|^2, the feasible perturbations are
//     F = { d : |P d - c|^2 <= r^2, -x <= d <= 1 - x },  P d = d - mean(d)
// (the structural-SSIM ball on d's zero-mean part, its mean free, and the box). F is
// convex and holds d = 0. Since c has mean zero, |P d - c|^2 = min_mu |d - c - mu 1|^2,
// so projecting z onto F is
//     min over d in the box and mu of  1/2 |d - z|^2  s.t.  |d - c - mu 1|^2 <= r^2.
// For a multiplier lambda = (1 - s) / s the Lagrangian's minimiser is, per pixel,
//     d_i(s, mu) = clip(s z_i + (1 - s)(c_i + mu), -x_i, 1 - x_i)
// with mu the root of mean(d(s, mu)) = mu (strictly decreasing in mu: a safeguarded
// Newton solve, exact on the piecewise-linear function in a few steps). The violation
// psi(s) = |P d(s) - c|^2 is non-decreasing in s; s = 1 is the box projection of z and
// s = 0 the point of the box nearest the line c + mu 1, which lies inside the ball (d = 0
// is within a^2 |u|^2 < r^2). If the box projection is feasible it is the answer;
// otherwise a bracketed (Illinois) search on s finds psi(s) = r^2 and the feasible side
// of the bracket is written. The feasibility test is one function of the written values,
// so a second projection returns its input unchanged (idempotent to the bit).
//
// The kernels supply the window as `Win`: count(), sum(f) = the sum over the window's
// pixels of f(x_i, z_i) (the same value on every thread that takes part), sum2(f) for two
// sums at once (a WinPair), and store(f): d_i = f(x_i, z_i).
#pragma once

#include "hd.h"

namespace miga_fast {

template <typename T>
struct WinPair {
  T a, b;
};

template <typename T>
MIGA_HD T wb_clip(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Tolerances of the search: a relative width below which the brackets count as closed.
template <typename T>
MIGA_HD T wb_eps() {
  return sizeof(T) == 4 ? T(1.1920929e-07f) : T(2.220446049250313e-16);
}

template <typename T, typename Win>
MIGA_HD void window_ball_solve(const Win& w, T a, T c_pixel) {
  const T cnt = static_cast<T>(w.count());
  const T mx = w.sum([](T x, T) { return x; }) / cnt;
  const T uu = w.sum([mx](T x, T) { return (x - mx) * (x - mx); });
  const T r2 = a * (T(2) * uu + cnt * c_pixel) + a * a * uu;
  const T one = T(1), eps = wb_eps<T>();

  // |P d(s, mu) - c|^2, from the values d(s, mu) takes (mean(d) recomputed from them).
  auto psi = [&](T s, T mu) {
    const T md = w.sum([=](T x, T z) { return wb_clip(s * z + (one - s) * (a * (x - mx) + mu), -x, one - x); }) / cnt;
    return w.sum([=](T x, T z) {
      const T e = wb_clip(s * z + (one - s) * (a * (x - mx) + mu), -x, one - x) - a * (x - mx) - md;
      return e * e;
    });
  };
  auto write = [&](T s, T mu) {
    w.store([=](T x, T z) { return wb_clip(s * z + (one - s) * (a * (x - mx) + mu), -x, one - x); });
  };

  T f_hi = psi(one, T(0)) - r2;  // s = 1: the box projection of z (mu drops out)
  if (f_hi <= T(0)) {
    write(one, T(0));
    return;
  }
  // The root of h(mu) = mean(d(s, mu)) - mu, which lies in [mean(-x), mean(1 - x)].
  auto solve_mu = [&](T s, T mu) {
    T lo = -mx, hi = one - mx;
    mu = wb_clip(mu, lo, hi);
    for (int it = 0; it < 64; ++it) {
      const WinPair<T> r = w.sum2([=](T x, T z) {
        const T v = s * z + (one - s) * (a * (x - mx) + mu);
        const bool free = v > -x && v < one - x;
        return WinPair<T>{wb_clip(v, -x, one - x), free ? one : T(0)};
      });
      const T h = r.a / cnt - mu;
      if (h == T(0)) return mu;
      if (h > T(0))
        lo = mu;
      else
        hi = mu;
      const T slope = one - (one - s) * r.b / cnt;  // -h'(mu) on this piece, in [s, 1]
      T next = slope > T(0) ? mu + h / slope : lo + T(0.5) * (hi - lo);
      if (!(next > lo && next < hi)) next = lo + T(0.5) * (hi - lo);
      if (next == mu || hi - lo <= eps * (one + (mu < T(0) ? -mu : mu))) return next;
      mu = next;
    }
    return mu;
  };

  T s_lo = T(0), mu_lo = solve_mu(T(0), T(0));
  T f_lo = psi(s_lo, mu_lo) - r2;
  T s_hi = one, mu = mu_lo;
  T g_lo = f_lo, g_hi = f_hi;  // the secant's weights (Illinois: one halves when its end stays)
  int side = 0;                // the bracket end the last step moved
  for (int it = 0; it < 200 && f_lo < T(0); ++it) {
    if (s_hi - s_lo <= eps || -f_lo <= T(64) * eps * r2) break;
    T s = s_lo - g_lo * (s_hi - s_lo) / (g_hi - g_lo);
    if (!(s > s_lo && s < s_hi)) s = s_lo + T(0.5) * (s_hi - s_lo);
    mu = solve_mu(s, mu);
    const T f = psi(s, mu) - r2;
    if (f <= T(0)) {
      s_lo = s;
      f_lo = g_lo = f;
      mu_lo = mu;
      if (side < 0) g_hi *= T(0.5);
      side = -1;
    } else {
      s_hi = s;
      g_hi = f;
      if (side > 0) g_lo *= T(0.5);
      side = 1;
    }
  }
  // The written point is s_lo's, whose psi was measured <= r^2 (or, when rounding put
  // even s = 0 outside, the point of the box nearest the ball's centre line).
  write(s_lo, mu_lo);
}

}  // namespace miga_fast
