// CUDA kernels of the projection family (docs/algorithms.md §1), on raw pointers.
//
// l-inf: one pass over memory, 16-byte packs where the pointers are aligned and no
//        pack straddles a sample, a grid-stride loop, no host synchronisation.
// l2 / MI-FGSM: one per-sample reduction pass writing per-block partial sums (double;
//        float64 data takes a maxima pass before it), then one update pass whose
//        blocks first combine their sample's partials in a fixed order: no atomics, no
//        memset. Both passes move 16-byte packs where the tensors allow (two in flight
//        per thread in the reduction). The partial count and the order of every sum
//        depend on n alone: the same bits on every run, alignment and GPU model.
// Every kernel computes in float (double for float64 data) and rounds once on store.
#include <algorithm>

#include "../common/projection_math.h"
#include "device.h"
#include "elementwise.h"
#include "projection.h"

namespace miga_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 256;  // reduction blocks per sample, at most

int grid_for(int64_t work_items) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sm_count()) * 16;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// ---------------------------------------------------------------- l-inf (one pass)

// IMAGE: `d` holds the adversarial image x + delta, stepped in torchattacks' arithmetic
// (projection_math.h, linf_step_image); only with a gradient.
template <typename T, int VEC, bool HAS_GRAD, bool IMAGE>
__global__ void __launch_bounds__(kThreads)
    linf_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x,
                const typename AccOf<T>::type* __restrict__ eps, int64_t eps_stride,
                const typename AccOf<T>::type* __restrict__ alpha, int64_t alpha_stride,
                typename AccOf<T>::type direction, int64_t n, int64_t packs) {
  using A = typename AccOf<T>::type;
  using P = Pack<T, VEC>;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = (p * VEC) / n;
    const A e = eps[b * eps_stride];
    P dv = reinterpret_cast<const P*>(d)[p];
    const P xv = reinterpret_cast<const P*>(x)[p];
    if (HAS_GRAD) {
      const A step = direction * alpha[b * alpha_stride];
      const P gv = reinterpret_cast<const P*>(g)[p];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A dk = load_acc(dv.v[k]), gk = load_acc(gv.v[k]), xk = load_acc(xv.v[k]);
        dv.v[k] = store_as<T>(IMAGE ? linf_step_image(dk, gk, xk, e, step) : linf_step(dk, gk, xk, e, step));
      }
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) dv.v[k] = store_as<T>(linf_ball_box(load_acc(dv.v[k]), load_acc(xv.v[k]), e));
    }
    reinterpret_cast<P*>(d)[p] = dv;
  }
}

template <typename T, bool HAS_GRAD, bool IMAGE>
cudaError_t launch_linf_typed(const ProjectionArgs& a, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  constexpr int kVec = 16 / sizeof(T);
  const int64_t total = a.batch * a.n;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec_ok = a.n % kVec == 0 && aligned(a.delta) && aligned(a.x) && (!HAS_GRAD || aligned(a.grad));
  T* d = static_cast<T*>(a.delta);
  const T* g = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  const A* eps = static_cast<const A*>(a.eps);
  const A* alpha = static_cast<const A*>(a.alpha);
  const A dir = static_cast<A>(a.direction);
  if (vec_ok) {
    const int64_t packs = total / kVec;
    MIGA_FAST_LAUNCH(grid_for(packs), kThreads, 0, stream, linf_kernel<T, kVec, HAS_GRAD, IMAGE>)(
        d, g, x, eps, a.eps_stride, alpha, a.alpha_stride, dir, a.n, packs);
  } else {
    MIGA_FAST_LAUNCH(grid_for(total), kThreads, 0, stream, linf_kernel<T, 1, HAS_GRAD, IMAGE>)(
        d, g, x, eps, a.eps_stride, alpha, a.alpha_stride, dir, a.n, total);
  }
  return cudaGetLastError();
}

