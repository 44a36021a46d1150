// CUDA kernels of the MINE family (docs/algorithms.md §3), raw pointers only: the same
// math as csrc/cpu/mine_loops.h and triton_kernels/mine.py; T_ij = sum_h w_h act(u_ih + v_jh).
//
// Forward (lse_kernel): register-blocked, 64 x 64 tiles of T per block of 256 threads, 4 x 4
// pairs per thread, an online log-sum-exp per row; nothing B x B is written.
//
// Backward: a block of 16 x 16 threads owns a 16-row (or 16-column) strip of T and walks
// the other axis in 16-wide tiles; the u and v slices of a tile sit in shared memory kChunk
// hidden units at a time and thread (ty, tx) scores pair (ty, tx). It puts p_ij = g_i
// exp(T_ij - lse_i) in shared memory, and thread (ty, tx) then adds the tile's
// contribution for hidden units tx, tx + 16, ... of its row (or column) to the output,
// which only this block writes: no atomics, deterministic. (docs/kernels.md: the
// flash-style backward that replaces it.)

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/mine_math.h"
#include "device.h"
#include "mine.h"

namespace miga_fast {
namespace cuda {
namespace {

// The forward, register-blocked: a block of 256 threads owns a kBlockTile-row strip of T
// and walks it in kBlockTile-column tiles; thread (ty, tx) = (tid / 16, tid % 16)
// accumulates the kReg x kReg pairs (r0 + kReg ty + a, c0 + kReg tx + b). Slices of kHc
// hidden units of u and v sit in shared memory transposed ([h][row], padded against bank
// conflicts), so per hidden unit a thread reads kReg + kReg values for kReg^2 pair terms
// (0.5 shared loads per pair-h; 3 in the one-pair-per-thread kernel it replaces). Each
// thread keeps an online log-sum-exp of its rows over its columns; the 16 threads of a row
// group merge theirs by shuffles in a fixed order (deterministic).
constexpr int kBlockTile = 64, kReg = 4, kBlockedThreads = 256;

// Hidden units per shared slice: 16 (8 for double, so the backward's p tile fits beside
// the slices in 48 KiB of static shared memory).
template <typename T>
constexpr int slice_units() {
  return sizeof(T) == 4 ? 16 : 8;
}

template <typename T>
struct BlockedSmem {
  static constexpr int kHc = slice_units<T>();
  T u[kHc][kBlockTile + 1];
  T v[kHc][kBlockTile + 1];
  T w[kHc];
};

// Loads hidden units [h0, h0 + kHc) of rows r0.. and columns c0.. into the slices,
// transposed (zeros past the ends). Consecutive threads load consecutive h (coalesced).
template <typename T>
__device__ __forceinline__ void load_slices(BlockedSmem<T>& s, const T* __restrict__ u, const T* __restrict__ v,
                                            const T* __restrict__ w, int64_t r0, int64_t c0, int64_t B, int64_t H,
                                            int64_t h0) {
  constexpr int kHc = BlockedSmem<T>::kHc;
  for (int e = threadIdx.x; e < kBlockTile * kHc; e += kBlockedThreads) {
    const int r = e / kHc, k = e % kHc;
    const int64_t h = h0 + k;
    s.u[k][r] = (r0 + r < B && h < H) ? u[(r0 + r) * H + h] : T(0);
    s.v[k][r] = (c0 + r < B && h < H) ? v[(c0 + r) * H + h] : T(0);
  }
  if (threadIdx.x < kHc) s.w[threadIdx.x] = h0 + threadIdx.x < H ? w[h0 + threadIdx.x] : T(0);
}

template <typename T>
__device__ __forceinline__ void lse_merge(T& m, T& s, T mo, T so) {
  const T ninf = static_cast<T>(-INFINITY);
  const T mn = fmax(m, mo);
  const T ms = mn == ninf ? T(0) : mn;
  s = s * std::exp(m - ms) + so * std::exp(mo - ms);
  m = mn;
}

template <typename Act>
constexpr bool is_relu = false;
template <typename T>
constexpr bool is_relu<Relu<T>> = true;

// acc[a][b] = T[r0 + kReg ty + a, c0 + kReg tx + b] over every hidden unit (every thread of
// the block takes part: it synchronises). ReLU takes 2 instructions per pair-h instead of
// 3: with a = |w_h| u_ih and b = |w_h| v_jh, w_h relu(u_ih + v_jh) = sign(w_h) (max(a, -b) +
// b), and the sum over h of sign(w_h) b is colsum_j = sum_h w_h v_jh (computed by the glue):
// the slices hold a and -b, scaled as they are loaded, and the loop does a max and a fma.
template <typename Act, typename T>
__device__ __forceinline__ void blocked_tile(BlockedSmem<T>& s, const T* __restrict__ u, const T* __restrict__ v,
                                             const T* __restrict__ w, const T* __restrict__ colsum, int64_t r0,
                                             int64_t c0, int64_t B, int64_t H, T (&acc)[kReg][kReg]) {
  constexpr int kHc = BlockedSmem<T>::kHc;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < kReg; ++a)
#pragma unroll
    for (int b = 0; b < kReg; ++b) acc[a][b] = T(0);
  for (int64_t h0 = 0; h0 < H; h0 += kHc) {
    __syncthreads();
    if constexpr (is_relu<Act>) {
      for (int e = threadIdx.x; e < kBlockTile * kHc; e += kBlockedThreads) {
        const int r = e / kHc, k = e % kHc;
        const int64_t h = h0 + k;
        const T aw = h < H ? std::fabs(w[h]) : T(0);
        s.u[k][r] = (r0 + r < B && h < H) ? aw * u[(r0 + r) * H + h] : T(0);
        s.v[k][r] = (c0 + r < B && h < H) ? -(aw * v[(c0 + r) * H + h]) : T(0);
      }
      if (threadIdx.x < kHc)
        s.w[threadIdx.x] = h0 + threadIdx.x < H ? (w[h0 + threadIdx.x] < T(0) ? T(-1) : T(1)) : T(0);
    } else {
      load_slices(s, u, v, w, r0, c0, B, H, h0);
    }
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < kHc; ++k) {
      T av[kReg], bv[kReg];
#pragma unroll
      for (int a = 0; a < kReg; ++a) {
        av[a] = s.u[k][ty * kReg + a];
        bv[a] = s.v[k][tx * kReg + a];
      }
      const T wk = s.w[k];
#pragma unroll
      for (int a = 0; a < kReg; ++a)
#pragma unroll
        for (int b = 0; b < kReg; ++b) {
          if constexpr (is_relu<Act>) {
            acc[a][b] += wk * fmax(av[a], bv[b]);
          } else {
            acc[a][b] += wk * Act::f(av[a] + bv[b]);
          }
        }
    }
  }
  if constexpr (is_relu<Act>) {
#pragma unroll
    for (int b = 0; b < kReg; ++b) {
      const int64_t j = c0 + tx * kReg + b;
      const T cs = j < B ? colsum[j] : T(0);
#pragma unroll
      for (int a = 0; a < kReg; ++a) acc[a][b] += cs;
    }
  }
}

// Float: 2 blocks per SM (at most 128 registers: 16 accumulators, 8 operands); double
// needs more, 1 block.
template <typename Act, typename T>
__global__ void __launch_bounds__(kBlockedThreads, sizeof(T) == 4 ? 2 : 1)
    lse_kernel(const T* __restrict__ u, const T* __restrict__ v, const T* __restrict__ w, const T* __restrict__ colsum,
               T* __restrict__ lse, T* __restrict__ part, int64_t B, int64_t H, bool exclude_diag) {
  __shared__ BlockedSmem<T> s;
  const T ninf = static_cast<T>(-INFINITY);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBlockTile;
  T m[kReg], sum[kReg];
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    m[a] = ninf;
    sum[a] = T(0);
  }
  // grid.y splits the columns: split s takes column tiles s, s + splits, ...
  const int splits = gridDim.y;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.y) * kBlockTile; c0 < B;
       c0 += static_cast<int64_t>(splits) * kBlockTile) {
    T acc[kReg][kReg];
    blocked_tile<Act>(s, u, v, w, colsum, r0, c0, B, H, acc);
#pragma unroll
    for (int a = 0; a < kReg; ++a) {  // fold this tile's columns into the rows' online lse
      const int64_t i = r0 + ty * kReg + a;
      T tile_max = ninf;
#pragma unroll
      for (int b = 0; b < kReg; ++b) {
        const int64_t j = c0 + tx * kReg + b;
        if (i >= B || j >= B || (exclude_diag && i == j)) acc[a][b] = ninf;
        tile_max = fmax(tile_max, acc[a][b]);
      }
      T tile_sum = T(0);
      const T base = tile_max == ninf ? T(0) : tile_max;
#pragma unroll
      for (int b = 0; b < kReg; ++b) tile_sum += std::exp(acc[a][b] - base);
      lse_merge(m[a], sum[a], tile_max, tile_sum);
    }
  }
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
#pragma unroll
    for (int off = 8; off > 0; off /= 2) {  // the 16 threads of row group ty, within one warp
      const T mo = __shfl_xor_sync(0xffffffffu, m[a], off, 16);
      const T so = __shfl_xor_sync(0xffffffffu, sum[a], off, 16);
      lse_merge(m[a], sum[a], mo, so);
    }
    const int64_t i = r0 + ty * kReg + a;
    if (tx == 0 && i < B) {
      if (splits == 1) {
        lse[i] = m[a] + std::log(sum[a]);
      } else {  // this split's (max, sum) of row i, merged by lse_merge_kernel
        part[(blockIdx.y * B + i) * 2] = m[a];
        part[(blockIdx.y * B + i) * 2 + 1] = sum[a];
      }
    }
  }
}

