// The element-wise math of the projection family, shared by the CPU and CUDA kernels.
//
// One definition of each update keeps the backends bit-identical in float32 for the
// l-inf step: every operation below is a single IEEE operation in the order of the
// PyTorch reference (torchattacks' order), and the only product, step * sign(g),
// is exact because sign(g) is -1, 0 or +1.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MIGA_HD __host__ __device__ __forceinline__
#else
#define MIGA_HD inline
#endif

namespace miga_fast {

// sign(0) = 0, as torch.sign.
template <typename A>
MIGA_HD A sign_of(A g) {
  return static_cast<A>(g > A(0)) - static_cast<A>(g < A(0));
}

// torch.clamp(v, lo, hi) = min(max(v, lo), hi); a NaN in v stays NaN.
template <typename A>
MIGA_HD A clamp_to(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Ball (l-inf, radius eps) then box: x + delta in [0, 1].
template <typename A>
MIGA_HD A linf_ball_box(A d, A x, A eps) {
  d = clamp_to(d, -eps, eps);
  return clamp_to(x + d, A(0), A(1)) - x;
}

// One l-inf PGD step on one element: delta + step * sign(g), then ball and box.
template <typename A>
MIGA_HD A linf_step(A d, A g, A x, A eps, A step) {
  return linf_ball_box(d + step * sign_of(g), x, eps);
}

// Box only, after an l2 scaling: x + d clamped to [0, 1], minus x.
template <typename A>
MIGA_HD A box(A d, A x) {
  return clamp_to(x + d, A(0), A(1)) - x;
}

// Per-sample l2 factors from the sums S_gg = |g|^2, S_dg = <d, g>, S_dd = |d|^2.
// The step is d' = d + c * g with c = step / |g| (0 when g = 0), and
// |d'|^2 = S_dd + 2 c S_dg + c^2 S_gg, so one reduction pass gives both c and the
// projection factor f = min(1, eps / |d'|) (1 when d' = 0). The update is (d + c g) * f.
template <typename A>
struct L2Factors {
  A c;
  A f;
};

template <typename A>
MIGA_HD L2Factors<A> l2_factors(double s_gg, double s_dg, double s_dd, A eps, A step) {
  L2Factors<A> r;
  const double gnorm = s_gg > 0.0 ? sqrt(s_gg) : 0.0;
  const double c = gnorm > 0.0 ? static_cast<double>(step) / gnorm : 0.0;
  double n2 = s_dd + 2.0 * c * s_dg + c * c * s_gg;
  n2 = n2 > 0.0 ? n2 : 0.0;
  const double n = sqrt(n2);
  const double e = static_cast<double>(eps);
  r.c = static_cast<A>(c);
  r.f = static_cast<A>(n > e ? e / n : 1.0);
  return r;
}

// Projection factor for an existing delta: min(1, eps / |d|).
template <typename A>
MIGA_HD A l2_project_factor(double s_dd, A eps) {
  const double n = sqrt(s_dd > 0.0 ? s_dd : 0.0);
  const double e = static_cast<double>(eps);
  return static_cast<A>(n > e ? e / n : 1.0);
}

}  // namespace miga_fast
