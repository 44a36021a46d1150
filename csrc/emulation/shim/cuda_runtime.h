// The emulated build's <cuda_runtime.h> (this folder comes first on its include path):
// the emulator, and the launch and shared-memory macros csrc/cuda/device.h would otherwise
// define.
#pragma once

#define MIGA_FAST_CUDA_EMULATION 1
#include "../cuda_emulator.h"

#define MIGA_FAST_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::miga_fast::emu::launcher(grid, block, shared_bytes, __VA_ARGS__)
#define MIGA_FAST_DYNAMIC_SHARED(name) unsigned char* name = ::miga_fast::emu::dynamic_shared()
#define MIGA_FAST_SHARED(name, ...) \
  using name##_type = __VA_ARGS__;  \
  name##_type& name =               \
      *static_cast<name##_type*>(::miga_fast::emu::static_shared(sizeof(name##_type), alignof(name##_type)))
