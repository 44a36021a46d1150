// What the .cu files include instead of <cuda_runtime.h>: the CUDA runtime, or, in the
// emulated build that tests the kernels on a CPU (MIGA_FAST_CUDA_EMULATION, see
// csrc/emulation/), the emulator. Kernels use two macros so both builds read the same:
//   MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)
//   MIGA_FAST_DYNAMIC_SHARED(name);   // unsigned char* name: the dynamic shared memory
// and cached device attributes (sm_count(), device_attribute<...>()).
#pragma once

#if defined(MIGA_FAST_CUDA_EMULATION)
#include "../emulation/cuda_emulator.h"
#define MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::miga_fast::emu::launcher(grid, block, shared_bytes, __VA_ARGS__)
#define MIGA_FAST_DYNAMIC_SHARED(name) unsigned char* name = ::miga_fast::emu::dynamic_shared()
#else
#include <cuda_runtime.h>
#define MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define MIGA_FAST_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace miga_fast {
namespace cuda {

// An attribute of the current device, queried once per device (`fallback` if the query
// fails): no runtime call on the hot path after the first.
template <cudaDeviceAttr Attr>
inline int device_attribute(int fallback) {
  static int values[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return fallback;
  if (values[dev] == 0) {
    int v = 0;
    values[dev] = cudaDeviceGetAttribute(&v, Attr, dev) == cudaSuccess && v > 0 ? v : fallback;
  }
  return values[dev];
}

// Multiprocessors (132, an H100's, if unknown; the emulator reports 2), for sizing grids.
inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(132); }

}  // namespace cuda
}  // namespace miga_fast
