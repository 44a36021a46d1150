// CPU kernels of the projection family (ALGORITHMS.md section 1).
//
// l-inf: one pass over memory, split by at::parallel_for into chunks that never
// straddle a sample, so the per-sample eps and step are loop constants and the inner
// loops vectorise. l2 and MI-FGSM: one per-sample reduction (double accumulators, a
// fixed order, so results repeat bit for bit), then one update pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/projection_checks.h"
#include "../common/projection_math.h"

namespace miga_fast {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Calls f(b, begin, end) on index ranges of the flattened [B, n] tensor that never
// straddle a sample, spread over the intra-op threads.
template <typename F>
void for_each_sample_chunk(int64_t batch, int64_t n, const F& f) {
  at::parallel_for(0, batch * n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / n;
      const int64_t stop = std::min(end, (b + 1) * n);
      f(b, i, stop);
      i = stop;
    }
  });
}

template <typename T>
void linf_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x,
                 const T* eps, int64_t eps_stride, const T* alpha, int64_t alpha_stride,
                 T direction, int64_t batch, int64_t n) {
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    if (g != nullptr) {
      const T step = direction * alpha[b * alpha_stride];
      for (int64_t i = i0; i < i1; ++i) d[i] = linf_step(d[i], g[i], x[i], e, step);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = linf_ball_box(d[i], x[i], e);
    }
  });
}

// Sums over one sample: out = {sum g*g, sum g*d, sum d*d}. Four independent
// accumulators in a fixed order: deterministic and not latency-bound.
template <typename T>
void dot3(const T* __restrict__ g, const T* __restrict__ d, int64_t n, double out[3]) {
  double gg[4] = {0, 0, 0, 0}, gd[4] = {0, 0, 0, 0}, dd[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double gv = g[i + k], dv = d[i + k];
      gg[k] += gv * gv;
      gd[k] += gv * dv;
      dd[k] += dv * dv;
    }
  }
  for (; i < n; ++i) {
    const double gv = g[i], dv = d[i];
    gg[0] += gv * gv;
    gd[0] += gv * dv;
    dd[0] += dv * dv;
  }
  out[0] = (gg[0] + gg[1]) + (gg[2] + gg[3]);
  out[1] = (gd[0] + gd[1]) + (gd[2] + gd[3]);
  out[2] = (dd[0] + dd[1]) + (dd[2] + dd[3]);
}

template <typename T>
double sum_sq(const T* __restrict__ a, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += static_cast<double>(a[i + k]) * a[i + k];
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]) * a[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename T>
double sum_abs(const T* __restrict__ a, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += std::abs(static_cast<double>(a[i + k]));
  for (; i < n; ++i) acc[0] += std::abs(static_cast<double>(a[i]));
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename T>
void l2_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x, const T* eps,
               int64_t eps_stride, const T* alpha, int64_t alpha_stride, T direction,
               int64_t batch, int64_t n) {
  std::vector<L2Factors<T>> fac(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T e = eps[b * eps_stride];
      if (g != nullptr) {
        double s[3];
        dot3(g + b * n, d + b * n, n, s);
        fac[b] = l2_factors<T>(s[0], s[1], s[2], e, direction * alpha[b * alpha_stride]);
      } else {
        fac[b] = L2Factors<T>{T(0), l2_project_factor<T>(sum_sq(d + b * n, n), e)};
      }
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T c = fac[b].c, f = fac[b].f;
    if (g != nullptr) {
      for (int64_t i = i0; i < i1; ++i) d[i] = box((d[i] + c * g[i]) * f, x[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = box(d[i] * f, x[i]);
    }
  });
}

template <typename T>
void mi_fgsm_kernel(T* __restrict__ d, T* __restrict__ m, const T* __restrict__ g,
                    const T* __restrict__ x, const T* eps, int64_t eps_stride, const T* alpha,
                    int64_t alpha_stride, T mu, T direction, int64_t batch, int64_t n) {
  std::vector<T> l1(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) l1[b] = static_cast<T>(sum_abs(g + b * n, n));
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    const T step = direction * alpha[b * alpha_stride];
    const T norm = l1[b];
    for (int64_t i = i0; i < i1; ++i) {
      const T gn = norm > T(0) ? g[i] / norm : T(0);
      const T mv = mu * m[i] + gn;
      m[i] = mv;
      d[i] = linf_step(d[i], mv, x[i], e, step);
    }
  });
}

