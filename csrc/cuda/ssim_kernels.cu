// CUDA kernels of the SSIM family (docs/algorithms.md §2), raw pointers only: the same
// math as csrc/cpu/ssim_loops.h and triton_kernels/ssim.py. Both kernels keep a sample's
// channels inside the block (a loop over c), so each block writes one partial sum per
// sample, and walk the batch along grid.y in a grid-stride loop.
//
// value_kernel (SSIM only): a 32 x 8-thread block owns a 32 x 32 tile of output pixels,
// each thread 4 of one column. It stages the (32 + k - 1)^2 input tile of x and y in shared
// memory (zero padding for "same"), blurs the five moments separably (a horizontal pass
// into shared memory, then a vertical pass sliding down each thread's column in registers),
// forms the SSIM map and sums it over the tile.
//
// value_grad_kernel (SSIM and both gradients, one kernel, nothing per pixel in global
// memory): a block owns a TILE x TILE tile of *input* pixels P0 .. P0 + TILE - 1. Their
// gradient gathers, through the transposed window, four partial maps (ssim_loops.h:
// d/dmu_x, d/dmu_y, d/dE[x^2] (= d/dE[y^2]), d/dE[xy], scaled by 1 / (C ho wo)) over the
// S_out = TILE + k - 1 outputs per axis that read them; those need the moments of inputs
// S_in = S_out + k - 1 per axis. So the block recomputes the moments of its halo instead
// of reading stored maps:
//   1. x, y over S_in^2                                   -> region A
//   2. horizontal moment pass, S_in rows x S_out columns  -> region B
//   3. vertical pass: moments, SSIM and the four partial maps over S_out^2 -> region A
//      (the SSIM of the outputs inside the block's own tile is summed: every output is
//      owned by exactly one block)
//   4. transposed horizontal pass, S_out rows x TILE      -> region B
//   5. transposed vertical pass and the combination with x, y -> d/dx, d/dy
// A per-sample loss makes the upstream gradient one number per sample, so the backward is
// a scaling of d/dx, d/dy: the forward of autograd computes everything once.
// Shared memory is opted into above 48 KiB (TILE = 32 for float32, 16 for float64).
#include <algorithm>

#include "../common/ssim_math.h"
#include "../common/window_ball.h"
#include "device.h"
#include "ssim.h"

namespace miga_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kValueTile = 16;  // ball_moments_kernel: 16 x 16 threads, one output pixel each
// value_kernel: 32 x 8 threads (a warp per row of threads: no bank conflicts), each owning
// kValueRowsPerThread outputs of one column: 32 x 32 outputs per block.
constexpr int kValueCols = 32, kValueRowsPerThread = 4, kValueRows = 8 * kValueRowsPerThread;
// The static shared memory of value_kernel and value_grad_kernel: block_sum's scratch.
constexpr size_t kStaticShared = sizeof(double) * (kThreads / 32);

template <typename T>
constexpr int fused_tile() {
  return sizeof(T) == 4 ? 32 : 16;
}

struct Geometry {
  int64_t batch, channels, h, w, ho, wo;
  int k, pad;
};

inline Geometry geometry(const SsimArgs& a) {
  Geometry g;
  g.batch = a.batch;
  g.channels = a.channels;
  g.h = a.h;
  g.w = a.w;
  g.k = a.k;
  g.pad = a.pad;
  g.ho = a.h + 2 * a.pad - a.k + 1;
  g.wo = a.w + 2 * a.pad - a.k + 1;
  return g;
}

// Sizes (in elements) of the value_grad_kernel's two shared regions.
__host__ __device__ inline int fused_region_a(int tile, int k) {
  const int s_out = tile + k - 1, s_in = s_out + k - 1;
  const int a = 2 * s_in * s_in, b = 4 * s_out * s_out;
  return a > b ? a : b;
}
__host__ __device__ inline int fused_region_b(int tile, int k) {
  const int s_out = tile + k - 1, s_in = s_out + k - 1;
  const int a = 5 * s_in * s_out, b = 4 * s_out * tile;
  return a > b ? a : b;
}

// The sum over the block, in thread 0.
__device__ inline double block_sum(double v, double* scratch) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read by thread 0 for the previous sample
  if ((tid & 31) == 0) scratch[tid / 32] = v;
  __syncthreads();
  double total = 0.0;
  if (tid == 0)
    for (int i = 0; i < kThreads / 32; ++i) total += scratch[i];
  return total;
}