// ------------------------------------------------ per-sample reductions (l2, l1)
//
// Each reduction block writes kSlots partials per sample: {sum0, sum1, sum2, max|g|, max|d|}.
// The sums are over the gradient scaled by its largest magnitude, s = g / max|g|, and
// u = d / dscale (projection_math.h, l2_factors). For float, half and bfloat16 data the
// sums of the unscaled values are taken in double in one pass (their squares can neither
// overflow nor underflow there) and rescaled by the update kernel; float64 data takes a
// maxima pass first, then the sums of the scaled values.

enum Mode : int {
  kL2Step = 0,     // sums {g.g, g.d, d.d}
  kL2Project = 1,  // sums {0, 0, d.d}
  kL1Grad = 2,     // sums {|g|_1, 0, 0}
};

enum Pass : int {
  kPassFused = 0,   // unscaled sums and the maxima, one pass
  kPassMax = 1,     // the maxima only
  kPassScaled = 2,  // the sums of the values scaled by the maxima kPassMax wrote
};

constexpr int kSlots = 5;

template <typename T>
struct NeedsScaledSums {
  static constexpr bool value = sizeof(typename AccOf<T>::type) == sizeof(double);
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const double o = __shfl_down_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

// Block-wide reduction into thread 0: sums of v[0..2], maxima of v[3..4] (a fixed tree:
// deterministic).
__device__ __forceinline__ void block_reduce(double (&v)[kSlots]) {
  MIGA_FAST_SHARED(smem, double[kThreads / 32][kSlots]);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kSlots; ++k) v[k] = k < 3 ? warp_sum(v[k]) : warp_max(v[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) smem[warp][k] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      v[k] = lane < kThreads / 32 ? smem[lane][k] : 0.0;
      v[k] = k < 3 ? warp_sum(v[k]) : warp_max(v[k]);
    }
  }
  __syncthreads();
}

// Warp 0 combines the partials of sample b in a fixed order; the result lands in lane 0.
__device__ __forceinline__ void combine_partials(const double* __restrict__ partials, int64_t b, int nblk,
                                                 double (&s)[kSlots]) {
#pragma unroll
  for (int k = 0; k < kSlots; ++k) s[k] = 0.0;
  for (int j = threadIdx.x; j < nblk; j += 32) {
    const double* p = partials + (b * nblk + j) * kSlots;
#pragma unroll
    for (int k = 0; k < kSlots; ++k) s[k] = k < 3 ? s[k] + p[k] : (p[k] > s[k] ? p[k] : s[k]);
  }
#pragma unroll
  for (int k = 0; k < kSlots; ++k) s[k] = k < 3 ? warp_sum(s[k]) : warp_max(s[k]);
}

__device__ __forceinline__ double scale_of(double vmax) { return vmax > 0.0 ? vmax : 1.0; }

