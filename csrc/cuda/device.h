// What the .cu files include instead of <cuda_runtime.h>: the CUDA runtime, or, in the
// emulated build that tests the kernels on a CPU (MIGA_FAST_CUDA_EMULATION, see
// csrc/emulation/), the emulator. Kernels use two macros so both builds read the same:
//   MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)
//   MIGA_FAST_DYNAMIC_SHARED(name);   // unsigned char* name: the dynamic shared memory
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