at::Tensor contiguous_or_self(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void check_cpu(const at::Tensor& delta) {
  check_delta(delta);
  TORCH_CHECK(delta.device().is_cpu(), "miga_fast: CPU kernel called with `delta` on ",
              delta.device());
  TORCH_CHECK(delta.scalar_type() == at::kFloat || delta.scalar_type() == at::kDouble,
              "miga_fast: the CPU kernels take float32 or float64, got ", delta.scalar_type(),
              " (float16/bfloat16 run on CUDA)");
}

// Shared driver: checks, contiguous views, dtype dispatch, write-back of strided outputs.
enum class Kind { kLinf, kL2, kMomentum };

void run(Kind kind, at::Tensor& delta, at::Tensor* momentum, const at::Tensor* grad,
         const at::Tensor& x, const at::Tensor& eps, const at::Tensor* alpha, double mu,
         double direction) {
  check_cpu(delta);
  check_same_layout(delta, x, "x");
  if (grad != nullptr) check_same_layout(delta, *grad, "grad");
  if (momentum != nullptr) check_same_layout(delta, *momentum, "momentum");
  const at::Tensor eps_c = per_sample_param(eps, delta, "eps");
  const at::Tensor alpha_c = alpha != nullptr ? per_sample_param(*alpha, delta, "alpha") : eps_c;

  at::Tensor d = contiguous_or_self(delta);
  at::Tensor m = momentum != nullptr ? contiguous_or_self(*momentum) : at::Tensor();
  const at::Tensor xc = contiguous_or_self(x);
  const at::Tensor gc = grad != nullptr ? contiguous_or_self(*grad) : at::Tensor();
  const int64_t batch = delta.size(0);
  const int64_t n = batch > 0 ? delta.numel() / batch : 0;
  if (n == 0) return;

  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "miga_fast_projection_cpu", [&] {
    scalar_t* dp = d.data_ptr<scalar_t>();
    const scalar_t* gp = grad != nullptr ? gc.data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* ep = eps_c.data_ptr<scalar_t>();
    const scalar_t* ap = alpha_c.data_ptr<scalar_t>();
    const int64_t es = eps_c.numel() == 1 ? 0 : 1;
    const int64_t as = alpha_c.numel() == 1 ? 0 : 1;
    const scalar_t dir = static_cast<scalar_t>(direction);
    switch (kind) {
      case Kind::kLinf:
        linf_kernel<scalar_t>(dp, gp, xp, ep, es, ap, as, dir, batch, n);
        break;
      case Kind::kL2:
        l2_kernel<scalar_t>(dp, gp, xp, ep, es, ap, as, dir, batch, n);
        break;
      case Kind::kMomentum:
        mi_fgsm_kernel<scalar_t>(dp, m.data_ptr<scalar_t>(), gp, xp, ep, es, ap, as,
                                 static_cast<scalar_t>(mu), dir, batch, n);
        break;
    }
  });
  if (!d.is_same(delta)) delta.copy_(d);
  if (momentum != nullptr && !m.is_same(*momentum)) momentum->copy_(m);
}

void pgd_step_linf_cpu(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                       const at::Tensor& eps, const at::Tensor& alpha, double direction) {
  run(Kind::kLinf, delta, nullptr, &grad, x, eps, &alpha, 0.0, direction);
}

void pgd_step_l2_cpu(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                     const at::Tensor& eps, const at::Tensor& alpha, double direction) {
  run(Kind::kL2, delta, nullptr, &grad, x, eps, &alpha, 0.0, direction);
}

void mi_fgsm_step_cpu(at::Tensor& delta, at::Tensor& momentum, const at::Tensor& grad,
                      const at::Tensor& x, const at::Tensor& eps, const at::Tensor& alpha,
                      double mu, double direction) {
  run(Kind::kMomentum, delta, &momentum, &grad, x, eps, &alpha, mu, direction);
}

void project_linf_cpu(at::Tensor& delta, const at::Tensor& x, const at::Tensor& eps) {
  run(Kind::kLinf, delta, nullptr, nullptr, x, eps, nullptr, 0.0, 1.0);
}

void project_l2_cpu(at::Tensor& delta, const at::Tensor& x, const at::Tensor& eps) {
  run(Kind::kL2, delta, nullptr, nullptr, x, eps, nullptr, 0.0, 1.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("pgd_step_linf_", &pgd_step_linf_cpu);
  m.impl("pgd_step_l2_", &pgd_step_l2_cpu);
  m.impl("mi_fgsm_step_", &mi_fgsm_step_cpu);
  m.impl("project_linf_", &project_linf_cpu);
  m.impl("project_l2_", &project_l2_cpu);
}

}  // namespace miga_fast