// Per row, the splits' (max, sum) pairs merged in split order (fixed: deterministic).
template <typename T>
__global__ void __launch_bounds__(kBlockedThreads)
    lse_merge_kernel(const T* __restrict__ part, T* __restrict__ lse, int64_t B, int splits) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T m = static_cast<T>(-INFINITY), sum = T(0);
    for (int k = 0; k < splits; ++k) lse_merge(m, sum, part[(k * B + i) * 2], part[(k * B + i) * 2 + 1]);
    lse[i] = m + std::log(sum);
  }
}

// Column splits for B rows: enough blocks to fill an H100 or H200 twice over (about 264),
// at most one split per column tile; a function of B alone, so the merge order, and every
// bit of the result, is the same on every GPU model.
int64_t lse_splits(int64_t B) {
  const int64_t row_blocks = (B + kBlockTile - 1) / kBlockTile;
  const int64_t wanted = (264 + row_blocks - 1) / row_blocks;
  return std::max<int64_t>(1, std::min<int64_t>({wanted, row_blocks, 65535}));
}

// The backward, register-blocked like the forward. A block owns a 64-row strip (rows
// kernel) or a 64-column strip (columns kernel) and walks the other axis in 64-wide tiles:
// it rebuilds the tile of T (blocked_tile), puts p_ij = g_i exp(T_ij - lse_i) in shared
// memory, then, a slice of hidden units at a time, gives each thread kReg (row or column,
// h) outputs to sum over the tile's 64 partners, and adds them to the output, which only
// this block writes (no atomics, deterministic). The outputs are read and written once per
// 64-wide tile (once per 16-wide tile before: a quarter of the traffic).
template <typename T>
struct BackwardSmem {
  BlockedSmem<T> slices;
  T p[kBlockTile][kBlockTile + 1];
};

