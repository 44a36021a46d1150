// CPU kernels of the projection family (docs/algorithms.md §1). The loops are in
// projection_loops.h, built for plain x86-64 and for AVX2 and chosen at run time.
//
// l-inf: one pass over memory, split by at::parallel_for into chunks that never
// straddle a sample, so the per-sample eps and step are loop constants and the inner
// loops vectorise. l2 and MI-FGSM: one per-sample reduction (double accumulators, a
// fixed order, so results repeat bit for bit), then one update pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/projection_checks.h"
#include "../common/projection_math.h"
#include "dispatch.h"

namespace miga_fast {
namespace {

// Per-sample chunks of at most this many elements per task.
constexpr int64_t kGrain = 1 << 15;

// (No FMA target: contracting (d + c*g)*f would change the rounding between machines.)
#define MIGA_FAST_LOOPS "projection_loops.h"
#include "instantiate_loops.h"

// Shared driver: checks, contiguous views, dtype dispatch, write-back of strided outputs.
void run(ProjectionKind kind, at::Tensor& delta, at::Tensor* momentum, const at::Tensor* grad, const at::Tensor& x,
         const at::Tensor& eps, const at::Tensor* alpha, double mu, double direction) {
  TORCH_CHECK(delta.device().is_cpu(), "miga_fast: CPU kernel called with `delta` on ", delta.device());
  TORCH_CHECK(delta.scalar_type() == at::kFloat || delta.scalar_type() == at::kDouble,
              "miga_fast: the CPU kernels take float32 or float64, got ", delta.scalar_type(),
              " (float16/bfloat16 run on CUDA)");
  const ProjectionCall c(delta, momentum, grad, x, eps, alpha);
  if (c.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(delta.scalar_type(), "miga_fast_projection_cpu", [&] {
    using T = scalar_t;
    T* dp = c.delta.data_ptr<T>();
    const T* gp = grad != nullptr ? c.grad.data_ptr<T>() : nullptr;
    const T* xp = c.x.data_ptr<T>();
    const T* ep = c.eps.data_ptr<T>();
    const T* ap = c.alpha.data_ptr<T>();
    const int64_t es = c.eps_stride(), as = c.alpha_stride();
    const T dir = static_cast<T>(direction);
    switch (kind) {
      case ProjectionKind::kLinf:
        MIGA_FAST_CPU_CALL(linf_kernel<T>, dp, gp, xp, ep, es, ap, as, dir, c.batch, c.n);
        break;
      case ProjectionKind::kLinfImage:
        MIGA_FAST_CPU_CALL(linf_image_kernel<T>, dp, gp, xp, ep, es, ap, as, dir, c.batch, c.n);
        break;
      case ProjectionKind::kL2:
        MIGA_FAST_CPU_CALL(l2_kernel<T>, dp, gp, xp, ep, es, ap, as, dir, c.batch, c.n);
        break;
      case ProjectionKind::kMomentum:
        MIGA_FAST_CPU_CALL(mi_fgsm_kernel<T>, dp, c.momentum.data_ptr<T>(), gp, xp, ep, es, ap, as, static_cast<T>(mu),
                           dir, c.batch, c.n);
        break;
    }
  });
  c.write_back(delta, momentum);
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) { ProjectionOps<&run>::register_all(m); }

}  // namespace miga_fast
