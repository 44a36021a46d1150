// CPU kernels of the sampler family (docs/algorithms.md §5): one pass over memory, the
// loops in sampler_loops.h (built for plain x86-64 and for AVX2, chosen at run time),
// the math in ../common/sampler_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "../common/sampler_checks.h"
#include "../common/sampler_math.h"
#include "dispatch.h"

namespace miga_fast {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task, at least

// The pointers of one call (absent inputs null) and the per-sample alpha-bars.
template <typename T>
struct SamplerPtrs {
  T* out = nullptr;
  const T *x = nullptr, *eps = nullptr, *noise = nullptr, *mask = nullptr, *known = nullptr, *noise_known = nullptr,
          *noise_jump = nullptr;
  const T *a_from = nullptr, *a_to = nullptr, *a_known = nullptr, *a_jump = nullptr;
  int64_t s_from = 0, s_to = 0, s_known = 0, s_jump = 0;  // 0: one value for the batch
};

template <typename T>
SamplerCoef<T> coef_of(const SamplerPtrs<T>& p, int64_t b, int mode, bool mask, bool jump, T eta) {
  return sampler_coef<T>(mode, mask, jump, p.a_from[b * p.s_from], p.a_to[b * p.s_to], p.a_known[b * p.s_known],
                         p.a_jump[b * p.s_jump], eta);
}

// (No FMA target: contracting the affine updates would change the rounding between machines.)
#define MIGA_FAST_LOOPS "sampler_loops.h"
#include "instantiate_loops.h"

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
SamplerPtrs<T> pointers(const SamplerCall& c) {
  SamplerPtrs<T> p;
  p.x = c.x.data_ptr<T>();
  p.eps = ptr_or_null<T>(c.eps);
  p.noise = ptr_or_null<T>(c.noise);
  p.mask = ptr_or_null<T>(c.mask);
  p.known = ptr_or_null<T>(c.known);
  p.noise_known = ptr_or_null<T>(c.noise_known);
  p.noise_jump = ptr_or_null<T>(c.noise_jump);
  p.a_from = c.a_from.data_ptr<T>();
  p.a_to = c.a_to.data_ptr<T>();
  p.a_known = c.a_known.data_ptr<T>();
  p.a_jump = c.a_jump.data_ptr<T>();
  p.s_from = SamplerCall::stride_of(c.a_from);
  p.s_to = SamplerCall::stride_of(c.a_to);
  p.s_known = SamplerCall::stride_of(c.a_known);
  p.s_jump = SamplerCall::stride_of(c.a_jump);
  return p;
}

void check_cpu(const SamplerCall& c) {
  TORCH_CHECK(c.x.device().is_cpu(), "miga_fast: CPU kernel called with `x` on ", c.x.device());
  TORCH_CHECK(c.x.scalar_type() == at::kFloat || c.x.scalar_type() == at::kDouble,
              "miga_fast: the CPU kernels take float32 or float64, got ", c.x.scalar_type(),
              " (float16/bfloat16 run on CUDA)");
}

bool poison() { return std::getenv("MIGA_FAST_POISON") != nullptr; }

at::Tensor new_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Contiguous);
  if (poison()) out.fill_(std::numeric_limits<double>::quiet_NaN());  // any element not written shows as NaN
  return out;
}

at::Tensor forward(const SamplerCall& c, double eta, double clip) {
  check_cpu(c);
  at::Tensor out = new_output(c.x);
  if (c.n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(c.x.scalar_type(), "miga_fast_sampler_cpu", [&] {
    using T = scalar_t;
    SamplerPtrs<T> p = pointers<T>(c);
    p.out = out.data_ptr<T>();
    const bool has_clip = clip > 0.0, has_noise = p.noise != nullptr;
    MIGA_FAST_CPU_CALL(sampler_forward_kernel<T>, p, c.mode, c.has_mask, c.has_jump, has_clip, has_noise,
                       static_cast<T>(eta), static_cast<T>(clip), c.batch, c.n, c.mask_n);
  });
  return out;
}

SamplerBackwardOut backward(const at::Tensor& grad, const SamplerCall& c, double eta, double clip, bool need_x,
                            bool need_eps, bool need_known) {
  check_cpu(c);
  SamplerBackwardOut r;
  if (need_x) r.gx = new_output(c.x);
  if (need_eps) r.geps = new_output(c.x);
  if (need_known) r.gknown = new_output(c.x);
  if (c.n == 0) return r;
  AT_DISPATCH_FLOATING_TYPES(c.x.scalar_type(), "miga_fast_sampler_backward_cpu", [&] {
    using T = scalar_t;
    SamplerPtrs<T> p = pointers<T>(c);
    const T* g = grad.data_ptr<T>();
    T* gx = need_x ? r.gx.data_ptr<T>() : nullptr;
    T* ge = need_eps ? r.geps.data_ptr<T>() : nullptr;
    T* gk = need_known ? r.gknown.data_ptr<T>() : nullptr;
    const bool has_clip = clip > 0.0;
    MIGA_FAST_CPU_CALL(sampler_backward_kernel<T>, p, g, gx, ge, gk, c.mode, c.has_mask, c.has_jump, has_clip,
                       static_cast<T>(eta), static_cast<T>(clip), c.batch, c.n, c.mask_n);
  });
  return r;
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) { SamplerOps<&forward, &backward>::register_all(m); }

}  // namespace miga_fast