template <typename Act, typename T>
__device__ __forceinline__ void tile_weights(BackwardSmem<T>& s, const T* __restrict__ u, const T* __restrict__ v,
                                             const T* __restrict__ w, const T* __restrict__ colsum,
                                             const T* __restrict__ g, const T* __restrict__ lse, int64_t r0, int64_t c0,
                                             int64_t B, int64_t H, bool exclude_diag) {
  T acc[kReg][kReg];
  blocked_tile<Act>(s.slices, u, v, w, colsum, r0, c0, B, H, acc);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    const int64_t i = r0 + ty * kReg + a;
    const T gi = i < B ? g[i] : T(0), li = i < B ? lse[i] : T(0);
#pragma unroll
    for (int b = 0; b < kReg; ++b) {
      const int64_t j = c0 + tx * kReg + b;
      const bool valid = i < B && j < B && !(exclude_diag && i == j);
      s.p[ty * kReg + a][tx * kReg + b] = valid ? gi * std::exp(acc[a][b] - li) : T(0);
    }
  }
}

// SHARED_ACC: the block's outputs (64 x H for each of gu and gw) accumulate in dynamic
// shared memory across the column tiles and are written once at the end; otherwise (H
// too large for shared memory) they are added to global memory once per tile. Each output
// element belongs to one thread of one block throughout: no atomics, no barriers for it.
template <typename Act, typename T, bool SHARED_ACC>
__global__ void __launch_bounds__(kBlockedThreads, 1)  // at 128 registers the Elu instantiation spilled
    grad_rows_kernel(const T* __restrict__ u, const T* __restrict__ v, const T* __restrict__ w,
                     const T* __restrict__ colsum, const T* __restrict__ g, const T* __restrict__ lse,
                     T* __restrict__ gu, T* __restrict__ gw_rows, int64_t B, int64_t H, bool exclude_diag) {
  __shared__ BackwardSmem<T> s;
  MIGA_FAST_DYNAMIC_SHARED(acc_raw);
  T* acc_u = reinterpret_cast<T*>(acc_raw);  // SHARED_ACC: [64][H], then acc_w [64][H]
  T* acc_w = acc_u + kBlockTile * H;
  constexpr int kHc = BlockedSmem<T>::kHc, kPer = kHc * kBlockTile / kBlockedThreads;  // outputs per thread
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBlockTile;
  const int rr = threadIdx.x / (kHc / kPer), k0 = (threadIdx.x % (kHc / kPer)) * kPer;  // row, first h
  if (SHARED_ACC)
    for (int64_t h = k0; h < H; h += kHc)
#pragma unroll
      for (int q = 0; q < kPer; ++q)
        if (h + q < H) acc_u[rr * H + h + q] = acc_w[rr * H + h + q] = T(0);
  for (int64_t c0 = 0; c0 < B; c0 += kBlockTile) {
    tile_weights<Act>(s, u, v, w, colsum, g, lse, r0, c0, B, H, exclude_diag);
    for (int64_t h0 = 0; h0 < H; h0 += kHc) {
      __syncthreads();  // p is written; the slices are free
      load_slices(s.slices, u, v, w, r0, c0, B, H, h0);
      __syncthreads();
      T du[kPer], dw[kPer];
#pragma unroll
      for (int q = 0; q < kPer; ++q) du[q] = dw[q] = T(0);
      for (int j = 0; j < kBlockTile; ++j) {
        const T pj = s.p[rr][j];
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const T z = s.slices.u[k0 + q][rr] + s.slices.v[k0 + q][j];
          du[q] += pj * Act::df(z);
          dw[q] += pj * Act::f(z);
        }
      }
      const int64_t i = r0 + rr;
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int64_t h = h0 + k0 + q;
        if (h >= H) continue;
        if (SHARED_ACC) {
          acc_u[rr * H + h] += du[q];
          acc_w[rr * H + h] += dw[q];
        } else if (i < B) {
          gu[i * H + h] += du[q];
          gw_rows[i * H + h] += dw[q];
        }
      }
    }
  }
  const int64_t i = r0 + rr;
  if (SHARED_ACC && i < B)
    for (int64_t h = k0; h < H; h += kHc)
