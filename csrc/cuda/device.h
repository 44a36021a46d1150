// What the .cu files include instead of <cuda_runtime.h> directly: the CUDA runtime, two
// macros so that a kernel launch and the dynamic shared memory read the same in every
// build, and cached device attributes (sm_count(), device_attribute<...>()).
//   MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)
//   MIGA_FAST_DYNAMIC_SHARED(name);   // unsigned char* name: the dynamic shared memory
//   MIGA_FAST_SHARED(name, type);     // a static shared variable (never __shared__ directly:
//                                     // the emulator must see it to poison it)
// The macros are defined here unless the <cuda_runtime.h> found first on the include path
// defines them (the test build's emulator does: csrc/emulation/shim/). This header knows
// nothing of that build.
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#ifndef MIGA_FAST_LAUNCH
#define MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#endif
#ifndef MIGA_FAST_DYNAMIC_SHARED
#define MIGA_FAST_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
#ifndef MIGA_FAST_SHARED
#define MIGA_FAST_SHARED(name, ...) \
  using name##_type = __VA_ARGS__;  \
  __shared__ name##_type name
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

// The most shared memory a block may opt into (48 KiB if unknown).
inline size_t shared_optin_limit() {
  return static_cast<size_t>(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024));
}

// Opts `kernel` into `bytes` of dynamic shared memory when they and its `static_bytes` of
// static shared memory exceed the default 48 KiB a block may have in all; once per kernel,
// device and size (the largest asked for so far): no runtime call on later launches.
template <typename K>
cudaError_t allow_shared(K* kernel, size_t bytes, size_t static_bytes = 0) {
  if (bytes + static_bytes <= 48 * 1024) return cudaSuccess;
  struct Entry {
    const void* kernel;
    int device;
    size_t bytes;
  };
  static std::mutex lock;
  static std::vector<Entry> granted;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const std::lock_guard<std::mutex> guard(lock);
  for (const Entry& e : granted)
    if (e.kernel == reinterpret_cast<const void*>(kernel) && e.device == device && e.bytes >= bytes) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) granted.push_back({reinterpret_cast<const void*>(kernel), device, bytes});
  return err;
}

}  // namespace cuda
}  // namespace miga_fast
