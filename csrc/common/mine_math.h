// The critic activations of the MINE family and their derivatives, shared by the CPU and
// CUDA kernels; they follow torch.nn.functional (relu; elu with alpha = 1; softplus with
// beta = 1, threshold = 20) and their autograd formulas.
//
// The CPU float path uses branch-free exp / log1p (Cephes-style polynomials, within a few
// ulp of libm) so that gcc vectorises the loops over the hidden units; libm's scalar calls
// would make elu and softplus ten times slower than ReLU. float64 and CUDA use the
// library functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define MIGA_MINE_HD __host__ __device__ __forceinline__
#else
#define MIGA_MINE_HD inline __attribute__((always_inline))  // inlined into the AVX2 loops too
#endif

namespace miga_fast {

#if !defined(__CUDACC__)
// exp(x) for x <= 88 (every caller's range: elu takes x <= 0, softplus clamps), to ~2 ulp.
MIGA_MINE_HD float exp_branchless(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(e) for e in [0, 1], to a few ulp: log(y) with y = 1 + e in [1, 2] from
// 2 atanh((y - 1) / (y + 1)), scaled by e / (y - 1) to undo the rounding of 1 + e.
MIGA_MINE_HD float log1p_unit_branchless(float e) {
  const float y = 1.0f + e;
  const float d = y - 1.0f;
  const float s = d / (y + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  const float log_y = 2.0f * s * (1.0f + s2 * p);
  return d == 0.0f ? e : log_y * (e / d);
}
#endif

template <typename T>
MIGA_MINE_HD T mine_exp(T x) {
#if !defined(__CUDACC__)
  if constexpr (std::is_same_v<T, float>) return exp_branchless(x);
#endif
  return std::exp(x);
}

template <typename T>
struct Relu {
  using type = T;
  // Branch-free (select and convert), so the CPU loops vectorise.
  MIGA_MINE_HD static T f(T z) { return z > T(0) ? z : T(0); }
  MIGA_MINE_HD static T df(T z) { return static_cast<T>(z > T(0)); }
};

template <typename T>
struct Elu {
  using type = T;
  MIGA_MINE_HD static T f(T z) {
#if !defined(__CUDACC__)
    if constexpr (std::is_same_v<T, float>) return z > 0.0f ? z : exp_branchless(z < 0.0f ? z : 0.0f) - 1.0f;
#endif
    return z > T(0) ? z : std::expm1(z);
  }
  MIGA_MINE_HD static T df(T z) { return z > T(0) ? T(1) : mine_exp(z < T(0) ? z : T(0)); }
};

template <typename T>
struct Softplus {
  using type = T;
  MIGA_MINE_HD static T f(T z) {
#if !defined(__CUDACC__)
    if constexpr (std::is_same_v<T, float>) {
      // max(z, 0) + log1p(exp(-|z|)): equal to torch's z > 20 ? z : log1p(exp(z)) to an ulp.
      const float a = z < 0.0f ? -z : z;
      return (z > 0.0f ? z : 0.0f) + log1p_unit_branchless(exp_branchless(-a));
    }
#endif
    return z > T(20) ? z : std::log1p(std::exp(z));
  }
  MIGA_MINE_HD static T df(T z) {
    // sigmoid(z); 1 above torch's threshold 20 (where exp(-z) < 2.1e-9 rounds it to 1 anyway).
    const T e = mine_exp(z > T(20) ? T(-20) : -z);
    return z > T(20) ? T(1) : T(1) / (T(1) + e);
  }
};

}  // namespace miga_fast