// The horizontal pass of the five moments at one position: rows rx, ry of the staged x
// and y (or delta), k taps, written to hor[q * stride + e] for q = mu_x, mu_y, E[x^2],
// E[y^2], E[xy].
// K > 0: the window length known at compile time (the loop unrolls, the weights come from
// registers); K = 0: `k` at run time.
template <int K, typename A, typename S, typename Tap>
__device__ inline void horizontal_moments(const S* rx, const S* ry, const Tap& tap, int k, A* hor, int stride, int e) {
  A m0 = 0, m1 = 0, m2 = 0, m3 = 0, m4 = 0;
  const int kk = K > 0 ? K : k;
#pragma unroll
  for (int t = 0; t < kk; ++t) {
    const A wt = tap(t), u = rx[t], v = ry[t];
    m0 += wt * u;
    m1 += wt * v;
    m2 += wt * u * u;
    m3 += wt * v * v;
    m4 += wt * u * v;
  }
  hor[e] = m0;
  hor[stride + e] = m1;
  hor[2 * stride + e] = m2;
  hor[3 * stride + e] = m3;
  hor[4 * stride + e] = m4;
}

// The window's taps: for a compile-time length K, copied once into registers (every loop
// over taps unrolls, so they stay there); for K = 0, read from global memory (L1).
template <typename T, int K>
struct Taps {
  T w[K > 0 ? K : 1];
  const T* win;
  __device__ explicit Taps(const T* win_) : win(win_) {
    if constexpr (K > 0) {
#pragma unroll
      for (int t = 0; t < K; ++t) w[t] = win_[t];
    }
  }
  __device__ T operator()(int t) const {
    if constexpr (K > 0) {
      return w[t];
    } else {
      return win[t];
    }
  }
};

// CS: the contrast-structure term alone (cs_only), a compile-time flag so that neither
// kernel carries a run-time luminance factor (at 64 registers the double fused kernel spilled).
template <typename T, int K, bool CS>
__global__ void __launch_bounds__(kThreads)
    value_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ win, Geometry g, T c1, T c2,
                 int tiles_x, int tiles, double* __restrict__ partials) {
  constexpr T lum = CS ? T(0) : T(1);
  MIGA_FAST_DYNAMIC_SHARED(smem_raw);
  MIGA_FAST_SHARED(red, double[kThreads / 32]);
  const int k = K > 0 ? K : g.k;
  const Taps<T, K> tap(win);
  const int span_x = kValueCols + k - 1, span_y = kValueRows + k - 1;
  T* sx = reinterpret_cast<T*>(smem_raw);  // span_y x span_x
  T* sy = sx + span_y * span_x;            // span_y x span_x
  T* hor = sy + span_y * span_x;           // 5 x span_y x kValueCols
  const int tile = blockIdx.x;
  const int64_t oy0 = static_cast<int64_t>(tile / tiles_x) * kValueRows;
  const int64_t ox0 = static_cast<int64_t>(tile % tiles_x) * kValueCols;
  const int tid = threadIdx.y * kValueCols + threadIdx.x;
  const int row0 = threadIdx.y * kValueRowsPerThread;  // this thread's outputs: rows row0 .. + R - 1
  const int64_t ox = ox0 + threadIdx.x;
  const int hs = span_y * kValueCols;
  for (int64_t b = blockIdx.y; b < g.batch; b += gridDim.y) {
    double own = 0.0;
    for (int64_t ch = 0; ch < g.channels; ++ch) {
      const int64_t plane = b * g.channels + ch;
      const T* xp = x + plane * g.h * g.w;
      const T* yp = y + plane * g.h * g.w;
      // Output o reads inputs o - pad .. o - pad + k - 1.
      for (int e = tid; e < span_y * span_x; e += kThreads) {
        const int r = e / span_x, c = e % span_x;
        const int64_t iy = oy0 - g.pad + r, ix = ox0 - g.pad + c;
        const bool in = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        sx[e] = in ? xp[iy * g.w + ix] : T(0);
        sy[e] = in ? yp[iy * g.w + ix] : T(0);
      }
      __syncthreads();
      for (int e = tid; e < hs; e += kThreads) {
        const int r = e / kValueCols, c = e % kValueCols;
        horizontal_moments<K>(sx + r * span_x + c, sy + r * span_x + c, tap, k, hor, hs, e);
      }
      __syncthreads();
      // The vertical pass slides down the thread's column: each of the R + k - 1 rows of
      // horizontal moments it needs is read from shared memory once and added, with its
      // tap, to each of the R outputs whose window holds it (k reads per output before).
      T m[kValueRowsPerThread][5] = {};
#pragma unroll
      for (int t = 0; t < kValueRowsPerThread + k - 1; ++t) {  // k is a constant for K > 0: unrolled
        const int e = (row0 + t) * kValueCols + threadIdx.x;
        T h[5];
#pragma unroll
        for (int q = 0; q < 5; ++q) h[q] = hor[q * hs + e];
#pragma unroll
        for (int r = 0; r < kValueRowsPerThread; ++r) {
          const int i = t - r;  // the tap row t is to output r
          if (i < 0 || i >= k) continue;
          const T wt = tap(i);
#pragma unroll
          for (int q = 0; q < 5; ++q) m[r][q] += wt * h[q];
        }
      }
      if (ox < g.wo)
#pragma unroll
        for (int r = 0; r < kValueRowsPerThread; ++r)
          if (oy0 + row0 + r < g.ho)
            own += static_cast<double>(ssim_pixel<T>(m[r][0], m[r][1], m[r][2], m[r][3], m[r][4], c1, c2, lum).s);
      // The next channel's staging writes sx, sy only: everyone has passed the barrier
      // after their last read; hor is rewritten after the next barrier.
    }
    const double total = block_sum(own, red);
    if (tid == 0) partials[b * tiles + tile] = total;
  }
}

