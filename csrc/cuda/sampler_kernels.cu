// CUDA kernels of the sampler family (docs/algorithms.md §5), on raw pointers.
//
// One element-wise pass: a 2-D grid (blocks over a sample's elements, samples), so each
// thread computes its sample's coefficients once (csrc/common/sampler_math.h) and then
// runs a grid-stride loop over 16-byte packs (when every pointer is aligned and no pack
// straddles a sample or a mask plane) or single elements. The stages present are
// warp-uniform runtime flags. Every kernel computes in float (double for float64 data)
// and rounds once on store; no host synchronisation, no workspace.
#include <algorithm>
#include <cstdint>

#include "../common/sampler_math.h"
#include "device.h"
#include "elementwise.h"
#include "sampler.h"

namespace miga_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// Loads pack p of a tensor, or zeros when it is absent.
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* ptr, int64_t p) {
  if (ptr != nullptr) return reinterpret_cast<const Pack<T, VEC>*>(ptr)[p];
  Pack<T, VEC> z;
#pragma unroll
  for (int k = 0; k < VEC; ++k) z.v[k] = store_as<T>(0);
  return z;
}

template <typename T>
__device__ __forceinline__ SamplerCoef<typename AccOf<T>::type> coef_for(const SamplerArgs& a, int64_t b) {
  using A = typename AccOf<T>::type;
  const A* af = static_cast<const A*>(a.a_from);
  const A* at = static_cast<const A*>(a.a_to);
  const A* ak = static_cast<const A*>(a.a_known);
  const A* aj = static_cast<const A*>(a.a_jump);
  return sampler_coef<A>(a.mode, a.has_mask, a.has_jump, af[b * a.s_from], at[b * a.s_to], ak[b * a.s_known],
                         aj[b * a.s_jump], static_cast<A>(a.eta));
}

// Pack index within a sample -> pack index of the mask (its planes are mask_n elements).
__device__ __forceinline__ int64_t mask_pack(int64_t b, int64_t j, int64_t n_packs_mask) {
  return b * n_packs_mask + j % n_packs_mask;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) sampler_forward_kernel(const SamplerArgs a) {
  using A = typename AccOf<T>::type;
  using P = Pack<T, VEC>;
  const int64_t packs = a.n / VEC, mask_packs = a.mask_n / VEC;
  const A clip = static_cast<A>(a.clip);
  const T* x = static_cast<const T*>(a.x);
  const T* e = a.mode == kSamplerDdim ? static_cast<const T*>(a.eps) : nullptr;
  const T* nz = static_cast<const T*>(a.noise);
  const T* m = a.has_mask ? static_cast<const T*>(a.mask) : nullptr;
  const T* kn = a.has_mask ? static_cast<const T*>(a.known) : nullptr;
  const T* nk = a.has_mask ? static_cast<const T*>(a.noise_known) : nullptr;
  const T* nj = a.has_jump ? static_cast<const T*>(a.noise_jump) : nullptr;
  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    const SamplerCoef<A> c = coef_for<T>(a, b);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < packs;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t p = b * packs + j;
      const P xv = load_pack<T, VEC>(x, p), ev = load_pack<T, VEC>(e, p), nv = load_pack<T, VEC>(nz, p);
      const P mv = load_pack<T, VEC>(m, m != nullptr ? mask_pack(b, j, mask_packs) : 0);
      const P kv = load_pack<T, VEC>(kn, p), nkv = load_pack<T, VEC>(nk, p), njv = load_pack<T, VEC>(nj, p);
      P out;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        out.v[k] = store_as<T>(sampler_forward<A>(c, a.mode, a.has_mask, a.has_jump, clip, load_acc(xv.v[k]),
                                                  load_acc(ev.v[k]), load_acc(nv.v[k]), load_acc(mv.v[k]),
                                                  load_acc(kv.v[k]), load_acc(nkv.v[k]), load_acc(njv.v[k])));
      reinterpret_cast<P*>(a.out)[p] = out;
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) sampler_backward_kernel(const SamplerArgs a) {
  using A = typename AccOf<T>::type;
  using P = Pack<T, VEC>;
  const int64_t packs = a.n / VEC, mask_packs = a.mask_n / VEC;
  const A clip = static_cast<A>(a.clip);
  const bool reads_values = a.mode == kSamplerDdim && clip > A(0);  // only the clip test reads x and eps
  const T* x = reads_values ? static_cast<const T*>(a.x) : nullptr;
  const T* e = reads_values ? static_cast<const T*>(a.eps) : nullptr;
  const T* m = a.has_mask ? static_cast<const T*>(a.mask) : nullptr;
  const T* g = static_cast<const T*>(a.grad);
  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    const SamplerCoef<A> c = coef_for<T>(a, b);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < packs;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t p = b * packs + j;
      const P gv = load_pack<T, VEC>(g, p), xv = load_pack<T, VEC>(x, p), ev = load_pack<T, VEC>(e, p);
      const P mv = load_pack<T, VEC>(m, m != nullptr ? mask_pack(b, j, mask_packs) : 0);
      P ox, oe, ok;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const SamplerPartials<A> d = sampler_partials<A>(c, a.mode, a.has_mask, a.has_jump, clip, load_acc(xv.v[k]),
                                                         load_acc(ev.v[k]), load_acc(mv.v[k]));
        const A gk = load_acc(gv.v[k]);
        ox.v[k] = store_as<T>(d.dx * gk);
        oe.v[k] = store_as<T>(d.de * gk);
        ok.v[k] = store_as<T>(d.dk * gk);
      }
      if (a.gx != nullptr) reinterpret_cast<P*>(a.gx)[p] = ox;
      if (a.geps != nullptr) reinterpret_cast<P*>(a.geps)[p] = oe;
      if (a.gknown != nullptr) reinterpret_cast<P*>(a.gknown)[p] = ok;
    }
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether every tensor of the call can be read and written in 16-byte packs of VEC
// elements: aligned, and no pack straddles a sample or a mask plane.
template <int VEC>
bool packs_fit(const SamplerArgs& a) {
  if (a.n % VEC != 0 || (a.has_mask && a.mask_n % VEC != 0)) return false;
  for (const void* p :
       {a.x, a.eps, a.noise, a.mask, a.known, a.noise_known, a.noise_jump, a.grad, static_cast<const void*>(a.out),
        static_cast<const void*>(a.gx), static_cast<const void*>(a.geps), static_cast<const void*>(a.gknown)})
    if (!aligned16(p)) return false;
  return true;
}

