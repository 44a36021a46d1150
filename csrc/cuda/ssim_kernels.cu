// CUDA kernels of the SSIM family (ALGORITHMS.md section 2), raw pointers only: the same
// math as csrc/cpu/ssim_loops.h and triton_kernels/ssim.py.
//
// moments_kernel: a 16 x 16-thread block owns a 16 x 16 tile of output pixels of one
// (b, c) plane. It stages the (16 + k - 1)^2 input tile of x and y in shared memory (zero
// padding for "same"), blurs the five moments separably (a horizontal pass into shared
// memory, then a vertical pass per thread), forms the SSIM map, and reduces the tile's sum
// in double into one partial per tile (summed by the glue in a fixed order: deterministic).
// With gradients it also writes the four partial maps of the backward (ssim_loops.h:
// d/dmu_x, d/dmu_y, d/dE[x^2] (= d/dE[y^2]), d/dE[xy], scaled by 1 / (C ho wo)).
// grad_kernel: a block per 16 x 16 tile of input pixels gathers those maps through the
// transposed window (separably, from a (16 + k - 1)^2 tile in shared memory) and combines
// them with x and y into d value / d x and d value / d y.
#include <cuda_runtime.h>

#include "ssim.h"

namespace miga_fast {
namespace cuda {
namespace {

constexpr int kTile = 16;
constexpr int kThreads = kTile * kTile;

struct Geometry {
  int64_t h, w, ho, wo;
  int k, pad, span;  // span = kTile + k - 1
};

__host__ __device__ inline Geometry geometry(const SsimArgs& a) {
  Geometry g;
  g.h = a.h;
  g.w = a.w;
  g.k = a.k;
  g.pad = a.pad;
  g.ho = a.h + 2 * a.pad - a.k + 1;
  g.wo = a.w + 2 * a.pad - a.k + 1;
  g.span = kTile + a.k - 1;
  return g;
}

template <typename T>
__device__ T block_sum_double(T v, double* scratch) {
  // returns the sum over the block in thread 0 (T = double here)
  const int tid = threadIdx.y * kTile + threadIdx.x;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((tid & 31) == 0) scratch[tid / 32] = v;
  __syncthreads();
  T total = T(0);
  if (tid == 0)
    for (int i = 0; i < kThreads / 32; ++i) total += scratch[i];
  return total;
}

template <typename T, bool WITH_GRAD>
__global__ void __launch_bounds__(kThreads)
    moments_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ win, Geometry g, T c1,
                   T c2, T gs, int tiles_x, int64_t tiles, double* __restrict__ partials, T* __restrict__ pm,
                   int64_t planes) {
  extern __shared__ unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);       // span x span
  T* sy = sx + g.span * g.span;                 // span x span
  T* hor = sy + g.span * g.span;                // 5 x span x kTile
  __shared__ double red[kThreads / 32];
  const int64_t plane = blockIdx.y;
  const int tile = blockIdx.x;
  const int64_t oy0 = static_cast<int64_t>(tile / tiles_x) * kTile, ox0 = static_cast<int64_t>(tile % tiles_x) * kTile;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  const T* xp = x + plane * g.h * g.w;
  const T* yp = y + plane * g.h * g.w;
  // Input rows oy0 - pad .. oy0 - pad + span - 1 (output o reads input o + t - pad).
  for (int e = tid; e < g.span * g.span; e += kThreads) {
    const int r = e / g.span, c = e % g.span;
    const int64_t iy = oy0 - g.pad + r, ix = ox0 - g.pad + c;
    const bool in = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
    sx[e] = in ? xp[iy * g.w + ix] : T(0);
    sy[e] = in ? yp[iy * g.w + ix] : T(0);
  }
  __syncthreads();
  const int plane_span = g.span * kTile;
  for (int e = tid; e < plane_span; e += kThreads) {
    const int r = e / kTile, c = e % kTile;
    T m0 = 0, m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    for (int t = 0; t < g.k; ++t) {
      const T wt = win[t];
      const T a = sx[r * g.span + c + t], b = sy[r * g.span + c + t];
      m0 += wt * a;
      m1 += wt * b;
      m2 += wt * a * a;
      m3 += wt * b * b;
      m4 += wt * a * b;
    }
    hor[e] = m0;
    hor[plane_span + e] = m1;
    hor[2 * plane_span + e] = m2;
    hor[3 * plane_span + e] = m3;
    hor[4 * plane_span + e] = m4;
  }
  __syncthreads();
  const int64_t oy = oy0 + threadIdx.y, ox = ox0 + threadIdx.x;
  const bool valid = oy < g.ho && ox < g.wo;
  T mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
  for (int t = 0; t < g.k; ++t) {
    const T wt = win[t];
    const int e = (threadIdx.y + t) * kTile + threadIdx.x;
    mx += wt * hor[e];
    my += wt * hor[plane_span + e];
    exx += wt * hor[2 * plane_span + e];
    eyy += wt * hor[3 * plane_span + e];
    exy += wt * hor[4 * plane_span + e];
  }
  const T a = T(2) * mx * my + c1;
  const T b = T(2) * (exy - mx * my) + c2;
  const T c = mx * mx + my * my + c1;
  const T d = (exx - mx * mx) + (eyy - my * my) + c2;
  const T s = (a / c) * (b / d);
  const double total = block_sum_double<double>(valid ? static_cast<double>(s) : 0.0, red);
  if (tid == 0) partials[plane * tiles + tile] = total;
  if (WITH_GRAD && valid) {
    const T inv_cd = T(1) / (c * d);
    const T common = T(2) * (b - a) * inv_cd;
    const T s_cd = T(2) * s * (T(1) / c - T(1) / d);
    const int64_t n = g.ho * g.wo;
    const int64_t o = plane * n + oy * g.wo + ox;
    const int64_t map = planes * n;
    pm[o] = gs * (my * common - mx * s_cd);
    pm[map + o] = gs * (mx * common - my * s_cd);
    pm[2 * map + o] = gs * (-s / d);
    pm[3 * map + o] = gs * (T(2) * a * inv_cd);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ win, Geometry g,
                int tiles_x, const T* __restrict__ pm, T* __restrict__ gx, T* __restrict__ gy, int64_t planes) {
  extern __shared__ unsigned char smem_raw[];
  T* sp = reinterpret_cast<T*>(smem_raw);  // 4 x span x span: the partial maps around the tile
  T* hor = sp + 4 * g.span * g.span;       // 4 x span x kTile
  const int64_t plane = blockIdx.y;
  const int tile = blockIdx.x;
  const int64_t iy0 = static_cast<int64_t>(tile / tiles_x) * kTile, ix0 = static_cast<int64_t>(tile % tiles_x) * kTile;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  const int64_t n = g.ho * g.wo, map = planes * n;
  // Input i receives from outputs i + pad - t, t = 0..k-1: output rows iy0 + pad - (k-1) ...
  const int64_t oy0 = iy0 + g.pad - (g.k - 1), ox0 = ix0 + g.pad - (g.k - 1);
  const int ss = g.span * g.span;
  for (int e = tid; e < ss; e += kThreads) {
    const int r = e / g.span, c = e % g.span;
    const int64_t oy = oy0 + r, ox = ox0 + c;
    const bool in = oy >= 0 && oy < g.ho && ox >= 0 && ox < g.wo;
    const int64_t o = plane * n + oy * g.wo + ox;
    for (int q = 0; q < 4; ++q) sp[q * ss + e] = in ? pm[q * map + o] : T(0);
  }
  __syncthreads();
  const int plane_span = g.span * kTile;
  for (int e = tid; e < plane_span; e += kThreads) {
    const int r = e / kTile, c = e % kTile;
    T acc[4] = {0, 0, 0, 0};
    for (int s = 0; s < g.k; ++s) {
      const T wt = win[g.k - 1 - s];  // input c + (k-1) - s <- tap k-1-s... the transposed window
      for (int q = 0; q < 4; ++q) acc[q] += wt * sp[q * ss + r * g.span + c + s];
    }
    for (int q = 0; q < 4; ++q) hor[q * plane_span + e] = acc[q];
  }
  __syncthreads();
  const int64_t iy = iy0 + threadIdx.y, ix = ix0 + threadIdx.x;
  if (iy >= g.h || ix >= g.w) return;
  T acc[4] = {0, 0, 0, 0};
  for (int s = 0; s < g.k; ++s) {
    const T wt = win[g.k - 1 - s];
    const int e = (threadIdx.y + s) * kTile + threadIdx.x;
    for (int q = 0; q < 4; ++q) acc[q] += wt * hor[q * plane_span + e];
  }
  const int64_t p = plane * g.h * g.w + iy * g.w + ix;
  const T xv = x[p], yv = y[p];
  gx[p] = acc[0] + T(2) * xv * acc[2] + yv * acc[3];
  gy[p] = acc[1] + T(2) * yv * acc[2] + xv * acc[3];
}

template <typename T>
size_t shared_bytes(const Geometry& g, bool grad_kernel) {
  return grad_kernel ? sizeof(T) * (4 * g.span * g.span + 4 * g.span * kTile)
                     : sizeof(T) * (2 * g.span * g.span + 5 * g.span * kTile);
}

template <typename T>
cudaError_t launch_typed(const SsimArgs& a, bool with_grad, cudaStream_t stream) {
  const Geometry g = geometry(a);
  const int tiles_x = static_cast<int>((g.wo + kTile - 1) / kTile);
  const int64_t tiles = tiles_x * ((g.ho + kTile - 1) / kTile);
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.planes));
  const T* x = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  const T* win = static_cast<const T*>(a.window);
  const T c1 = static_cast<T>(a.c1), c2 = static_cast<T>(a.c2), gs = static_cast<T>(a.gs);
  const size_t smem = shared_bytes<T>(g, false);
  if (with_grad) {
    moments_kernel<T, true><<<grid, block, smem, stream>>>(x, y, win, g, c1, c2, gs, tiles_x, tiles, a.partials,
                                                           static_cast<T*>(a.pm), a.planes);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int in_tiles_x = static_cast<int>((g.w + kTile - 1) / kTile);
    const int64_t in_tiles = in_tiles_x * ((g.h + kTile - 1) / kTile);
    const dim3 grid2(static_cast<unsigned>(in_tiles), static_cast<unsigned>(a.planes));
    grad_kernel<T><<<grid2, block, shared_bytes<T>(g, true), stream>>>(
        x, y, win, g, in_tiles_x, static_cast<const T*>(a.pm), static_cast<T*>(a.gx), static_cast<T*>(a.gy),
        a.planes);
  } else {
    moments_kernel<T, false><<<grid, block, smem, stream>>>(x, y, win, g, c1, c2, gs, tiles_x, tiles, a.partials,
                                                            nullptr, a.planes);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t ssim_tiles(const SsimArgs& a) {
  const Geometry g = geometry(a);
  return ((g.wo + kTile - 1) / kTile) * ((g.ho + kTile - 1) / kTile);
}

size_t ssim_shared_bytes(const SsimArgs& a) {
  const Geometry g = geometry(a);
  const size_t need = a.is_double ? shared_bytes<double>(g, true) : shared_bytes<float>(g, true);
  const size_t need_fwd = a.is_double ? shared_bytes<double>(g, false) : shared_bytes<float>(g, false);
  const size_t most = need > need_fwd ? need : need_fwd;
  return most <= 48 * 1024 ? most : 0;
}

cudaError_t launch_ssim(const SsimArgs& a, bool with_grad, cudaStream_t stream) {
  if (a.planes == 0) return cudaSuccess;
  return a.is_double ? launch_typed<double>(a, with_grad, stream) : launch_typed<float>(a, with_grad, stream);
}

}  // namespace cuda
}  // namespace miga_fast
