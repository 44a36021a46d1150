// Launchers of the CUDA sampler kernels (sampler_kernels.cu). Raw pointers and CUDA types
// only, so the kernel file compiles without torch's headers; the torch glue is sampler.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace miga_fast {
namespace cuda {

struct SamplerArgs {
  // forward inputs (null when absent) and output
  const void* x = nullptr;
  const void* eps = nullptr;
  const void* noise = nullptr;
  const void* mask = nullptr;
  const void* known = nullptr;
  const void* noise_known = nullptr;
  const void* noise_jump = nullptr;
  void* out = nullptr;
  // backward: the upstream gradient and the outputs wanted (null: not wanted)
  const void* grad = nullptr;
  void* gx = nullptr;
  void* geps = nullptr;
  void* gknown = nullptr;
  // per-sample alpha-bars in the compute dtype (double for float64 data, else float)
  const void* a_from = nullptr;
  const void* a_to = nullptr;
  const void* a_known = nullptr;
  const void* a_jump = nullptr;
  int64_t s_from = 0, s_to = 0, s_known = 0, s_jump = 0;  // 0: one value for the batch
  int mode = 0;                                           // sampler_math.h: SamplerMode
  bool has_mask = false, has_jump = false;
  double eta = 0.0, clip = 0.0;
  int64_t batch = 0, n = 0, mask_n = 0;  // n: elements per sample; mask_n: per mask plane
};

cudaError_t launch_sampler_forward(DType dtype, const SamplerArgs& args, cudaStream_t stream);
cudaError_t launch_sampler_backward(DType dtype, const SamplerArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
