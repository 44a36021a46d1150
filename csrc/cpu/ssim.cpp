// CPU kernels of the SSIM family (docs/algorithms.md §2): per-sample SSIM, and the value
// with its gradients in both inputs from one pass over the blurred moments (the upstream
// gradient of a per-sample value is one number per sample, so autograd's backward only
// scales these). Planes (b, c) run in parallel; the loops (ssim_loops.h) are built for
// plain x86-64 and for AVX2 and chosen at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../common/ssim_checks.h"
#include "../common/ssim_math.h"
#include "../common/window_ball.h"
#include "dispatch.h"

namespace miga_fast {
namespace {

#define MIGA_FAST_LOOPS "ssim_loops.h"
#include "instantiate_loops.h"

void check(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window, bool same) {
  check_ssim_inputs(x, y, window, same, c10::DeviceType::CPU);
}

// The window as a vector, C1, C2 and the luminance factor (0 for cs_only) in dtype T.
template <typename T>
struct Constants {
  std::vector<T> win;
  T c1, c2, lum;
  Constants(const at::Tensor& window, double data_range, double k1, double k2, bool cs_only)
      : win(window.data_ptr<T>(), window.data_ptr<T>() + window.size(0)),
        c1(static_cast<T>((k1 * data_range) * (k1 * data_range))),
        c2(static_cast<T>((k2 * data_range) * (k2 * data_range))),
        lum(cs_only ? T(0) : T(1)) {}
};

struct Geometry {
  int64_t b, c, h, w, pad, ho, wo;
};

Geometry geometry(const at::Tensor& x, int64_t k, bool same) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), same ? k / 2 : 0, 0, 0};
  g.ho = g.h + 2 * g.pad - k + 1;
  g.wo = g.w + 2 * g.pad - k + 1;
  return g;
}

// value_b = the mean of sample b's SSIM maps, from the per-plane sums.
at::Tensor per_sample_mean(const std::vector<double>& sums, const Geometry& gm, at::ScalarType dtype) {
  at::Tensor value = at::empty({gm.b}, at::TensorOptions().dtype(at::kDouble));
  double* v = value.data_ptr<double>();
  const double n = static_cast<double>(gm.c * gm.ho * gm.wo);
  for (int64_t b = 0; b < gm.b; ++b) {
    double s = 0.0;
    for (int64_t c = 0; c < gm.c; ++c) s += sums[b * gm.c + c];
    v[b] = s / n;
  }
  return value.to(dtype);
}

at::Tensor ssim_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& window, double data_range,
                    double k1, double k2, bool same_padding, bool cs_only) {
  check(x_in, y_in, window, same_padding);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), win_t = window.contiguous();
  const int64_t win_size = win_t.size(0);
  const Geometry gm = geometry(x, win_size, same_padding);
  std::vector<double> sums(gm.b * gm.c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "miga_fast_ssim_cpu", [&] {
    using T = scalar_t;
    const Constants<T> k(win_t, data_range, k1, k2, cs_only);
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const int64_t plane = gm.h * gm.w;
    at::parallel_for(0, gm.b * gm.c, 1, [&](int64_t p0, int64_t p1) {
      std::vector<T> scratch;
      for (int64_t p = p0; p < p1; ++p)
        sums[p] = MIGA_FAST_CPU_CALL(ssim_plane_forward<T>, xp + p * plane, yp + p * plane, gm.h, gm.w, gm.pad,
                                     k.win.data(), static_cast<int>(win_size), k.c1, k.c2, k.lum, scratch);
    });
  });
  return per_sample_mean(sums, gm, x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ssim_value_and_grad_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                       const at::Tensor& window, double data_range,
                                                                       double k1, double k2, bool same_padding,
                                                                       bool cs_only) {
  check(x_in, y_in, window, same_padding);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), win_t = window.contiguous();
  const int64_t win_size = win_t.size(0);
  const Geometry gm = geometry(x, win_size, same_padding);
  at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
  std::vector<double> sums(gm.b * gm.c);
  const double n = static_cast<double>(gm.c * gm.ho * gm.wo);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "miga_fast_ssim_value_and_grad_cpu", [&] {
    using T = scalar_t;
    const Constants<T> k(win_t, data_range, k1, k2, cs_only);
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    T* gyp = gy.data_ptr<T>();
    const int64_t plane = gm.h * gm.w;
    const T gs = static_cast<T>(1.0 / n);  // value_b is the mean over its C planes' maps
    at::parallel_for(0, gm.b * gm.c, 1, [&](int64_t p0, int64_t p1) {
      std::vector<T> scratch;
      for (int64_t p = p0; p < p1; ++p)
        sums[p] = MIGA_FAST_CPU_CALL(ssim_plane_value_and_grad<T>, xp + p * plane, yp + p * plane, gm.h, gm.w, gm.pad,
                                     k.win.data(), static_cast<int>(win_size), k.c1, k.c2, k.lum, gs, gxp + p * plane,
                                     gyp + p * plane, scratch);
    });
  });
  return {per_sample_mean(sums, gm, x.scalar_type()), gx, gy};
}

