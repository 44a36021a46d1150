// Launchers of the CUDA SSIM kernels (ssim_kernels.cu). Raw pointers and CUDA types only;
// the torch glue is ssim.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace miga_fast {
namespace cuda {

struct SsimArgs {
  const void* x = nullptr;       // [planes, h, w], float32 or float64 (is_double)
  const void* y = nullptr;
  const void* window = nullptr;  // [k], the data's dtype
  int64_t planes = 0, h = 0, w = 0;
  int k = 0, pad = 0;            // pad = k / 2 for "same", 0 for "valid"
  double c1 = 0, c2 = 0;
  double gs = 0;                 // the gradient's scale: 1 / (C * ho * wo)
  bool is_double = false;
  double* partials = nullptr;    // [planes, ssim_tiles()]: each tile's SSIM-map sum
  void* pm = nullptr;            // with gradients: [4, planes, ho, wo] partial maps (workspace)
  void* gx = nullptr;            // with gradients: [planes, h, w]
  void* gy = nullptr;
};

int64_t ssim_tiles(const SsimArgs& args);  // output tiles per plane
// Shared memory the kernels need, or 0 when the window is too large for one block.
size_t ssim_shared_bytes(const SsimArgs& args);

cudaError_t launch_ssim(const SsimArgs& args, bool with_grad, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
