// Torch glue of the CUDA sampler kernels: checks, contiguity, the current stream, the
// outputs (poisoned under MIGA_FAST_POISON), dtype mapping. The kernels are in
// sampler_kernels.cu (raw pointers only).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>

#include "../common/sampler_checks.h"
#include "glue.h"
#include "sampler.h"

namespace miga_fast {
namespace {

using cuda::SamplerArgs;

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

SamplerArgs args_of(const SamplerCall& c, double eta, double clip) {
  TORCH_CHECK(c.x.device().type() == glue::kDevice, "miga_fast: CUDA kernel called with `x` on ", c.x.device());
  SamplerArgs a;
  a.x = c.x.data_ptr();
  a.eps = ptr_or_null(c.eps);
  a.noise = ptr_or_null(c.noise);
  a.mask = ptr_or_null(c.mask);
  a.known = ptr_or_null(c.known);
  a.noise_known = ptr_or_null(c.noise_known);
  a.noise_jump = ptr_or_null(c.noise_jump);
  a.a_from = c.a_from.data_ptr();
  a.a_to = c.a_to.data_ptr();
  a.a_known = c.a_known.data_ptr();
  a.a_jump = c.a_jump.data_ptr();
  a.s_from = SamplerCall::stride_of(c.a_from);
  a.s_to = SamplerCall::stride_of(c.a_to);
  a.s_known = SamplerCall::stride_of(c.a_known);
  a.s_jump = SamplerCall::stride_of(c.a_jump);
  a.mode = c.mode;
  a.has_mask = c.has_mask;
  a.has_jump = c.has_jump;
  a.eta = eta;
  a.clip = clip;
  a.batch = c.batch;
  a.n = c.n;
  a.mask_n = c.mask_n;
  return a;
}

at::Tensor new_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Contiguous);
  if (std::getenv("MIGA_FAST_POISON") != nullptr) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA sampler kernel failed: ", cudaGetErrorString(err));
}

at::Tensor forward(const SamplerCall& c, double eta, double clip) {
  const cuda::DType dtype = glue::to_dtype(c.x.scalar_type());
  const glue::DeviceGuard guard(c.x.device());
  SamplerArgs a = args_of(c, eta, clip);
  at::Tensor out = new_output(c.x);
  a.out = out.data_ptr();
  check(cuda::launch_sampler_forward(dtype, a, glue::current_stream()));
  return out;
}

SamplerBackwardOut backward(const at::Tensor& grad, const SamplerCall& c, double eta, double clip, bool need_x,
                            bool need_eps, bool need_known) {
  const cuda::DType dtype = glue::to_dtype(c.x.scalar_type());
  const glue::DeviceGuard guard(c.x.device());
  SamplerArgs a = args_of(c, eta, clip);
  SamplerBackwardOut r;
  if (need_x) r.gx = new_output(c.x);
  if (need_eps) r.geps = new_output(c.x);
  if (need_known) r.gknown = new_output(c.x);
  a.grad = grad.data_ptr();
  a.gx = need_x ? r.gx.data_ptr() : nullptr;
  a.geps = need_eps ? r.geps.data_ptr() : nullptr;
  a.gknown = need_known ? r.gknown.data_ptr() : nullptr;
  check(cuda::launch_sampler_backward(dtype, a, glue::current_stream()));
  return r;
}

}  // namespace

MIGA_FAST_CUDA_IMPL(m) { SamplerOps<&forward, &backward>::register_all(m); }

}  // namespace miga_fast