template <typename T, int TILE, int K, bool CS>
__global__ void __launch_bounds__(kThreads)
    value_grad_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ win, Geometry g, T c1,
                      T c2, T gs, int tiles_x, int tiles, double* __restrict__ partials, T* __restrict__ gx,
                      T* __restrict__ gy) {
  constexpr T lum = CS ? T(0) : T(1);
  MIGA_FAST_DYNAMIC_SHARED(smem_raw);
  MIGA_FAST_SHARED(red, double[kThreads / 32]);
  const int k = K > 0 ? K : g.k;
  const Taps<T, K> tap(win);
  const int s_out = TILE + k - 1, s_in = s_out + k - 1;
  T* region_a = reinterpret_cast<T*>(smem_raw);
  T* region_b = region_a + fused_region_a(TILE, k);
  T* sx = region_a;  // step 1: S_in x S_in
  T* sy = region_a + s_in * s_in;
  T* pm = region_a;    // step 3: 4 x S_out x S_out
  T* hor = region_b;   // step 2: 5 x S_in x S_out
  T* hor2 = region_b;  // step 4: 4 x S_out x TILE
  const int tid = threadIdx.x;
  const int tile = blockIdx.x;
  const int64_t py0 = static_cast<int64_t>(tile / tiles_x) * TILE, px0 = static_cast<int64_t>(tile % tiles_x) * TILE;
  // Input p is read by outputs p + pad - (k - 1) .. p + pad; output o reads inputs o - pad ...
  const int64_t oy0 = py0 + g.pad - (k - 1), ox0 = px0 + g.pad - (k - 1);
  const int64_t iy0 = oy0 - g.pad, ix0 = ox0 - g.pad;
  const int hs = s_in * s_out, os = s_out * s_out, h2 = s_out * TILE;
  for (int64_t b = blockIdx.y; b < g.batch; b += gridDim.y) {
    double own = 0.0;
    for (int64_t ch = 0; ch < g.channels; ++ch) {
      const int64_t base = (b * g.channels + ch) * g.h * g.w;
      const T* xp = x + base;
      const T* yp = y + base;
      // 1. inputs
      for (int e = tid; e < s_in * s_in; e += kThreads) {
        const int r = e / s_in, c = e % s_in;
        const int64_t iy = iy0 + r, ix = ix0 + c;
        const bool in = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        sx[e] = in ? xp[iy * g.w + ix] : T(0);
        sy[e] = in ? yp[iy * g.w + ix] : T(0);
      }
      __syncthreads();
      // 2. horizontal moments
      for (int e = tid; e < hs; e += kThreads) {
        const int r = e / s_out, c = e % s_out;
        horizontal_moments<K>(sx + r * s_in + c, sy + r * s_in + c, tap, k, hor, hs, e);
      }
      __syncthreads();
      // 3. moments, SSIM and partial maps of the S_out x S_out outputs
      for (int e = tid; e < os; e += kThreads) {
        const int r = e / s_out, c = e % s_out;
        T m[5] = {0, 0, 0, 0, 0};
#pragma unroll
        for (int t = 0; t < k; ++t) {
          const T wt = tap(t);
          const int src = (r + t) * s_out + c;
          for (int q = 0; q < 5; ++q) m[q] += wt * hor[q * hs + src];
        }
        const int64_t oy = oy0 + r, ox = ox0 + c;
        const bool in = oy >= 0 && oy < g.ho && ox >= 0 && ox < g.wo;
        T p0 = 0, p1 = 0, p2 = 0, p3 = 0;
        if (in) {
          const SsimPixel<T> pt = ssim_pixel<T>(m[0], m[1], m[2], m[3], m[4], c1, c2, lum);
          if (oy >= py0 && oy < py0 + TILE && ox >= px0 && ox < px0 + TILE) own += static_cast<double>(pt.s);
          const SsimPartials<T> pd = ssim_partials<T>(pt, m[0], m[1], gs);
          p0 = pd.mx;
          p1 = pd.my;
          p2 = pd.sq;
          p3 = pd.xy;
        }
        pm[e] = p0;
        pm[os + e] = p1;
        pm[2 * os + e] = p2;
        pm[3 * os + e] = p3;
      }
      __syncthreads();
      // 4. transposed horizontal pass: input column px0 + c gathers outputs c .. c + k - 1
      // (local), output c + s with weight win[k - 1 - s]
      for (int e = tid; e < h2; e += kThreads) {
        const int r = e / TILE, c = e % TILE;
        T acc[4] = {0, 0, 0, 0};
#pragma unroll
        for (int s = 0; s < k; ++s) {
          const T wt = tap(k - 1 - s);
          const int src = r * s_out + c + s;
          for (int q = 0; q < 4; ++q) acc[q] += wt * pm[q * os + src];
        }
        for (int q = 0; q < 4; ++q) hor2[q * h2 + e] = acc[q];
      }
      __syncthreads();
      // 5. transposed vertical pass and the gradients
      for (int e = tid; e < TILE * TILE; e += kThreads) {
        const int r = e / TILE, c = e % TILE;
        const int64_t py = py0 + r, px = px0 + c;
        if (py >= g.h || px >= g.w) continue;
        T acc[4] = {0, 0, 0, 0};
#pragma unroll
        for (int s = 0; s < k; ++s) {
          const T wt = tap(k - 1 - s);
          const int src = (r + s) * TILE + c;
          for (int q = 0; q < 4; ++q) acc[q] += wt * hor2[q * h2 + src];
        }
        const int64_t p = base + py * g.w + px;
        const T xv = xp[py * g.w + px], yv = yp[py * g.w + px];
        gx[p] = acc[0] + T(2) * xv * acc[2] + yv * acc[3];
        gy[p] = acc[1] + T(2) * yv * acc[2] + xv * acc[3];
      }
      // The next channel writes region A (step 1), last read in step 4, before a barrier
      // that follows everyone's step 5, which reads region B: no barrier needed here.
    }
    const double total = block_sum(own, red);
    if (tid == 0) partials[b * tiles + tile] = total;
  }
}