template <typename T, bool BACKWARD>
cudaError_t launch_typed(const SamplerArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = packs_fit<kVec>(a);
  const int64_t per_sample = vec ? a.n / kVec : a.n;
  // about 16 blocks per multiprocessor over the whole grid, at least one per sample
  const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(sm_count()) * 16 / std::max<int64_t>(1, a.batch));
  const int64_t gx = std::min<int64_t>((per_sample + kThreads - 1) / kThreads, want);
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, gx)),
                  static_cast<unsigned>(std::min<int64_t>(a.batch, kMaxGridY)));
  if (BACKWARD) {
    if (vec)
      MIGA_FAST_LAUNCH(grid, dim3(kThreads), 0, stream, sampler_backward_kernel<T, kVec>)(a);
    else
      MIGA_FAST_LAUNCH(grid, dim3(kThreads), 0, stream, sampler_backward_kernel<T, 1>)(a);
  } else {
    if (vec)
      MIGA_FAST_LAUNCH(grid, dim3(kThreads), 0, stream, sampler_forward_kernel<T, kVec>)(a);
    else
      MIGA_FAST_LAUNCH(grid, dim3(kThreads), 0, stream, sampler_forward_kernel<T, 1>)(a);
  }
  return cudaGetLastError();
}

template <bool BACKWARD>
cudaError_t dispatch(DType dtype, const SamplerArgs& a, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float, BACKWARD>(a, stream);
    case DType::kFloat64:
      return launch_typed<double, BACKWARD>(a, stream);
    case DType::kFloat16:
      return launch_typed<__half, BACKWARD>(a, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16, BACKWARD>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_sampler_forward(DType dtype, const SamplerArgs& args, cudaStream_t stream) {
  return dispatch<false>(dtype, args, stream);
}

cudaError_t launch_sampler_backward(DType dtype, const SamplerArgs& args, cudaStream_t stream) {
  return dispatch<true>(dtype, args, stream);
}

}  // namespace cuda
}  // namespace miga_fast
