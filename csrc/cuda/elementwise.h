// What the element-wise CUDA kernels share (projection_kernels.cu, sampler_kernels.cu):
// the compute type of each storage type (float, double for float64 data), loads into it,
// one rounding on store, and 16-byte packs. Device code only; the emulated build compiles
// it as C++ through csrc/emulation/shim/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace miga_fast {
namespace cuda {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float load_acc(float v) { return v; }
__device__ __forceinline__ double load_acc(double v) { return v; }
__device__ __forceinline__ float load_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float load_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T store_as(typename AccOf<T>::type v);
template <>
__device__ __forceinline__ float store_as<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double store_as<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half store_as<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC elements moved as one aligned load or store (VEC * sizeof(T) = 16 bytes in use).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

}  // namespace cuda
}  // namespace miga_fast