#pragma unroll
      for (int q = 0; q < kPer; ++q)
        if (h + q < H) {
          gu[i * H + h + q] = acc_u[rr * H + h + q];
          gw_rows[i * H + h + q] = acc_w[rr * H + h + q];
        }
}

template <typename Act, typename T, bool SHARED_ACC>
__global__ void __launch_bounds__(kBlockedThreads, 1)  // at 128 registers the Elu instantiation spilled
    grad_cols_kernel(const T* __restrict__ u, const T* __restrict__ v, const T* __restrict__ w,
                     const T* __restrict__ colsum, const T* __restrict__ g, const T* __restrict__ lse,
                     T* __restrict__ gv, int64_t B, int64_t H, bool exclude_diag) {
  __shared__ BackwardSmem<T> s;
  MIGA_FAST_DYNAMIC_SHARED(acc_raw);
  T* acc_v = reinterpret_cast<T*>(acc_raw);  // SHARED_ACC: [64][H]
  constexpr int kHc = BlockedSmem<T>::kHc, kPer = kHc * kBlockTile / kBlockedThreads;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBlockTile;
  const int cc = threadIdx.x / (kHc / kPer), k0 = (threadIdx.x % (kHc / kPer)) * kPer;  // column, first h
  if (SHARED_ACC)
    for (int64_t h = k0; h < H; h += kHc)
#pragma unroll
      for (int q = 0; q < kPer; ++q)
        if (h + q < H) acc_v[cc * H + h + q] = T(0);
  for (int64_t r0 = 0; r0 < B; r0 += kBlockTile) {
    tile_weights<Act>(s, u, v, w, colsum, g, lse, r0, c0, B, H, exclude_diag);
    for (int64_t h0 = 0; h0 < H; h0 += kHc) {
      __syncthreads();
      load_slices(s.slices, u, v, w, r0, c0, B, H, h0);
      __syncthreads();
      T dv[kPer];
#pragma unroll
      for (int q = 0; q < kPer; ++q) dv[q] = T(0);
      for (int i = 0; i < kBlockTile; ++i) {
        const T pi = s.p[i][cc];
#pragma unroll
        for (int q = 0; q < kPer; ++q) dv[q] += pi * Act::df(s.slices.u[k0 + q][i] + s.slices.v[k0 + q][cc]);
      }
      const int64_t j = c0 + cc;
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int64_t h = h0 + k0 + q;
        if (h >= H) continue;
        if (SHARED_ACC)
          acc_v[cc * H + h] += dv[q];
        else if (j < B)
          gv[j * H + h] += dv[q];
      }
    }
  }
  const int64_t j = c0 + cc;
  if (SHARED_ACC && j < B)
    for (int64_t h = k0; h < H; h += kHc)