template <typename T>
size_t shared_bytes(const Geometry& g, bool with_grad) {
  if (with_grad) {
    constexpr int tile = fused_tile<T>();
    return sizeof(T) * static_cast<size_t>(fused_region_a(tile, g.k) + fused_region_b(tile, g.k));
  }
  const size_t span_x = kValueCols + g.k - 1, span_y = kValueRows + g.k - 1;
  return sizeof(T) * (2 * span_y * span_x + 5 * span_y * kValueCols);
}

template <typename T>
void tile_grid(const Geometry& g, bool with_grad, int64_t* tiles_x, int64_t* tiles) {
  const int64_t tw = with_grad ? fused_tile<T>() : kValueCols, th = with_grad ? fused_tile<T>() : kValueRows;
  const int64_t rows = with_grad ? g.h : g.ho, cols = with_grad ? g.w : g.wo;
  *tiles_x = (cols + tw - 1) / tw;
  *tiles = *tiles_x * ((rows + th - 1) / th);
}

template <typename T, int K>
cudaError_t launch_typed(const SsimArgs& a, bool with_grad, cudaStream_t stream) {
  const Geometry g = geometry(a);
  int64_t tiles_x = 0, tiles = 0;
  tile_grid<T>(g, with_grad, &tiles_x, &tiles);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(g.batch, 65535)));
  const T* x = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  const T* win = static_cast<const T*>(a.window);
  const T c1 = static_cast<T>(a.c1), c2 = static_cast<T>(a.c2), gs = static_cast<T>(a.gs);
  const size_t smem = shared_bytes<T>(g, with_grad);
  if (with_grad) {
    auto* kernel =
        a.cs_only ? &value_grad_kernel<T, fused_tile<T>(), K, true> : &value_grad_kernel<T, fused_tile<T>(), K, false>;
    cudaError_t err = allow_shared(kernel, smem, kStaticShared);
    if (err != cudaSuccess) return err;
    MIGA_FAST_LAUNCH(grid, dim3(kThreads), smem, stream, kernel)(x, y, win, g, c1, c2, gs, static_cast<int>(tiles_x),
                                                                 static_cast<int>(tiles), a.partials,
                                                                 static_cast<T*>(a.gx), static_cast<T*>(a.gy));
  } else {
    auto* kernel = a.cs_only ? &value_kernel<T, K, true> : &value_kernel<T, K, false>;
    cudaError_t err = allow_shared(kernel, smem, kStaticShared);
    if (err != cudaSuccess) return err;
    MIGA_FAST_LAUNCH(grid, dim3(kValueCols, kThreads / kValueCols), smem, stream, kernel)(
        x, y, win, g, c1, c2, static_cast<int>(tiles_x), static_cast<int>(tiles), a.partials);
  }
  return cudaGetLastError();
}