// Loads VEC consecutive elements of a sample starting at element i: one 16-byte pack when
// VECTOR (aligned pointers, n a multiple of VEC), else element by element with the tail
// of the sample zero-filled. Both paths hand the same values, in the same order, to the
// caller's accumulation: the reduction order depends on n alone (bitwise-identical
// results whatever the alignment, the grid or the GPU model).
template <typename T, int VEC, bool VECTOR>
__device__ __forceinline__ void load_run(const T* __restrict__ base, int64_t i, int64_t n,
                                         typename AccOf<T>::type (&out)[VEC]) {
  using A = typename AccOf<T>::type;
  if (VECTOR) {
    const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(base + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = load_acc(p.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = i + k < n ? load_acc(base[i + k]) : A(0);
  }
}

// Per sample b (grid.y, grid-stride) and block (grid.x: the sample's partial), the thread's
// runs of VEC elements are p = blockIdx.x * kThreads + tid, p + nblk * kThreads, ...; two
// runs per iteration (independent loads in flight).
template <typename T, int MODE, int PASS, int VEC, bool VECTOR>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const T* __restrict__ d, const T* __restrict__ g,
                                                          int64_t batch, int64_t n, double* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  MIGA_FAST_SHARED(s_scale, double[2]);
  const int nblk = gridDim.x;
  const int64_t runs = (n + VEC - 1) / VEC, stride = static_cast<int64_t>(nblk) * kThreads;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    double gs = 1.0, ds = 1.0;
    if (PASS == kPassScaled) {
      if (threadIdx.x < 32) {
        double m[kSlots];
        combine_partials(partials, b, nblk, m);
        if (threadIdx.x == 0) {
          s_scale[0] = scale_of(m[3]);
          s_scale[1] = scale_of(m[4]);
        }
      }
      __syncthreads();
      gs = s_scale[0];
      ds = s_scale[1];
    }
    double s[kSlots] = {0.0, 0.0, 0.0, 0.0, 0.0};
    const T* gb = g + b * n;
    const T* db = d + b * n;
    auto accumulate = [&](int64_t p) {
      A gr[VEC], dr[VEC];
      if (MODE != kL2Project) load_run<T, VEC, VECTOR>(gb, p * VEC, n, gr);
      if (MODE != kL1Grad) load_run<T, VEC, VECTOR>(db, p * VEC, n, dr);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const double gv = MODE == kL2Project ? 0.0 : static_cast<double>(gr[k]) / gs;
        const double dv = MODE == kL1Grad ? 0.0 : static_cast<double>(dr[k]) / ds;
        const double ga = gv < 0.0 ? -gv : gv, da = dv < 0.0 ? -dv : dv;
        if (PASS != kPassScaled) {
          s[3] = ga > s[3] ? ga : s[3];
          s[4] = da > s[4] ? da : s[4];
        }
        if (PASS != kPassMax) {
          if (MODE == kL1Grad) {
            s[0] += ga;
          } else {
            s[0] += gv * gv;
            s[1] += gv * dv;
            s[2] += dv * dv;
          }
        }
      }
    };
    int64_t p = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
    for (; p + stride < runs; p += 2 * stride) {
      accumulate(p);
      accumulate(p + stride);
    }
    if (p < runs) accumulate(p);
    block_reduce(s);
    if (threadIdx.x == 0) {
      double* out = partials + (b * nblk + blockIdx.x) * kSlots;
      if (PASS != kPassMax) {
        out[0] = s[0];
        out[1] = s[1];
        out[2] = s[2];
      }
      if (PASS != kPassScaled) {
        out[3] = s[3];
        out[4] = s[4];
      }
    }
    __syncthreads();  // s_scale is rewritten for the next sample
  }
}