#pragma unroll
      for (int q = 0; q < kPer; ++q)
        if (h + q < H) gv[j * H + h + q] = acc_v[cc * H + h + q];
}

template <typename T, typename F>
cudaError_t with_activation(int code, F&& fn) {
  switch (code) {
    case 0:
      return fn(Relu<T>{});
    case 1:
      return fn(Elu<T>{});
    default:
      return fn(Softplus<T>{});
  }
}

template <typename T>
cudaError_t forward_typed(const MineArgs& a, cudaStream_t stream) {
  const int64_t splits = lse_splits(a.batch);
  const dim3 grid(static_cast<unsigned>((a.batch + kBlockTile - 1) / kBlockTile), static_cast<unsigned>(splits));
  T* part = static_cast<T*>(a.workspace);
  return with_activation<T>(a.activation, [&](auto act) {
    using Act = decltype(act);
    MIGA_FAST_LAUNCH(grid, dim3(kBlockedThreads), 0, stream, lse_kernel<Act, T>)(
        static_cast<const T*>(a.u), static_cast<const T*>(a.v), static_cast<const T*>(a.w),
        static_cast<const T*>(a.colsum), static_cast<T*>(a.out), part, a.batch, a.hidden, a.exclude_diag);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || splits == 1) return err;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((a.batch + kBlockedThreads - 1) / kBlockedThreads, 1024));
    MIGA_FAST_LAUNCH(dim3(blocks), dim3(kBlockedThreads), 0, stream, lse_merge_kernel<T>)(
        part, static_cast<T*>(a.out), a.batch, static_cast<int>(splits));
    return cudaGetLastError();
  });
}

