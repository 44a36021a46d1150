// Launchers of the CUDA projection kernels (projection_kernels.cu). Raw pointers and
// CUDA types only, so the kernel file compiles without torch's headers (seconds, not
// minutes); the torch glue is projection.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace miga_fast {
namespace cuda {

struct ProjectionArgs {
  void* delta = nullptr;
  void* momentum = nullptr;    // MI-FGSM only
  const void* grad = nullptr;  // null: ball and box only (project_*)
  const void* x = nullptr;
  const void* eps = nullptr;    // compute dtype: double for float64 data, else float
  const void* alpha = nullptr;  // compute dtype; unused without grad
  int64_t eps_stride = 0;       // 0: one value for the batch; 1: one per sample
  int64_t alpha_stride = 0;
  int64_t batch = 0;
  int64_t n = 0;  // elements per sample
  double mu = 0.0;
  double direction = 1.0;
  bool image = false;         // l-inf step only: `delta` holds the adversarial image x + delta
  void* workspace = nullptr;  // reduction partials, projection_workspace_bytes() of them
};

// Bytes of device workspace the l2 and MI-FGSM launchers need (0 for l-inf).
size_t projection_workspace_bytes(int64_t batch, int64_t n);

cudaError_t launch_linf(DType dtype, const ProjectionArgs& args, cudaStream_t stream);
cudaError_t launch_l2(DType dtype, const ProjectionArgs& args, cudaStream_t stream);
cudaError_t launch_mi_fgsm(DType dtype, const ProjectionArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
