// The element math of the SSIM family, shared by the CPU and CUDA kernels (the Triton
// kernels in triton_kernels/ssim.py mirror it line for line): the SSIM of one output
// position from its five blurred moments, the four partial derivatives the backward
// blurs back, and the SSIM of x + t * delta for a candidate scale t of the SSIM ball.
// One definition, so the backends agree to the last bit in float64 (a test checks the
// C++ and the emulated CUDA kernels do).
#pragma once

#include "hd.h"

namespace miga_fast {

// SSIM = (a / c) * (b / d) at one position from mu_x, mu_y, E[x^2], E[y^2], E[xy]:
// a = 2 mu_x mu_y + C1, b = 2 cov + C2, c = mu_x^2 + mu_y^2 + C1, d = var_x + var_y + C2.
// lum = 1 gives SSIM; lum = 0 drops the luminance term (a = c = 1), leaving the
// contrast-structure term cs = b / d that MS-SSIM takes at its finer scales.
template <typename T>
struct SsimPixel {
  T a, b, c, d, s, lum;
};

template <typename T>
MIGA_HD SsimPixel<T> ssim_pixel(T mx, T my, T exx, T eyy, T exy, T c1, T c2, T lum) {
  SsimPixel<T> p;
  p.lum = lum;
  p.a = lum != T(0) ? T(2) * mx * my + c1 : T(1);
  p.b = T(2) * (exy - mx * my) + c2;
  p.c = lum != T(0) ? mx * mx + my * my + c1 : T(1);
  p.d = (exx - mx * mx) + (eyy - my * my) + c2;
  p.s = (p.a / p.c) * (p.b / p.d);
  return p;
}

// The partial derivatives of S = A B / (C D) at one position, scaled by the upstream
// gradient gs: dS/dmu_x = 2 mu_y (B - A)/(CD) - 2 mu_x S (1/C - 1/D) (symmetrically for
// mu_y), dS/dE[x^2] = dS/dE[y^2] = -S/D, dS/dE[xy] = 2A/(CD). Without the luminance
// term (lum = 0, A = C = 1) the B and 1/C parts vanish: the same lines with them times lum.
template <typename T>
struct SsimPartials {
  T mx, my, sq, xy;
};

template <typename T>
MIGA_HD SsimPartials<T> ssim_partials(const SsimPixel<T>& q, T mx, T my, T gs) {
  const T inv_cd = T(1) / (q.c * q.d);
  const T common = T(2) * (q.lum * q.b - q.a) * inv_cd;
  const T s_cd = T(2) * q.s * (q.lum / q.c - T(1) / q.d);
  SsimPartials<T> r;
  r.mx = gs * (my * common - mx * s_cd);
  r.my = gs * (mx * common - my * s_cd);
  r.sq = gs * (-q.s / q.d);
  r.xy = gs * (T(2) * q.a * inv_cd);
  return r;
}

// SSIM(x, x + t delta) at one position from mu_x, mu_d, var_x, var_d, cov(x, delta): with
// y = x + t delta, mu_y = mu_x + t mu_d, var_y = var_x + 2 t cov + t^2 var_d and
// cov_xy = var_x + t cov (the moments are polynomials in t), in double.
MIGA_HD double ssim_at_scale(double mx, double md, double vx, double vd, double cv, double t, double c1, double c2) {
  const double my = mx + t * md;
  const double vy = vx + (2.0 * t) * cv + t * t * vd;
  const double cxy = vx + t * cv;
  return ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
}

}  // namespace miga_fast
