// Kernels with deliberate CUDA bugs, for tests that the emulator reports them:
// torch.ops.miga_fast_emu_selftest.run(kind) -> float32 [64], kind 0: correct (a shared
// memory shift with a barrier), 1: the same without the barrier (a race), 2: a barrier
// only half the block reaches, 3: threads returning before a barrier, 4: a warp shuffle
// reading a lane that has exited, 5: a block of 2048 threads, 6: 64 KiB of dynamic shared
// memory without opting in, 7: the same after cudaFuncSetAttribute (runs), 8: 300 KiB
// (more than any opt-in allows), 9: asynchronous copies (cp.async) waited for, then a
// barrier, 10: the same read before the wait (a race), 11: a copy group never waited for,
// 12: a misaligned asynchronous copy.
#include <ATen/ATen.h>
#include <cuda_pipeline_primitives.h>
#include <torch/library.h>

#include "../cuda/device.h"

namespace {

constexpr int kThreads = 64;

__global__ void shift_kernel(float* out, int kind) {
  MIGA_FAST_SHARED(s, float[kThreads]);
  const int t = threadIdx.x;
  if (kind == 3 && t >= 48) return;
  s[t] = static_cast<float>(t);
  if (kind == 0 || kind == 3 || kind == 4) __syncthreads();
  if (kind == 2 && t < 32) __syncthreads();
  float v = s[(t + 1) % kThreads];
  if (kind == 4) {
    if (t % 32 == 31) return;
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[t] = v;
}

__global__ void dynamic_shared_kernel(float* out) {
  MIGA_FAST_DYNAMIC_SHARED(smem_raw);
  float* s = reinterpret_cast<float*>(smem_raw);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % kThreads];
}

// Each thread copies element t of `in` into shared memory asynchronously, then reads
// element t + 1 (another thread's copy).
__global__ void async_copy_kernel(const float* in, float* out, int kind) {
  struct alignas(16) Buffer {
    float x[kThreads + 4];
  };
  MIGA_FAST_SHARED(buffer, Buffer);
  float* s = buffer.x;
  const int t = threadIdx.x;
  if (kind == 12)
    __pipeline_memcpy_async(&s[t + 1], in + t, 16);
  else
    __pipeline_memcpy_async(&s[t], in + t, 4);
  __pipeline_commit();
  if (kind == 9) __pipeline_wait_prior(0);
  __syncthreads();
  out[t] = s[(t + 1) % kThreads];
  if (kind == 10) __pipeline_wait_prior(0);
}

at::Tensor run(int64_t kind) {
  at::Tensor out = at::full({kThreads}, -1.0f);
  float* o = out.data_ptr<float>();
  cudaError_t err = cudaSuccess;
  if (kind <= 4) {
    MIGA_FAST_LAUNCH(dim3(1), dim3(kThreads), 0, nullptr, shift_kernel)(o, static_cast<int>(kind));
  } else if (kind >= 9) {
    const at::Tensor in = at::arange(kThreads + 4, at::kFloat);
    MIGA_FAST_LAUNCH(dim3(1), dim3(kThreads), 0, nullptr, async_copy_kernel)(in.data_ptr<float>(), o,
                                                                             static_cast<int>(kind));
  } else if (kind == 5) {
    MIGA_FAST_LAUNCH(dim3(1), dim3(2048), 0, nullptr, shift_kernel)(o, 0);
  } else {
    const size_t bytes = kind == 8 ? 300 * 1024 : 64 * 1024;
    if (kind >= 7)
      err = cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes));
    TORCH_CHECK(err == cudaSuccess, "emulated kernel failed: cudaFuncSetAttribute refused ", bytes, " bytes");
    MIGA_FAST_LAUNCH(dim3(1), dim3(kThreads), bytes, nullptr, dynamic_shared_kernel)(o);
  }
  err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated kernel failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY(miga_fast_emu_selftest, m) { m.def("run(int kind) -> Tensor", &run); }
