// What the torch glue of the CUDA kernels (csrc/cuda/<family>.cpp) needs from c10's CUDA
// layer: the device type its checks expect, a device guard, the current stream, the
// registration macro, and the launchers' name for a tensor's element type (to_dtype).
// MIGA_FAST_CUDA_IMPL and MIGA_FAST_GLUE_DEVICE are defined here unless the
// <c10/cuda/CUDAGuard.h> found first on the include path defines them (the test build's
// emulator registers the same glue as CPU kernels of torch.ops.miga_fast_emu:
// csrc/emulation/shim/). This header knows nothing of that build.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "dtype.h"

#ifndef MIGA_FAST_CUDA_IMPL
#define MIGA_FAST_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(miga_fast, CUDA, m)
#endif
#ifndef MIGA_FAST_GLUE_DEVICE
#define MIGA_FAST_GLUE_DEVICE c10::DeviceType::CUDA
#endif

namespace miga_fast {
namespace glue {
constexpr c10::DeviceType kDevice = MIGA_FAST_GLUE_DEVICE;
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline cuda::DType to_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat:
      return cuda::DType::kFloat32;
    case c10::kDouble:
      return cuda::DType::kFloat64;
    case c10::kHalf:
      return cuda::DType::kFloat16;
    case c10::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "miga_fast: the CUDA kernels take float32, float64, float16 or bfloat16, got ", t);
  }
}
}  // namespace glue
}  // namespace miga_fast