// Per sample, the largest t in [0, 1] with SSIM(x, x + t delta) >= tau: the ball moments
// of every plane once (double; planes in parallel), then `rounds` rounds of `candidates`
// scales per sample (samples in parallel), each round keeping the largest feasible
// candidate and refining up to the next one (reference/ssim.py: ssim_ball_scale).
at::Tensor ssim_ball_scale_cpu(const at::Tensor& delta_in, const at::Tensor& x_in, const at::Tensor& window,
                               const at::Tensor& tau_in, double data_range, double k1, double k2, bool same_padding,
                               int64_t candidates, int64_t rounds) {
  check_ball_scale_inputs(delta_in, x_in, window, tau_in, same_padding, candidates, rounds, c10::DeviceType::CPU,
                          std::numeric_limits<int>::max());
  const int64_t k = window.size(0);
  const at::Tensor x = x_in.contiguous(), delta = delta_in.contiguous(), tau = tau_in.contiguous();
  const at::Tensor win = window.contiguous();
  const Geometry gm = geometry(x, k, same_padding);
  const int64_t ms = gm.ho * gm.wo, plane = gm.h * gm.w;
  std::vector<double> moments(static_cast<size_t>(gm.b * gm.c * 5 * ms));
  const double* g = win.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "miga_fast_ssim_ball_moments_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dp = delta.data_ptr<scalar_t>();
    at::parallel_for(0, gm.b * gm.c, 1, [&](int64_t p0, int64_t p1) {
      std::vector<double> scratch;
      for (int64_t p = p0; p < p1; ++p)
        MIGA_FAST_CPU_CALL(ball_plane_moments<scalar_t>, xp + p * plane, dp + p * plane, gm.h, gm.w, gm.pad, g,
                           static_cast<int>(k), moments.data() + p * 5 * ms, scratch);
    });
  });
  const double c1 = (k1 * data_range) * (k1 * data_range), c2 = (k2 * data_range) * (k2 * data_range);
  const double n = static_cast<double>(gm.c * ms);
  at::Tensor out = at::empty({gm.b}, x.options().dtype(at::kDouble));
  double* op = out.data_ptr<double>();
  const double* tp = tau.data_ptr<double>();
  const int nt = static_cast<int>(candidates);
  at::parallel_for(0, gm.b, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> ts(nt), acc(nt);
    for (int64_t b = b0; b < b1; ++b) {
      double lo = 0.0, hi = 1.0;
      for (int64_t r = 0; r < rounds; ++r) {
        for (int q = 0; q < nt; ++q) ts[q] = lo + (hi - lo) * (static_cast<double>(q) / (nt - 1));
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t c = 0; c < gm.c; ++c)
          MIGA_FAST_CPU_CALL(ball_ssim_sums, moments.data() + (b * gm.c + c) * 5 * ms, ms, ts.data(), nt, c1, c2,
                             acc.data());
        int last = 0;  // t = lo is feasible
        for (int q = 1; q < nt; ++q)
          if (acc[q] / n >= tp[b]) last = q;
        const double new_lo = ts[last];
        hi = ts[std::min(last + 1, nt - 1)];
        lo = new_lo;
      }
      op[b] = lo;
    }
  });
  return out.to(x.scalar_type());
}

// In place: the window ball of every (b, c) plane (planes in parallel), then the box.
void ssim_window_ball_project_cpu(at::Tensor& delta, const at::Tensor& x_in, const at::Tensor& gamma_in, int64_t window,
                                  double c_pixel) {
  check_window_ball_inputs(delta, x_in, gamma_in, window, c10::DeviceType::CPU);
  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous();
  at::Tensor d = delta.is_contiguous() ? delta : delta.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "miga_fast_ssim_window_ball_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* dp = d.data_ptr<T>();
    const T* gp = gamma.data_ptr<T>();
    const int64_t gstride = gamma.size(0) == 1 ? 0 : 1;
    at::parallel_for(0, B * C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const T g = gp[(p / C) * gstride];
        MIGA_FAST_CPU_CALL(window_ball_plane<T>, dp + p * H * W, xp + p * H * W, H, W, window, (T(1) - g) / g,
                           static_cast<T>(c_pixel));
      }
    });
  });
  if (!d.is_same(delta)) delta.copy_(d);
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("ssim_window_ball_project_", &ssim_window_ball_project_cpu);
  m.impl("ssim", &ssim_cpu);
  m.impl("ssim_value_and_grad", &ssim_value_and_grad_cpu);
  m.impl("ssim_ball_scale", &ssim_ball_scale_cpu);
}

}  // namespace miga_fast