template <typename T, int MODE, int VEC, bool VECTOR>
__global__ void __launch_bounds__(kThreads)
    update_kernel(T* __restrict__ d, T* __restrict__ m, const T* __restrict__ g, const T* __restrict__ x,
                  const typename AccOf<T>::type* __restrict__ eps, int64_t eps_stride,
                  const typename AccOf<T>::type* __restrict__ alpha, int64_t alpha_stride, typename AccOf<T>::type mu,
                  typename AccOf<T>::type direction, int64_t batch, int64_t n, const double* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  constexpr bool kScaled = NeedsScaledSums<T>::value;
  MIGA_FAST_SHARED(s_a, A);
  MIGA_FAST_SHARED(s_b, A);
  MIGA_FAST_SHARED(s_gs, A);
  const int nblk = gridDim.x;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const A e = eps[b * eps_stride];
    const A step = MODE == kL2Project ? A(0) : direction * alpha[b * alpha_stride];
    if (threadIdx.x < 32) {
      double s[kSlots];
      combine_partials(partials, b, nblk, s);
      if (threadIdx.x == 0) {
        // s[0..2]: sums over s = g / gs and u = d / ds (kScaled), or over g and d.
        const double gs = scale_of(s[3]);
        const double ds = kScaled ? scale_of(s[4]) : 1.0;
        const double ss = kScaled ? s[0] : s[0] / (gs * gs);
        const double su = kScaled ? s[1] : s[1] / gs;
        s_gs = static_cast<A>(gs);
        if (MODE == kL2Step) {
          const L2Factors<A> f = l2_factors<A>(ss, su, s[2], ds, e, step);
          s_a = f.c;
          s_b = f.f;
        } else if (MODE == kL2Project) {
          s_a = A(0);
          s_b = l2_project_factor<A>(s[2], ds, e);
        } else {
          s_a = static_cast<A>(kScaled ? s[0] : s[0] / gs);  // |g / gs|_1
          s_b = A(0);
        }
      }
    }
    __syncthreads();
    const A ca = s_a, cb = s_b, gs = s_gs;
    auto update = [&](int64_t j, A dv, A xv, A gv, A mv_in, A& d_out, A& m_out) {
      if (MODE == kL2Step) {
        d_out = box((dv + ca * (gv / gs)) * cb, xv);
      } else if (MODE == kL2Project) {
        d_out = box(dv * cb, xv);
      } else {
        const A gn = ca > A(0) ? (gv / gs) / ca : A(0);
        m_out = mu * mv_in + gn;
        d_out = linf_step(dv, m_out, xv, e, step);
      }
    };
    if (VECTOR) {  // 16-byte packs (the sample's base is aligned: n is a multiple of VEC)
      using P = Pack<T, VEC>;
      for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n / VEC;
           p += static_cast<int64_t>(nblk) * blockDim.x) {
        const int64_t q = (b * n) / VEC + p;
        P dp = reinterpret_cast<const P*>(d)[q];
        const P xp = reinterpret_cast<const P*>(x)[q];
        P gp{}, mp{};
        if (MODE != kL2Project) gp = reinterpret_cast<const P*>(g)[q];
        if (MODE == kL1Grad) mp = reinterpret_cast<const P*>(m)[q];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          A dn = A(0), mn = A(0);
          update(0, load_acc(dp.v[k]), load_acc(xp.v[k]), MODE != kL2Project ? load_acc(gp.v[k]) : A(0),
                 MODE == kL1Grad ? load_acc(mp.v[k]) : A(0), dn, mn);
          dp.v[k] = store_as<T>(dn);
          if (MODE == kL1Grad) mp.v[k] = store_as<T>(mn);
        }
        reinterpret_cast<P*>(d)[q] = dp;
        if (MODE == kL1Grad) reinterpret_cast<P*>(m)[q] = mp;
      }
    } else {
      for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
           i += static_cast<int64_t>(nblk) * blockDim.x) {
        const int64_t j = b * n + i;
        A dn = A(0), mn = A(0);
        update(j, load_acc(d[j]), load_acc(x[j]), MODE != kL2Project ? load_acc(g[j]) : A(0),
               MODE == kL1Grad ? load_acc(m[j]) : A(0), dn, mn);
        d[j] = store_as<T>(dn);
        if (MODE == kL1Grad) m[j] = store_as<T>(mn);
      }
    }
    __syncthreads();  // s_a/s_b/s_gs are rewritten for the next sample
  }
}

// Partial sums per sample: one per kPartialChunk elements, at most kMaxPartials. A
// function of n alone (not of the SM count): the summation order, and so every bit of the
// result, is the same on every GPU model.
constexpr int64_t kPartialChunk = 16384;

int partial_blocks(int64_t /*batch*/, int64_t n) {
  const int64_t by_size = (n + kPartialChunk - 1) / kPartialChunk;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(by_size, kMaxPartials)));
}

