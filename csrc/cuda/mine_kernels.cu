// CUDA kernels of the MINE family (docs/algorithms.md §3), raw pointers only: the same
// math as csrc/cpu/mine_loops.h and triton_kernels/mine.py; T_ij = sum_h w_h act(u_ih + v_jh).
//
// Forward (lse_kernel): register-blocked, 64 x 64 tiles of T per block of 256 threads, 4 x 4
// pairs per thread, an online log-sum-exp per row; nothing B x B is written.
// Backward (grad_rows_kernel, grad_cols_kernel): the same tiles rebuilt, p_ij = g_i
// exp(T_ij - lse_i) in shared memory, then each output (row or column, hidden unit) summed
// over the tile's 64 partners by one thread; no atomics, deterministic.
//
// Operands (mine.h, built by the glue): u and v transposed to [Hp][ld], zero-padded to
// whole tiles (ld a multiple of 64 columns, Hp of 16 hidden units), so a slice of kHc hidden
// units of 64 rows is kHc runs of 64 contiguous, 16-byte aligned values, loaded by cp.async
// into a ring of kStages shared buffers kStages - 1 slices ahead of the arithmetic, and no
// load needs a bounds check.
#include <cuda_pipeline_primitives.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/mine_math.h"
#include "device.h"
#include "mine.h"

