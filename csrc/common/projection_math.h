// The element-wise math of the projection family, shared by the CPU and CUDA kernels.
//
// One definition of each update keeps the backends bit-identical in float32 for the
// l-inf step: every operation below is a single IEEE operation in the order of the
// PyTorch reference (torchattacks' order), and the only product, step * sign(g),
// is exact because sign(g) is -1, 0 or +1.
#pragma once

#include <cmath>

#include "hd.h"

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

// The same step on the adversarial image a = x + delta itself, in torchattacks' order and
// arithmetic (a + step * sign(g); clamp(a - x, -eps, eps); clamp(x + d, 0, 1)), so its
// results equal torchattacks' bit for bit: the delta form above rounds x + delta
// differently from torchattacks' adversarial image.
template <typename A>
MIGA_HD A linf_step_image(A a, A g, A x, A eps, A step) {
  const A d = clamp_to((a + step * sign_of(g)) - x, -eps, eps);
  return clamp_to(x + d, A(0), A(1));
}

// Box only, after an l2 scaling: x + d clamped to [0, 1], minus x.
template <typename A>
MIGA_HD A box(A d, A x) {
  return clamp_to(x + d, A(0), A(1)) - x;
}

// Per-sample l2 factors, defined for tiny, huge and zero gradients.
//
// The gradient is first scaled by its largest magnitude, s = g / max|g| (every entry in
// [-1, 1], the largest exactly 1), so its norm |s| lies in [1, sqrt(n)] and nothing
// overflows or underflows however small or large g is; a zero gradient takes no step.
// The step is d' = d + c * s with c = step / |s| (|c| <= |step|: always finite), and the
// projection factor is f = min(1, eps / |d'|); the update is (d + c * s) * f.
//
// The sums come in over s and u = d / dscale (dscale > 0: the caller's scale of d, 1 when
// the sums of d cannot overflow, as for float32 data in double sums):
//   s_ss = sum s^2, s_su = sum s u, s_uu = sum u^2.
// |d'|^2 = dscale^2 s_uu + 2 c dscale s_su + c^2 s_ss is formed relative to
// K = max(dscale, |c|), so it stays finite too.
template <typename A>
struct L2Factors {
  A c;
  A f;
};

template <typename A>
MIGA_HD L2Factors<A> l2_factors(double s_ss, double s_su, double s_uu, double dscale, A eps, A step) {
  L2Factors<A> r;
  const double snorm = s_ss > 0.0 ? sqrt(s_ss) : 0.0;
  const double c = snorm > 0.0 ? static_cast<double>(step) / snorm : 0.0;
  const double ac = c < 0.0 ? -c : c;
  const double k = dscale > ac ? dscale : ac;
  double f = 1.0;
  if (k > 0.0) {
    const double a = dscale / k, b = c / k;
    double q = a * a * s_uu + 2.0 * a * b * s_su + b * b * s_ss;
    q = q > 0.0 ? q : 0.0;
    const double nq = sqrt(q);                       // |d'| / K
    const double ek = static_cast<double>(eps) / k;  // may be inf: then |d'| <= eps
    if (nq > ek) f = ek / nq;
  }
  r.c = static_cast<A>(c);
  r.f = static_cast<A>(f);
  return r;
}

// Projection factor for an existing delta: min(1, eps / |d|), from s_uu = sum (d / dscale)^2.
template <typename A>
MIGA_HD A l2_project_factor(double s_uu, double dscale, A eps) {
  return l2_factors<A>(0.0, 0.0, s_uu, dscale, eps, A(0)).f;
}

// The divisor that scales a vector by its largest magnitude: max|v|, or 1 when v = 0
// (then every v / scale is 0 and no step is taken).
template <typename A>
MIGA_HD A safe_scale(A vmax) {
  return vmax > A(0) ? vmax : A(1);
}

}  // namespace miga_fast
