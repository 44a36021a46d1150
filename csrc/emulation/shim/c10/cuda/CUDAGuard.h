// The emulated build's <c10/cuda/CUDAGuard.h>: the CUDA glue (csrc/cuda/<family>.cpp)
// runs on CPU tensors, registered as CPU kernels of torch.ops.miga_fast_emu, so there is no
// device to switch to.
#pragma once

#include <c10/core/Device.h>
#include <torch/library.h>

#define MIGA_FAST_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(miga_fast_emu, CPU, m)
#define MIGA_FAST_GLUE_DEVICE c10::DeviceType::CPU

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10