namespace miga_fast {
namespace cuda {
namespace {

constexpr int kBlockTile = kMineTile, kReg = 4, kBlockedThreads = 256, kStages = 3;
static_assert(kBlockTile == 64, "the thread layout assumes 64 x 64 tiles of 16 x 16 threads");

// Hidden units per shared slice: 16 floats or 8 doubles (4 KiB of u or v per slice).
template <typename T>
constexpr int slice_units() {
  return sizeof(T) == 4 ? 16 : 8;
}
static_assert(kMineSliceUnits % slice_units<float>() == 0 && kMineSliceUnits % slice_units<double>() == 0,
              "the glue pads the hidden units to whole slices");

// One stage of the ring: hidden units [h0, h0 + kHc) of the block's 64 rows (u) and 64
// columns (v), [h][row], and their weights. Rows are padded by 16 bytes: they stay 16-byte
// aligned for cp.async and vector reads, and consecutive rows start 4 banks apart (the
// backward reads 4 rows at one column at once).
template <typename T>
struct Slice {
  static constexpr int kHc = slice_units<T>(), kLd = kBlockTile + 16 / static_cast<int>(sizeof(T));
  alignas(16) T u[kHc][kLd];
  alignas(16) T v[kHc][kLd];
  alignas(16) T w[kHc];
};

// Issues the asynchronous copies of one slice (16 bytes each, consecutive threads on
// consecutive chunks of a row: coalesced); the caller commits them.
template <typename T>
__device__ __forceinline__ void issue_slice(Slice<T>& s, const T* __restrict__ a, const T* __restrict__ b,
                                            const T* __restrict__ w, int64_t ld, int64_t r0, int64_t c0, int64_t h0) {
  constexpr int kHc = Slice<T>::kHc, kVec = 16 / static_cast<int>(sizeof(T)), kPerRow = kBlockTile / kVec;
  for (int e = threadIdx.x; e < kHc * kPerRow; e += kBlockedThreads) {
    const int k = e / kPerRow, c = (e % kPerRow) * kVec;
    __pipeline_memcpy_async(&s.u[k][c], a + (h0 + k) * ld + r0 + c, 16);
    __pipeline_memcpy_async(&s.v[k][c], b + (h0 + k) * ld + c0 + c, 16);
  }
  if (threadIdx.x < kHc / kVec) __pipeline_memcpy_async(&s.w[threadIdx.x * kVec], w + h0 + threadIdx.x * kVec, 16);
}

// Runs body(slice, h0) over the slices h0 = 0, kHc, ... < Hp of rows r0.. (from a) and columns
// c0.. (from b), each loaded kStages - 1 slices ahead: while the block computes on slice q,
// slices q + 1 and q + 2 are in flight. One barrier per slice: it publishes slice q to every
// thread and tells them all that slice q - 1's buffer, the one refilled next, has been read.
// Every thread of the block calls it (it synchronises).
template <typename T, typename Body>
__device__ __forceinline__ void over_slices(Slice<T>* ring, const T* __restrict__ a, const T* __restrict__ b,
                                            const T* __restrict__ w, int64_t ld, int64_t Hp, int64_t r0, int64_t c0,
                                            Body&& body) {
  constexpr int kHc = Slice<T>::kHc;
  const int64_t n = Hp / kHc;
  __syncthreads();  // the ring's previous readers are done with it
#pragma unroll
  for (int q = 0; q < kStages - 1; ++q) {
    if (q < n) issue_slice(ring[q], a, b, w, ld, r0, c0, q * kHc);
    __pipeline_commit();
  }
  for (int64_t q = 0; q < n; ++q) {
    __pipeline_wait_prior(kStages - 2);  // this thread's copies of slice q have landed
    __syncthreads();                     // ... and every thread's
    const int64_t next = q + kStages - 1;
    if (next < n) issue_slice(ring[next % kStages], a, b, w, ld, r0, c0, next * kHc);
    __pipeline_commit();  // an empty group past the end keeps the count uniform
    body(ring[q % kStages], q * kHc);
  }
  __pipeline_wait_prior(0);  // only empty groups are left
}

template <typename T>
__device__ __forceinline__ void load4(const T* p, T (&o)[4]) {
  if constexpr (sizeof(T) == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    o[0] = x.x, o[1] = x.y, o[2] = x.z, o[3] = x.w;
  } else {
    const double2 x = *reinterpret_cast<const double2*>(p), y = *reinterpret_cast<const double2*>(p + 2);
    o[0] = x.x, o[1] = x.y, o[2] = y.x, o[3] = y.y;
  }
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

// acc[a][b] = T[r0 + kReg ty + a, c0 + kReg tx + b], thread (ty, tx) = (tid / 16, tid % 16):
// per hidden unit a thread reads kReg + kReg values (two 16-byte reads) for kReg^2 pair
// terms. ReLU takes 2 instructions per pair-h instead of 3: the glue hands a = |w_h| u_ih,
// b = -|w_h| v_jh and sign(w_h), so w_h relu(u_ih + v_jh) = sign(w_h) max(a, b) - sign(w_h) b
// and the sum over h of the last term is colsum_j = sum_h w_h v_jh (the glue's v @ w2).
template <typename Act, typename T>
__device__ __forceinline__ void blocked_tile(Slice<T>* ring, const MineOperands<T>& op, int64_t r0, int64_t c0,
                                             T (&acc)[kReg][kReg]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < kReg; ++a)
#pragma unroll
    for (int b = 0; b < kReg; ++b) acc[a][b] = T(0);
  over_slices(ring, op.a, op.b, op.w, op.ld, op.hidden_padded, r0, c0, [&](const Slice<T>& s, int64_t) {
#pragma unroll 4
    for (int k = 0; k < Slice<T>::kHc; ++k) {
      T av[kReg], bv[kReg];
      load4(&s.u[k][ty * kReg], av);
      load4(&s.v[k][tx * kReg], bv);
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
  });
  if constexpr (is_relu<Act>) {
#pragma unroll
    for (int b = 0; b < kReg; ++b) {
      const int64_t j = c0 + tx * kReg + b;
      const T cs = j < op.batch ? op.colsum[j] : T(0);
#pragma unroll
      for (int a = 0; a < kReg; ++a) acc[a][b] += cs;
    }
  }
}

// Float: 2 blocks per SM (at most 128 registers: 16 accumulators, 8 operands); double
// needs more, 1 block. The ring (3 stages, ~26 KiB) is static shared memory.
template <typename Act, typename T>
__global__ void __launch_bounds__(kBlockedThreads, sizeof(T) == 4 ? 2 : 1)
    lse_kernel(const MineOperands<T> op, T* __restrict__ lse, T* __restrict__ part, bool exclude_diag) {
  MIGA_FAST_SHARED(ring, Slice<T>[kStages]);
  const T ninf = static_cast<T>(-INFINITY);
  const int64_t B = op.batch;
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
    blocked_tile<Act>(ring, op, r0, c0, acc);
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

// The backward's dynamic shared memory: the ring, the tile of p, then (SHARED_ACC) the
// block's output accumulators, [64][H + 1] each (the odd row stride spreads the 8 rows a
// warp updates at once over the banks).
template <typename T>
struct BackwardLayout {
  static constexpr size_t kRing = sizeof(Slice<T>) * kStages;
  static constexpr size_t kP = sizeof(T) * kBlockTile * (kBlockTile + 1);
  static constexpr size_t kStatic = kRing + kP;  // what every launch needs
  static size_t accumulators(int64_t H, int n) { return sizeof(T) * n * kBlockTile * (H + 1); }
};

// Rebuilds the tile (r0, c0) of T and puts p_ij = g_i exp(T_ij - lse_i) in shared memory.
template <typename Act, typename T>
__device__ __forceinline__ void tile_weights(Slice<T>* ring, T (*p)[kBlockTile + 1], const MineOperands<T>& op,
                                             const T* __restrict__ g, const T* __restrict__ lse, int64_t r0, int64_t c0,
                                             bool exclude_diag) {
  T acc[kReg][kReg];
  blocked_tile<Act>(ring, op, r0, c0, acc);
  const int64_t B = op.batch;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < kReg; ++a) {
    const int64_t i = r0 + ty * kReg + a;
    const T gi = i < B ? g[i] : T(0), li = i < B ? lse[i] : T(0);
#pragma unroll
    for (int b = 0; b < kReg; ++b) {
      const int64_t j = c0 + tx * kReg + b;
      const bool valid = i < B && j < B && !(exclude_diag && i == j);
      p[ty * kReg + a][tx * kReg + b] = valid ? gi * std::exp(acc[a][b] - li) : T(0);
    }
  }
}

// In the backward's second pass thread tid owns row (or column) tid / 4 of the strip and
// hidden units t, t + 4, ... (t = tid % 4) of each slice: kPer of them.
template <typename T>
constexpr int outputs_per_thread() {
  return Slice<T>::kHc * kBlockTile / kBlockedThreads;
}

// The rows kernel: a block owns a 64-row strip and walks the columns in 64-wide tiles; per
// tile it rebuilds p, then streams the unscaled u and v slices through the ring again and
// sums du_ih = sum_j p_ij act'(z_ijh) and dw_ih = sum_j p_ij act(z_ijh) over the tile.
// SHARED_ACC: the outputs accumulate in shared memory across the tiles and are written
// once; otherwise they are added to global memory once per tile. Each output element
// belongs to one thread of one block throughout: no atomics, no barriers for it.
template <typename Act, typename T, bool SHARED_ACC>
__global__ void __launch_bounds__(kBlockedThreads, 1)  // at 128 registers the Elu instantiation spilled
    grad_rows_kernel(const MineOperands<T> op, const T* __restrict__ g, const T* __restrict__ lse, T* __restrict__ gu,
                     T* __restrict__ gw_rows, bool exclude_diag) {
  MIGA_FAST_DYNAMIC_SHARED(smem);
  using L = BackwardLayout<T>;
  Slice<T>* ring = reinterpret_cast<Slice<T>*>(smem);
  auto p = reinterpret_cast<T(*)[kBlockTile + 1]>(smem + L::kRing);
  const int64_t B = op.batch, H = op.hidden, acc_ld = H + 1;
  T* acc_u = reinterpret_cast<T*>(smem + L::kStatic);  // SHARED_ACC: [64][H + 1], then acc_w
  T* acc_w = acc_u + kBlockTile * acc_ld;
  constexpr int kPer = outputs_per_thread<T>();
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBlockTile;
  const int rr = threadIdx.x / 4, t = threadIdx.x % 4;
  const int64_t i = r0 + rr;
  if (SHARED_ACC)
    for (int64_t h = t; h < H; h += 4) acc_u[rr * acc_ld + h] = acc_w[rr * acc_ld + h] = T(0);
  for (int64_t c0 = 0; c0 < B; c0 += kBlockTile) {
    tile_weights<Act>(ring, p, op, g, lse, r0, c0, exclude_diag);
    over_slices(ring, op.u, op.v, op.w, op.ld, op.hidden_padded, r0, c0, [&](const Slice<T>& s, int64_t h0) {
      T du[kPer], dw[kPer], ui[kPer];
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        du[q] = dw[q] = T(0);
        ui[q] = s.u[t + 4 * q][rr];
      }
      for (int j = 0; j < kBlockTile; ++j) {
        const T pj = p[rr][j];
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const T z = ui[q] + s.v[t + 4 * q][j];
          du[q] += pj * Act::df(z);
          dw[q] += pj * Act::f(z);
        }
      }
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int64_t h = h0 + t + 4 * q;
        if (h >= H) continue;
        if (SHARED_ACC) {
          acc_u[rr * acc_ld + h] += du[q];
          acc_w[rr * acc_ld + h] += dw[q];
        } else if (i < B) {
          gu[i * H + h] += du[q];
          gw_rows[i * H + h] += dw[q];
        }
      }
    });
  }
  if (SHARED_ACC && i < B)
    for (int64_t h = t; h < H; h += 4) {
      gu[i * H + h] = acc_u[rr * acc_ld + h];
      gw_rows[i * H + h] = acc_w[rr * acc_ld + h];
    }
}

// The columns kernel: the same over a 64-column strip, summing dv_jh = sum_i p_ij act'(z_ijh).
template <typename Act, typename T, bool SHARED_ACC>
__global__ void __launch_bounds__(kBlockedThreads, 1)  // at 128 registers the Elu instantiation spilled
    grad_cols_kernel(const MineOperands<T> op, const T* __restrict__ g, const T* __restrict__ lse, T* __restrict__ gv,
                     bool exclude_diag) {
  MIGA_FAST_DYNAMIC_SHARED(smem);
  using L = BackwardLayout<T>;
  Slice<T>* ring = reinterpret_cast<Slice<T>*>(smem);
  auto p = reinterpret_cast<T(*)[kBlockTile + 1]>(smem + L::kRing);
  const int64_t B = op.batch, H = op.hidden, acc_ld = H + 1;
  T* acc_v = reinterpret_cast<T*>(smem + L::kStatic);  // SHARED_ACC: [64][H + 1]
  constexpr int kPer = outputs_per_thread<T>();
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBlockTile;
  const int cc = threadIdx.x / 4, t = threadIdx.x % 4;
  const int64_t j = c0 + cc;
  if (SHARED_ACC)
    for (int64_t h = t; h < H; h += 4) acc_v[cc * acc_ld + h] = T(0);
  for (int64_t r0 = 0; r0 < B; r0 += kBlockTile) {
    tile_weights<Act>(ring, p, op, g, lse, r0, c0, exclude_diag);
    over_slices(ring, op.u, op.v, op.w, op.ld, op.hidden_padded, r0, c0, [&](const Slice<T>& s, int64_t h0) {
      T dv[kPer], vj[kPer];
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        dv[q] = T(0);
        vj[q] = s.v[t + 4 * q][cc];
      }
      for (int ii = 0; ii < kBlockTile; ++ii) {
        const T pi = p[ii][cc];
#pragma unroll
        for (int q = 0; q < kPer; ++q) dv[q] += pi * Act::df(s.u[t + 4 * q][ii] + vj[q]);
      }
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int64_t h = h0 + t + 4 * q;
        if (h >= H) continue;
        if (SHARED_ACC)
          acc_v[cc * acc_ld + h] += dv[q];
        else if (j < B)
          gv[j * H + h] += dv[q];
      }
    });
  }
  if (SHARED_ACC && j < B)
    for (int64_t h = t; h < H; h += 4) gv[j * H + h] = acc_v[cc * acc_ld + h];
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
MineOperands<T> operands(const MineArgs& a) {
  MineOperands<T> op;
  op.a = static_cast<const T*>(a.a);
  op.b = static_cast<const T*>(a.b);
  op.w = static_cast<const T*>(a.w);
  op.u = static_cast<const T*>(a.u);
  op.v = static_cast<const T*>(a.v);
  op.colsum = static_cast<const T*>(a.colsum);
  op.batch = a.batch;
  op.hidden = a.hidden;
  op.hidden_padded = a.hidden_padded;
  op.ld = a.ld;
  return op;
}

