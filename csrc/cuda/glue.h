// What the torch glue of the CUDA kernels (csrc/cuda/<family>.cpp) needs from c10's CUDA
// layer, or, in the emulated build (MIGA_FAST_CUDA_EMULATION, csrc/emulation/), CPU
// stand-ins: the same glue then runs the same kernels on CPU tensors, registered as
// torch.ops.miga_fast_emu.* (tests only).
#pragma once

#include <c10/core/Device.h>
#include <torch/library.h>

#if defined(MIGA_FAST_CUDA_EMULATION)
#include "device.h"

namespace miga_fast {
namespace glue {
constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline cudaStream_t current_stream() { return nullptr; }
}  // namespace glue
}  // namespace miga_fast
#define MIGA_FAST_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(miga_fast_emu, CPU, m)

#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

namespace miga_fast {
namespace glue {
constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
}  // namespace glue
}  // namespace miga_fast
#define MIGA_FAST_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(miga_fast, CUDA, m)
#endif