// The common windows (7 and 11 taps) get kernels with the length compiled in; others, the
// run-time one.
template <typename T>
cudaError_t launch_typed(const SsimArgs& a, bool with_grad, cudaStream_t stream) {
  switch (a.k) {
    case 7:
      return launch_typed<T, 7>(a, with_grad, stream);
    case 11:
      return launch_typed<T, 11>(a, with_grad, stream);
    default:
      return launch_typed<T, 0>(a, with_grad, stream);
  }
}

// ------------------------------------------------------------------- the SSIM ball

// ball_moments_kernel: value_kernel's tiling in double on (x, delta): per output pixel
// mu_x, mu_d, var_x, var_d, cov_xd into m [planes, 5, ho, wo].
template <typename S>
__global__ void __launch_bounds__(kThreads)
    ball_moments_kernel(const S* __restrict__ x, const S* __restrict__ d, const double* __restrict__ win, Geometry g,
                        int tiles_x, double* __restrict__ m) {
  MIGA_FAST_DYNAMIC_SHARED(smem_raw);
  const int span = kValueTile + g.k - 1;
  double* sx = reinterpret_cast<double*>(smem_raw);
  double* sd = sx + span * span;
  double* hor = sd + span * span;
  const int tile = blockIdx.x;
  const int64_t oy0 = static_cast<int64_t>(tile / tiles_x) * kValueTile;
  const int64_t ox0 = static_cast<int64_t>(tile % tiles_x) * kValueTile;
  const int tid = threadIdx.y * kValueTile + threadIdx.x;
  const int64_t oy = oy0 + threadIdx.y, ox = ox0 + threadIdx.x;
  const int hs = span * kValueTile;
  const int64_t ms = g.ho * g.wo, planes = g.batch * g.channels;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const S* xp = x + plane * g.h * g.w;
    const S* dp = d + plane * g.h * g.w;
    __syncthreads();  // the previous plane's vertical pass has read hor
    for (int e = tid; e < span * span; e += kThreads) {
      const int r = e / span, c = e % span;
      const int64_t iy = oy0 - g.pad + r, ix = ox0 - g.pad + c;
      const bool in = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
      sx[e] = in ? static_cast<double>(xp[iy * g.w + ix]) : 0.0;
      sd[e] = in ? static_cast<double>(dp[iy * g.w + ix]) : 0.0;
    }
    __syncthreads();
    for (int e = tid; e < hs; e += kThreads) {
      const int r = e / kValueTile, c = e % kValueTile;
      horizontal_moments<0>(sx + r * span + c, sd + r * span + c, Taps<double, 0>(win), g.k, hor, hs, e);
    }
    __syncthreads();
    if (oy < g.ho && ox < g.wo) {
      double v[5] = {0, 0, 0, 0, 0};
      for (int t = 0; t < g.k; ++t) {
        const double wt = win[t];
        const int e = (threadIdx.y + t) * kValueTile + threadIdx.x;
        for (int q = 0; q < 5; ++q) v[q] += wt * hor[q * hs + e];
      }
      double* out = m + plane * 5 * ms + oy * g.wo + ox;
      out[0] = v[0];
      out[ms] = v[1];
      out[2 * ms] = v[2] - v[0] * v[0];
      out[3 * ms] = v[3] - v[1] * v[1];
      out[4 * ms] = v[4] - v[0] * v[1];
    }
  }
}

