// What the .cu files include instead of <cuda_runtime.h> directly: the CUDA runtime, two
// macros so that a kernel launch and the dynamic shared memory read the same in every
// build, and cached device attributes (sm_count(), device_attribute<...>()).
//   MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)
//   MIGA_FAST_DYNAMIC_SHARED(name);   // unsigned char* name: the dynamic shared memory
// The macros are defined here unless the <cuda_runtime.h> found first on the include path
// defines them (the test build's emulator does: csrc/emulation/shim/). This header knows
// nothing of that build.
#pragma once

#include <cuda_runtime.h>

#ifndef MIGA_FAST_LAUNCH
#define MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#endif
#ifndef MIGA_FAST_DYNAMIC_SHARED
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