template <typename T, int MODE, bool VECTOR>
cudaError_t launch_two_pass_packed(const ProjectionArgs& a, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  constexpr int kVec = 16 / sizeof(T);
  const int nblk = partial_blocks(a.batch, a.n);
  const dim3 grid(nblk, static_cast<unsigned>(std::min<int64_t>(a.batch, 65535)));
  auto* partials = static_cast<double*>(a.workspace);
  T* d = static_cast<T*>(a.delta);
  const T* g = static_cast<const T*>(a.grad);
  cudaError_t err = cudaSuccess;
  if (NeedsScaledSums<T>::value) {
    MIGA_FAST_LAUNCH(grid, kThreads, 0, stream, reduce_kernel<T, MODE, kPassMax, kVec, VECTOR>)(d, g, a.batch, a.n,
                                                                                                partials);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    MIGA_FAST_LAUNCH(grid, kThreads, 0, stream, reduce_kernel<T, MODE, kPassScaled, kVec, VECTOR>)(d, g, a.batch, a.n,
                                                                                                   partials);
  } else {
    MIGA_FAST_LAUNCH(grid, kThreads, 0, stream, reduce_kernel<T, MODE, kPassFused, kVec, VECTOR>)(d, g, a.batch, a.n,
                                                                                                  partials);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  MIGA_FAST_LAUNCH(grid, kThreads, 0, stream, update_kernel<T, MODE, kVec, VECTOR>)(
      d, static_cast<T*>(a.momentum), g, static_cast<const T*>(a.x), static_cast<const A*>(a.eps), a.eps_stride,
      static_cast<const A*>(a.alpha), a.alpha_stride, static_cast<A>(a.mu), static_cast<A>(a.direction), a.batch, a.n,
      partials);
  return cudaGetLastError();
}

// 16-byte packs where every tensor is 16-byte aligned and n is a multiple of the pack.
template <typename T, int MODE>
cudaError_t launch_two_pass(const ProjectionArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec_ok = a.n % kVec == 0 && aligned(a.delta) && aligned(a.x) && (MODE == kL2Project || aligned(a.grad)) &&
                      (MODE != kL1Grad || aligned(a.momentum));
  return vec_ok ? launch_two_pass_packed<T, MODE, true>(a, stream) : launch_two_pass_packed<T, MODE, false>(a, stream);
}

template <template <typename> class Fn>
cudaError_t dispatch(DType dtype, const ProjectionArgs& a, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return Fn<float>::run(a, stream);
    case DType::kFloat64:
      return Fn<double>::run(a, stream);
    case DType::kFloat16:
      return Fn<__half>::run(a, stream);
    case DType::kBFloat16:
      return Fn<__nv_bfloat16>::run(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
struct LinfFn {
  static cudaError_t run(const ProjectionArgs& a, cudaStream_t s) {
    if (a.grad == nullptr) return launch_linf_typed<T, false, false>(a, s);
    return a.image ? launch_linf_typed<T, true, true>(a, s) : launch_linf_typed<T, true, false>(a, s);
  }
};

template <typename T>
struct L2Fn {
  static cudaError_t run(const ProjectionArgs& a, cudaStream_t s) {
    return a.grad != nullptr ? launch_two_pass<T, kL2Step>(a, s) : launch_two_pass<T, kL2Project>(a, s);
  }
};

template <typename T>
struct MomentumFn {
  static cudaError_t run(const ProjectionArgs& a, cudaStream_t s) { return launch_two_pass<T, kL1Grad>(a, s); }
};

}  // namespace

size_t projection_workspace_bytes(int64_t batch, int64_t n) {
  return static_cast<size_t>(batch) * partial_blocks(batch, n) * kSlots * sizeof(double);
}

cudaError_t launch_linf(DType dtype, const ProjectionArgs& args, cudaStream_t stream) {
  if (args.batch * args.n == 0) return cudaSuccess;
  return dispatch<LinfFn>(dtype, args, stream);
}

cudaError_t launch_l2(DType dtype, const ProjectionArgs& args, cudaStream_t stream) {
  if (args.batch * args.n == 0) return cudaSuccess;
  return dispatch<L2Fn>(dtype, args, stream);
}

cudaError_t launch_mi_fgsm(DType dtype, const ProjectionArgs& args, cudaStream_t stream) {
  if (args.batch * args.n == 0) return cudaSuccess;
  return dispatch<MomentumFn>(dtype, args, stream);
}

}  // namespace cuda
}  // namespace miga_fast