// The q-th of nt candidate scales on [lo, hi]: one definition for both kernels below, so
// the scale chosen is bit for bit the scale whose SSIM was summed.
__device__ inline double candidate(const double* bounds, int q, int nt) {
  const double lo = bounds[0], hi = bounds[1];
  return lo + (hi - lo) * (static_cast<double>(q) / (nt - 1));
}

// Per sample (grid.y) and chunk of its C * ho * wo pixels (grid.x), the sums of
// SSIM(x, x + t_q delta) over the chunk for every candidate t_q (the moments are
// polynomials in t: mu_y = mu_x + t mu_d, var_y = var_x + 2 t cov + t^2 var_d,
// cov_xy = var_x + t cov). The candidates go in groups of kBallGroup: the loops over a
// group unroll, so its t[] and acc[] live in registers (no stack frame, ~90 registers
// whatever the candidate count); each group re-reads the chunk's moments (40 bytes a
// pixel against kBallGroup double divisions: the kernel stays compute-bound).
constexpr int kBallGroup = 8;

__global__ void __launch_bounds__(kThreads)
    ball_sums_kernel(const double* __restrict__ m, const double* __restrict__ bounds, Geometry g, double c1, double c2,
                     int nt, double* __restrict__ partials) {
  MIGA_FAST_SHARED(red, double[kThreads / 32]);
  const int64_t ms = g.ho * g.wo, n = g.channels * ms;
  const int chunks = gridDim.x, tid = threadIdx.x;
  for (int64_t b = blockIdx.y; b < g.batch; b += gridDim.y) {
    for (int q0 = 0; q0 < nt; q0 += kBallGroup) {
      double t[kBallGroup], acc[kBallGroup];
#pragma unroll
      for (int q = 0; q < kBallGroup; ++q) {
        t[q] = q0 + q < nt ? candidate(bounds + 2 * b, q0 + q, nt) : 0.0;
        acc[q] = 0.0;
      }
      for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + tid; p < n;
           p += static_cast<int64_t>(chunks) * kThreads) {
        const double* mp = m + (b * g.channels + p / ms) * 5 * ms + p % ms;
        const double mx = mp[0], md = mp[ms], vx = mp[2 * ms], vd = mp[3 * ms], cv = mp[4 * ms];
#pragma unroll
        for (int q = 0; q < kBallGroup; ++q)
          if (q0 + q < nt) acc[q] += ssim_at_scale(mx, md, vx, vd, cv, t[q], c1, c2);
      }
#pragma unroll
      for (int q = 0; q < kBallGroup; ++q) {
        if (q0 + q < nt) {  // uniform across the block: block_sum's barriers stay matched
          const double total = block_sum(acc[q], red);
          if (tid == 0) partials[(b * chunks + blockIdx.x) * nt + q0 + q] = total;
        }
      }
    }
  }
}

// Per sample: the chunk sums in a fixed order, the largest feasible candidate (t = lo
// always is), and the next round's interval [t_last, t_last+1].
__global__ void ball_choose_kernel(const double* __restrict__ partials, const double* __restrict__ tau,
                                   double* __restrict__ bounds, int64_t batch, int chunks, int nt, double n) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < batch;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int last = 0;
    for (int q = 1; q < nt; ++q) {
      double sum = 0.0;
      for (int c = 0; c < chunks; ++c) sum += partials[(b * chunks + c) * nt + q];
      if (sum / n >= tau[b]) last = q;
    }
    const double lo = candidate(bounds + 2 * b, last, nt);
    const double hi = candidate(bounds + 2 * b, last + 1 < nt ? last + 1 : nt - 1, nt);
    bounds[2 * b] = lo;
    bounds[2 * b + 1] = hi;
  }
}

