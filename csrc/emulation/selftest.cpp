// Kernels with deliberate CUDA bugs, for tests that the emulator reports them:
// torch.ops.miga_fast_emu_selftest.run(kind) -> float32 [64], kind 0: correct (a shared
// memory shift with a barrier), 1: the same without the barrier (a race), 2: a barrier
// only half the block reaches, 3: threads returning before a barrier, 4: a warp shuffle
// reading a lane that has exited.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cuda/device.h"

namespace {

constexpr int kThreads = 64;

__global__ void shift_kernel(float* out, int kind) {
  __shared__ float s[kThreads];
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

at::Tensor run(int64_t kind) {
  at::Tensor out = at::full({kThreads}, -1.0f);
  MIGA_FAST_LAUNCH(dim3(1), dim3(kThreads), 0, nullptr, shift_kernel)(out.data_ptr<float>(), static_cast<int>(kind));
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "emulated kernel failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY(miga_fast_emu_selftest, m) { m.def("run(int kind) -> Tensor", &run); }