template <typename T>
cudaError_t forward_typed(const MineArgs& a, cudaStream_t stream) {
  const int64_t splits = lse_splits(a.batch);
  const dim3 grid(static_cast<unsigned>((a.batch + kBlockTile - 1) / kBlockTile), static_cast<unsigned>(splits));
  T* part = static_cast<T*>(a.workspace);
  const MineOperands<T> op = operands<T>(a);
  return with_activation<T>(a.activation, [&](auto act) {
    using Act = decltype(act);
    MIGA_FAST_LAUNCH(grid, dim3(kBlockedThreads), 0, stream, lse_kernel<Act, T>)(op, static_cast<T*>(a.out), part,
                                                                                 a.exclude_diag);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || splits == 1) return err;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((a.batch + kBlockedThreads - 1) / kBlockedThreads, 1024));
    MIGA_FAST_LAUNCH(dim3(blocks), dim3(kBlockedThreads), 0, stream, lse_merge_kernel<T>)(
        part, static_cast<T*>(a.out), a.batch, static_cast<int>(splits));
    return cudaGetLastError();
  });
}

// Launches kernel<SHARED_ACC = true> when its accumulators fit in shared memory beside the
// ring and p (`base` bytes), else kernel<false> (outputs added in global memory per tile).
template <typename KTrue, typename KFalse, typename... Args>
cudaError_t launch_accumulating(KTrue* shared_acc, KFalse* global_acc, size_t base, size_t accumulators, unsigned grid,
                                cudaStream_t stream, Args... args) {
  if (base + accumulators <= shared_optin_limit()) {
    const cudaError_t err = allow_shared(shared_acc, base + accumulators);
    if (err == cudaSuccess) {
      MIGA_FAST_LAUNCH(dim3(grid), dim3(kBlockedThreads), base + accumulators, stream, shared_acc)(args...);
      return cudaGetLastError();
    }
    (void)cudaGetLastError();  // the opt-in was refused: take the global path
  }
  const cudaError_t err = allow_shared(global_acc, base);
  if (err != cudaSuccess) return err;
  MIGA_FAST_LAUNCH(dim3(grid), dim3(kBlockedThreads), base, stream, global_acc)(args...);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const MineArgs& a, cudaStream_t stream) {
  using L = BackwardLayout<T>;
  const unsigned grid = static_cast<unsigned>((a.batch + kBlockTile - 1) / kBlockTile);
  const MineOperands<T> op = operands<T>(a);
  return with_activation<T>(a.activation, [&](auto act) {
    using Act = decltype(act);
    const T *g = static_cast<const T*>(a.grad), *lse = static_cast<const T*>(a.lse);
    cudaError_t err = launch_accumulating(&grad_rows_kernel<Act, T, true>, &grad_rows_kernel<Act, T, false>, L::kStatic,
                                          L::accumulators(a.hidden, 2), grid, stream, op, g, lse, static_cast<T*>(a.gu),
                                          static_cast<T*>(a.gw_rows), a.exclude_diag);
    if (err != cudaSuccess) return err;
    return launch_accumulating(&grad_cols_kernel<Act, T, true>, &grad_cols_kernel<Act, T, false>, L::kStatic,
                               L::accumulators(a.hidden, 1), grid, stream, op, g, lse, static_cast<T*>(a.gv),
                               a.exclude_diag);
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