// The window ball (csrc/cpu/ssim_loops.h: window_ball_plane): a warp per window of a
// plane, lanes striding over its pixels, sums by shuffles, the solver of
// csrc/common/window_ball.h (its branches depend on warp totals only: warp-uniform).
__device__ inline double warp_total(double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_total(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// A lane's walk over a window's pixels in steps of 32 (row-major within the window): one
// 32-bit division per lane and window, none per pixel.
struct WindowWalk {
  int row, col, dr, dc, ww;
  __device__ WindowWalk(int lane, int ww_) : row(lane / ww_), col(lane % ww_), dr(32 / ww_), dc(32 % ww_), ww(ww_) {}
  __device__ void next() {
    row += dr;
    col += dc;
    if (col >= ww) {
      col -= ww;
      ++row;
    }
  }
};

// One window as csrc/common/window_ball.h's solver reads it: the warp's lanes walk its
// pixels (WindowWalk) and every sum ends in a warp total, the same on all lanes.
template <typename T>
struct WarpWindow {
  T* d;
  const T* x;
  int64_t w;
  int lane, ww, cnt;
  __device__ int count() const { return cnt; }
  template <typename F>
  __device__ T sum(F f) const {
    T acc = 0;
    WindowWalk it(lane, ww);
    for (int e = lane; e < cnt; e += 32, it.next()) {
      const int64_t o = static_cast<int64_t>(it.row) * w + it.col;
      acc += f(x[o], d[o]);
    }
    return warp_total(acc);
  }
  template <typename F>
  __device__ WinPair<T> sum2(F f) const {
    WinPair<T> acc{0, 0};
    WindowWalk it(lane, ww);
    for (int e = lane; e < cnt; e += 32, it.next()) {
      const int64_t o = static_cast<int64_t>(it.row) * w + it.col;
      const WinPair<T> v = f(x[o], d[o]);
      acc.a += v.a;
      acc.b += v.b;
    }
    return WinPair<T>{warp_total(acc.a), warp_total(acc.b)};
  }
  template <typename F>
  __device__ void store(F f) const {
    WindowWalk it(lane, ww);
    for (int e = lane; e < cnt; e += 32, it.next()) {
      const int64_t o = static_cast<int64_t>(it.row) * w + it.col;
      d[o] = f(x[o], d[o]);
    }
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    window_ball_kernel(T* __restrict__ d, const T* __restrict__ x, const T* __restrict__ gamma, int64_t gamma_stride,
                       int64_t planes, int64_t channels, int64_t h, int64_t w, int win, T c_pixel) {
  const int lane = threadIdx.x % 32;
  const int64_t wins_x = (w + win - 1) / win, wins = wins_x * ((h + win - 1) / win);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t id = blockIdx.x * static_cast<int64_t>(kThreads / 32) + threadIdx.x / 32; id < planes * wins;
       id += warps) {
    const int64_t plane = id / wins, k = id % wins;
    const int64_t y0 = (k / wins_x) * win, x0 = (k % wins_x) * win;
    const int wh = static_cast<int>(h - y0 < win ? h - y0 : win), ww = static_cast<int>(w - x0 < win ? w - x0 : win);
    const T g = gamma[(plane / channels) * gamma_stride];
    const WarpWindow<T> window{d + plane * h * w + y0 * w + x0, x + plane * h * w + y0 * w + x0, w, lane, ww, wh * ww};
    window_ball_solve<T>(window, (T(1) - g) / g, c_pixel);
  }
}

int ball_chunks(const Geometry& g) {
  const int64_t n = g.channels * g.ho * g.wo;
  const int64_t by_size = (n + 4 * kThreads - 1) / (4 * kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(by_size, 64)));
}

template <typename S>
cudaError_t launch_ball_typed(const BallArgs& a, cudaStream_t stream) {
  const Geometry g = geometry(a.geometry);
  const int tiles_x = static_cast<int>((g.wo + kValueTile - 1) / kValueTile);
  const int64_t tiles = tiles_x * ((g.ho + kValueTile - 1) / kValueTile);
  const size_t span = kValueTile + g.k - 1;
  const size_t smem = sizeof(double) * (2 * span * span + 5 * span * kValueTile);
  auto* moments = &ball_moments_kernel<S>;
  cudaError_t err = allow_shared(moments, smem, kStaticShared);
  if (err != cudaSuccess) return err;
  const int64_t planes = g.batch * g.channels;
  MIGA_FAST_LAUNCH(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(planes, 65535))),
                   dim3(kValueTile, kValueTile), smem, stream,
                   moments)(static_cast<const S*>(a.geometry.x), static_cast<const S*>(a.geometry.y),
                            static_cast<const double*>(a.geometry.window), g, tiles_x, a.moments);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int chunks = ball_chunks(g);
  const dim3 sums_grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min<int64_t>(g.batch, 65535)));
  const int choose_blocks = static_cast<int>(std::min<int64_t>((g.batch + kThreads - 1) / kThreads, 1024));
  const double n = static_cast<double>(g.channels * g.ho * g.wo);
  for (int r = 0; r < a.rounds; ++r) {
    MIGA_FAST_LAUNCH(sums_grid, dim3(kThreads), 0, stream, ball_sums_kernel)(a.moments, a.bounds, g, a.geometry.c1,
                                                                             a.geometry.c2, a.candidates, a.partials);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    MIGA_FAST_LAUNCH(dim3(choose_blocks), dim3(kThreads), 0, stream, ball_choose_kernel)(
        a.partials, a.tau, a.bounds, g.batch, chunks, a.candidates, n);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_window_ball_typed(const WindowBallArgs& a, cudaStream_t stream) {
  const int64_t wins = ((a.w + a.window - 1) / a.window) * ((a.h + a.window - 1) / a.window);
  const int64_t warps = a.batch * a.channels * wins;
  const int64_t blocks = std::min<int64_t>((warps + kThreads / 32 - 1) / (kThreads / 32), 16 * sm_count());
  MIGA_FAST_LAUNCH(dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream, window_ball_kernel<T>)(
      static_cast<T*>(a.delta), static_cast<const T*>(a.x), static_cast<const T*>(a.gamma), a.gamma_stride,
      a.batch * a.channels, a.channels, a.h, a.w, static_cast<int>(a.window), static_cast<T>(a.c_pixel));
  return cudaGetLastError();
}

}  // namespace

