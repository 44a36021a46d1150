// The emulated build's <cuda_pipeline_primitives.h>: the asynchronous-copy primitives (cp.async) of
// the CUDA toolkit's header, on the emulator (cuda_emulator.h: a copy lands when its thread
// waits for it, and its destination holds poison until then).
#pragma once

#include <cstddef>

#include "cuda_runtime.h"

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align, size_t zfill = 0) {
  (void)zfill;
  ::miga_fast::emu::memcpy_async(dst_shared, src_global, size_and_align);
}
inline void __pipeline_commit() { ::miga_fast::emu::pipeline_commit(); }
inline void __pipeline_wait_prior(size_t prior) { ::miga_fast::emu::pipeline_wait_prior(prior); }