// Launches kernel<SHARED_ACC = true> with `dynamic` bytes of accumulators when they fit
// beside the static buffers, else kernel<false> (outputs added in global memory per tile).
template <typename KTrue, typename KFalse, typename... Args>
cudaError_t launch_accumulating(KTrue* shared_acc, KFalse* global_acc, size_t static_bytes, size_t dynamic,
                                unsigned grid, cudaStream_t stream, Args... args) {
  if (dynamic + static_bytes <= shared_optin_limit()) {
    const cudaError_t err = allow_shared(shared_acc, dynamic);
    if (err == cudaSuccess) {
      MIGA_FAST_LAUNCH(dim3(grid), dim3(kBlockedThreads), dynamic, stream, shared_acc)(args...);
      return cudaGetLastError();
    }
    (void)cudaGetLastError();  // the opt-in was refused: take the global path
  }
  MIGA_FAST_LAUNCH(dim3(grid), dim3(kBlockedThreads), 0, stream, global_acc)(args...);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const MineArgs& a, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>((a.batch + kBlockTile - 1) / kBlockTile);
  const size_t row_bytes = static_cast<size_t>(kBlockTile) * a.hidden * sizeof(T);
  return with_activation<T>(a.activation, [&](auto act) {
    using Act = decltype(act);
    const T *u = static_cast<const T*>(a.u), *v = static_cast<const T*>(a.v), *w = static_cast<const T*>(a.w);
    const T *g = static_cast<const T*>(a.grad), *lse = static_cast<const T*>(a.lse);
    const T* colsum = static_cast<const T*>(a.colsum);
    cudaError_t err =
        launch_accumulating(&grad_rows_kernel<Act, T, true>, &grad_rows_kernel<Act, T, false>, sizeof(BackwardSmem<T>),
                            2 * row_bytes, grid, stream, u, v, w, colsum, g, lse, static_cast<T*>(a.gu),
                            static_cast<T*>(a.gw_rows), a.batch, a.hidden, a.exclude_diag);
    if (err != cudaSuccess) return err;
    return launch_accumulating(&grad_cols_kernel<Act, T, true>, &grad_cols_kernel<Act, T, false>,
                               sizeof(BackwardSmem<T>), row_bytes, grid, stream, u, v, w, colsum, g, lse,
                               static_cast<T*>(a.gv), a.batch, a.hidden, a.exclude_diag);
  });
}

}  // namespace

size_t mine_row_lse_workspace_bytes(int64_t batch, bool is_double) {
  const int64_t splits = lse_splits(batch);
  return splits == 1 ? 0 : static_cast<size_t>(splits * batch * 2) * (is_double ? sizeof(double) : sizeof(float));
}

cudaError_t launch_mine_row_lse(const MineArgs& a, cudaStream_t stream) {
  return a.is_double ? forward_typed<double>(a, stream) : forward_typed<float>(a, stream);
}

cudaError_t launch_mine_row_lse_backward(const MineArgs& a, cudaStream_t stream) {
  return a.is_double ? backward_typed<double>(a, stream) : backward_typed<float>(a, stream);
}

}  // namespace cuda
}  // namespace miga_fast
