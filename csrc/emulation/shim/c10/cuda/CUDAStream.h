// The emulated build's <c10/cuda/CUDAStream.h>: one (null) stream; the emulator runs each
// launch to completion before returning. It brings in the emulated runtime (the shim's
// <cuda_runtime.h>), so that the glue's cudaGetErrorString reports the emulator's message.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