int64_t ssim_tiles(const SsimArgs& a, bool with_grad) {
  int64_t tiles_x = 0, tiles = 0;
  if (a.is_double)
    tile_grid<double>(geometry(a), with_grad, &tiles_x, &tiles);
  else
    tile_grid<float>(geometry(a), with_grad, &tiles_x, &tiles);
  return tiles;
}

size_t ssim_shared_bytes(const SsimArgs& a, bool with_grad) {
  const Geometry g = geometry(a);
  // the dynamic buffer plus the static one both kernels declare (`red`, the block sum)
  const size_t dynamic = a.is_double ? shared_bytes<double>(g, with_grad) : shared_bytes<float>(g, with_grad);
  return dynamic + kStaticShared;
}

size_t ssim_shared_limit() {
  return static_cast<size_t>(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024));
}

cudaError_t launch_ssim(const SsimArgs& a, bool with_grad, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  return a.is_double ? launch_typed<double>(a, with_grad, stream) : launch_typed<float>(a, with_grad, stream);
}

int64_t ssim_ball_chunks(const SsimArgs& a) { return ball_chunks(geometry(a)); }

size_t ssim_ball_shared_bytes(const SsimArgs& a) {
  const size_t span = kValueTile + a.k - 1;
  return sizeof(double) * (2 * span * span + 5 * span * kValueTile);
}

cudaError_t launch_ssim_ball_scale(const BallArgs& a, cudaStream_t stream) {
  if (a.geometry.batch == 0) return cudaSuccess;
  return a.geometry.is_double ? launch_ball_typed<double>(a, stream) : launch_ball_typed<float>(a, stream);
}

cudaError_t launch_ssim_window_ball(const WindowBallArgs& a, cudaStream_t stream) {
  if (a.batch * a.channels * a.h * a.w == 0) return cudaSuccess;
  return a.is_double ? launch_window_ball_typed<double>(a, stream) : launch_window_ball_typed<float>(a, stream);
}

}  // namespace cuda
}  // namespace miga_fast
