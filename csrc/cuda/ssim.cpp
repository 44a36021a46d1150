// Torch glue of the CUDA SSIM kernels (ssim_kernels.cu): checks, contiguity, the current
// stream, the per-tile partials and the partial-map workspace, the per-sample means.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <tuple>

#include "../common/ssim_checks.h"
#include "ssim.h"

namespace miga_fast {
namespace {

struct Prepared {
  at::Tensor x, y, window, partials;
  cuda::SsimArgs args;
};

Prepared prepare(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& window, double data_range,
                 double k1, double k2, bool same_padding) {
  check_ssim_inputs(x_in, y_in, window, same_padding, c10::DeviceType::CUDA);
  const int64_t k = window.size(0);
  Prepared p;
  p.x = x_in.contiguous();
  p.y = y_in.contiguous();
  p.window = window.contiguous();
  cuda::SsimArgs& a = p.args;
  a.x = p.x.data_ptr();
  a.y = p.y.data_ptr();
  a.window = p.window.data_ptr();
  a.planes = p.x.size(0) * p.x.size(1);
  a.h = p.x.size(2);
  a.w = p.x.size(3);
  a.k = static_cast<int>(k);
  a.pad = same_padding ? static_cast<int>(k / 2) : 0;
  a.c1 = (k1 * data_range) * (k1 * data_range);
  a.c2 = (k2 * data_range) * (k2 * data_range);
  const int64_t ho = a.h + 2 * a.pad - k + 1, wo = a.w + 2 * a.pad - k + 1;
  a.gs = 1.0 / static_cast<double>(p.x.size(1) * ho * wo);
  a.is_double = p.x.scalar_type() == at::kDouble;
  TORCH_CHECK(cuda::ssim_shared_bytes(a) > 0, "miga_fast.ssim: a ", k,
              "-tap window needs more shared memory than one block has; use the 'triton' or 'reference' backend");
  p.partials = at::empty({a.planes, cuda::ssim_tiles(a)}, p.x.options().dtype(at::kDouble));
  if (std::getenv("MIGA_FAST_POISON") != nullptr) p.partials.fill_(std::numeric_limits<double>::quiet_NaN());
  a.partials = p.partials.data_ptr<double>();
  return p;
}

at::Tensor per_sample(const Prepared& p) {
  const int64_t b = p.x.size(0), c = p.x.size(1);
  return (p.partials.sum(1).reshape({b, c}).sum(1) * p.args.gs).to(p.x.scalar_type());
}

void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA SSIM kernel failed: ", cudaGetErrorString(err));
}

at::Tensor ssim_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window, double data_range,
                     double k1, double k2, bool same_padding) {
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared p = prepare(x, y, window, data_range, k1, k2, same_padding);
  check(cuda::launch_ssim(p.args, false, c10::cuda::getCurrentCUDAStream().stream()));
  return per_sample(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ssim_value_and_grad_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                      const at::Tensor& window, double data_range,
                                                                      double k1, double k2, bool same_padding) {
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared p = prepare(x, y, window, data_range, k1, k2, same_padding);
  const int64_t ho = p.args.h + 2 * p.args.pad - p.args.k + 1, wo = p.args.w + 2 * p.args.pad - p.args.k + 1;
  at::Tensor pm = at::empty({4, p.args.planes, ho, wo}, p.x.options());
  if (std::getenv("MIGA_FAST_POISON") != nullptr) pm.fill_(std::numeric_limits<double>::quiet_NaN());
  at::Tensor gx = at::empty_like(p.x), gy = at::empty_like(p.y);
  p.args.pm = pm.data_ptr();
  p.args.gx = gx.data_ptr();
  p.args.gy = gy.data_ptr();
  check(cuda::launch_ssim(p.args, true, c10::cuda::getCurrentCUDAStream().stream()));
  return {per_sample(p), gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CUDA, m) {
  m.impl("ssim", &ssim_cuda);
  m.impl("ssim_value_and_grad", &ssim_value_and_grad_cuda);
}

}  // namespace miga_fast
