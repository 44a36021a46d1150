// Torch glue of the CUDA projection kernels: checks, contiguity, the current stream,
// the workspace, dtype mapping. The kernels are in projection_kernels.cu (raw pointers only).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>

#include "../common/projection_checks.h"
#include "projection.h"
#include "glue.h"

namespace miga_fast {
namespace {

using cuda::ProjectionArgs;

void run(ProjectionKind kind, at::Tensor& delta, at::Tensor* momentum, const at::Tensor* grad, const at::Tensor& x,
         const at::Tensor& eps, const at::Tensor* alpha, double mu, double direction) {
  TORCH_CHECK(delta.device().type() == glue::kDevice, "miga_fast: CUDA kernel called with `delta` on ", delta.device());
  const cuda::DType dtype = glue::to_dtype(delta.scalar_type());
  const glue::DeviceGuard guard(delta.device());
  const ProjectionCall c(delta, momentum, grad, x, eps, alpha);
  if (c.n == 0) return;

  ProjectionArgs a;
  a.delta = c.delta.data_ptr();
  a.momentum = momentum != nullptr ? c.momentum.data_ptr() : nullptr;
  a.grad = grad != nullptr ? c.grad.data_ptr() : nullptr;
  a.x = c.x.data_ptr();
  a.eps = c.eps.data_ptr();
  a.alpha = c.alpha.data_ptr();
  a.eps_stride = c.eps_stride();
  a.alpha_stride = c.alpha_stride();
  a.batch = c.batch;
  a.n = c.n;
  a.mu = mu;
  a.direction = direction;
  a.image = kind == ProjectionKind::kLinfImage;

  const cudaStream_t stream = glue::current_stream();
  at::Tensor workspace;
  if (kind == ProjectionKind::kL2 || kind == ProjectionKind::kMomentum) {
    const auto bytes = static_cast<int64_t>(cuda::projection_workspace_bytes(a.batch, a.n));
    workspace = at::empty({bytes}, delta.options().dtype(at::kByte));
    // Tests poison the partials (all-ones bytes read as NaN doubles): any partial a
    // kernel failed to write shows up as NaN in delta.
    if (std::getenv("MIGA_FAST_POISON") != nullptr) workspace.fill_(255);
    a.workspace = workspace.data_ptr();
  }
  cudaError_t err = cudaSuccess;
  switch (kind) {
    case ProjectionKind::kLinf:
    case ProjectionKind::kLinfImage:
      err = cuda::launch_linf(dtype, a, stream);
      break;
    case ProjectionKind::kL2:
      err = cuda::launch_l2(dtype, a, stream);
      break;
    case ProjectionKind::kMomentum:
      err = cuda::launch_mi_fgsm(dtype, a, stream);
      break;
  }
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA projection kernel failed: ", cudaGetErrorString(err));
  c.write_back(delta, momentum);
}

}  // namespace

MIGA_FAST_CUDA_IMPL(m) { ProjectionOps<&run>::register_all(m); }

}  // namespace miga_fast
