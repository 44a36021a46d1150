// Torch glue of the CUDA SSIM kernels (ssim_kernels.cu): checks, contiguity, the current
// stream, the per-block partial sums and the per-sample means.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <tuple>

#include "../common/ssim_checks.h"
#include "ssim.h"
#include "glue.h"

namespace miga_fast {
namespace {

struct Prepared {
  at::Tensor x, y, window, partials;
  cuda::SsimArgs args;
};

Prepared prepare(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& window, double data_range, double k1,
                 double k2, bool same_padding, bool cs_only, bool with_grad) {
  check_ssim_inputs(x_in, y_in, window, same_padding, glue::kDevice);
  const int64_t k = window.size(0);
  Prepared p;
  p.x = x_in.contiguous();
  p.y = y_in.contiguous();
  p.window = window.contiguous();
  cuda::SsimArgs& a = p.args;
  a.x = p.x.data_ptr();
  a.y = p.y.data_ptr();
  a.window = p.window.data_ptr();
  a.batch = p.x.size(0);
  a.channels = p.x.size(1);
  a.h = p.x.size(2);
  a.w = p.x.size(3);
  a.k = static_cast<int>(k);
  a.pad = same_padding ? static_cast<int>(k / 2) : 0;
  a.c1 = (k1 * data_range) * (k1 * data_range);
  a.c2 = (k2 * data_range) * (k2 * data_range);
  a.cs_only = cs_only;
  const int64_t ho = a.h + 2 * a.pad - k + 1, wo = a.w + 2 * a.pad - k + 1;
  a.gs = 1.0 / static_cast<double>(p.x.size(1) * ho * wo);
  a.is_double = p.x.scalar_type() == at::kDouble;
  const size_t need = cuda::ssim_shared_bytes(a, with_grad), limit = cuda::ssim_shared_limit();
  TORCH_CHECK(need <= limit, "miga_fast.ssim: a ", k, "-tap window needs ", need,
              " bytes of shared memory per block, more than this GPU's ", limit,
              "; use the 'triton' or 'reference' backend");
  p.partials = at::empty({a.batch, cuda::ssim_tiles(a, with_grad)}, p.x.options().dtype(at::kDouble));
  if (std::getenv("MIGA_FAST_POISON") != nullptr) p.partials.fill_(std::numeric_limits<double>::quiet_NaN());
  a.partials = p.partials.data_ptr<double>();
  return p;
}

at::Tensor per_sample(const Prepared& p) { return (p.partials.sum(1) * p.args.gs).to(p.x.scalar_type()); }

void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA SSIM kernel failed: ", cudaGetErrorString(err));
}

at::Tensor ssim_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window, double data_range, double k1,
                     double k2, bool same_padding, bool cs_only) {
  const glue::DeviceGuard guard(x.device());
  Prepared p = prepare(x, y, window, data_range, k1, k2, same_padding, cs_only, false);
  check(cuda::launch_ssim(p.args, false, glue::current_stream()));
  return per_sample(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ssim_value_and_grad_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                        const at::Tensor& window, double data_range,
                                                                        double k1, double k2, bool same_padding,
                                                                        bool cs_only) {
  const glue::DeviceGuard guard(x.device());
  Prepared p = prepare(x, y, window, data_range, k1, k2, same_padding, cs_only, true);
  at::Tensor gx = at::empty_like(p.x), gy = at::empty_like(p.y);
  if (std::getenv("MIGA_FAST_POISON") != nullptr) {
    gx.fill_(std::numeric_limits<double>::quiet_NaN());
    gy.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  p.args.gx = gx.data_ptr();
  p.args.gy = gy.data_ptr();
  check(cuda::launch_ssim(p.args, true, glue::current_stream()));
  return {per_sample(p), gx, gy};
}

// Per sample the largest t in [0, 1] with SSIM(x, x + t delta) >= tau (ssim_kernels.cu:
// the ball moments once, then per round one sums and one choose kernel; no host sync).
at::Tensor ssim_ball_scale_cuda(const at::Tensor& delta_in, const at::Tensor& x_in, const at::Tensor& window,
                                const at::Tensor& tau_in, double data_range, double k1, double k2, bool same_padding,
                                int64_t candidates, int64_t rounds) {
  const char* op = "miga_fast.ssim_ball_scale";
  check_ball_scale_inputs(delta_in, x_in, window, tau_in, same_padding, candidates, rounds, glue::kDevice,
                          cuda::kMaxBallCandidates);
  const int64_t k = window.size(0);
  const glue::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), delta = delta_in.contiguous(), tau = tau_in.contiguous();
  const at::Tensor win = window.contiguous();
  cuda::BallArgs a;
  cuda::SsimArgs& g = a.geometry;
  g.x = x.data_ptr();
  g.y = delta.data_ptr();
  g.window = win.data_ptr();
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.k = static_cast<int>(k);
  g.pad = same_padding ? static_cast<int>(k / 2) : 0;
  g.c1 = (k1 * data_range) * (k1 * data_range);
  g.c2 = (k2 * data_range) * (k2 * data_range);
  g.is_double = x.scalar_type() == at::kDouble;
  const size_t need = cuda::ssim_ball_shared_bytes(g), limit = cuda::ssim_shared_limit();
  TORCH_CHECK(need <= limit, op, ": a ", k, "-tap window needs ", need,
              " bytes of shared memory per block, more than "
              "this GPU's ",
              limit, "; use the 'triton' or 'reference' backend");
  const int64_t ho = g.h + 2 * g.pad - k + 1, wo = g.w + 2 * g.pad - k + 1;
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor moments = at::empty({g.batch * g.channels, 5, ho, wo}, f64);
  at::Tensor partials = at::empty({g.batch, cuda::ssim_ball_chunks(g), candidates}, f64);
  if (std::getenv("MIGA_FAST_POISON") != nullptr) {
    moments.fill_(std::numeric_limits<double>::quiet_NaN());
    partials.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  at::Tensor bounds = at::empty({g.batch, 2}, f64);
  bounds.select(1, 0).fill_(0.0);
  bounds.select(1, 1).fill_(1.0);
  a.tau = tau.data_ptr<double>();
  a.candidates = static_cast<int>(candidates);
  a.rounds = static_cast<int>(rounds);
  a.moments = moments.data_ptr<double>();
  a.partials = partials.data_ptr<double>();
  a.bounds = bounds.data_ptr<double>();
  check(cuda::launch_ssim_ball_scale(a, glue::current_stream()));
  return bounds.select(1, 0).to(x.scalar_type());
}

// In place: the window ball of every (b, c) plane, then the box.
void ssim_window_ball_project_cuda(at::Tensor& delta, const at::Tensor& x_in, const at::Tensor& gamma_in,
                                   int64_t window, double c_pixel) {
  check_window_ball_inputs(delta, x_in, gamma_in, window, glue::kDevice);
  const glue::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous();
  at::Tensor d = delta.is_contiguous() ? delta : delta.contiguous();
  cuda::WindowBallArgs a;
  a.delta = d.data_ptr();
  a.x = x.data_ptr();
  a.gamma = gamma.data_ptr();
  a.gamma_stride = gamma.size(0) == 1 ? 0 : 1;
  a.batch = x.size(0);
  a.channels = x.size(1);
  a.h = x.size(2);
  a.w = x.size(3);
  TORCH_CHECK(window <= 32768,
              "miga_fast.ssim_window_ball_project_: window must be <= 32768 (the CUDA kernel's "
              "per-window index math is 32-bit), got ",
              window);
  a.window = window;
  a.c_pixel = c_pixel;
  a.is_double = x.scalar_type() == at::kDouble;
  check(cuda::launch_ssim_window_ball(a, glue::current_stream()));
  if (!d.is_same(delta)) delta.copy_(d);
}

}  // namespace

MIGA_FAST_CUDA_IMPL(m) {
  m.impl("ssim", &ssim_cuda);
  m.impl("ssim_value_and_grad", &ssim_value_and_grad_cuda);
  m.impl("ssim_ball_scale", &ssim_ball_scale_cuda);
  m.impl("ssim_window_ball_project_", &ssim_window_ball_project_cuda);
}

}  // namespace miga_fast
