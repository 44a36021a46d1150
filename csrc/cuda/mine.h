// Launchers of the CUDA MINE kernels (mine_kernels.cu). Raw pointers and CUDA types only;
// the torch glue is mine.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace miga_fast {
namespace cuda {

// The kernels' tiles: the glue pads the batch to a multiple of kMineTile and the hidden
// units to a multiple of kMineSliceUnits.
constexpr int kMineTile = 64, kMineSliceUnits = 16;

// What the glue hands the kernels. The [Hp][ld] operands are transposed (hidden unit
// major) and zero-padded: Hp = hidden rounded up to kMineSliceUnits, ld = batch rounded up
// to kMineTile; zero weights make the padded hidden units contribute nothing, and padded
// rows and columns are masked.
struct MineArgs {
  const void* a = nullptr;       // [Hp][ld]: the pair scores' row operand: u (ReLU: |w2| u)
  const void* b = nullptr;       // [Hp][ld]: their column operand: v (ReLU: -|w2| v)
  const void* w = nullptr;       // [Hp]: w2 (ReLU: sign w2)
  const void* u = nullptr;       // [Hp][ld]: u = U + b1 itself (backward; = a unless ReLU)
  const void* v = nullptr;       // [Hp][ld]: v itself (backward; = b unless ReLU)
  const void* colsum = nullptr;  // ReLU: [B] = v @ w2 (the kernels' 2-instruction form needs it)
  const void* grad = nullptr;    // [B]: upstream gradient of lse (backward)
  const void* lse = nullptr;     // [B] (backward)
  void* out = nullptr;           // forward: lse [B]
  void* workspace = nullptr;     // forward: mine_row_lse_workspace_bytes() (none for one split)
  void* gu = nullptr;            // backward, zero-initialised [B, H]: sum_j p_ij act'(z_ijh)
  void* gw_rows = nullptr;       // backward, zero-initialised [B, H]: sum_j p_ij act(z_ijh)
  void* gv = nullptr;            // backward, zero-initialised [B, H]: sum_i p_ij act'(z_ijh)
  int64_t batch = 0;
  int64_t hidden = 0;
  int64_t hidden_padded = 0;  // Hp
  int64_t ld = 0;             // the operands' row stride
  int activation = 0;         // 0 relu, 1 elu, 2 softplus
  bool exclude_diag = false;
  bool is_double = false;
};

// The same, typed, as the kernels take it.
template <typename T>
struct MineOperands {
  const T* a;
  const T* b;
  const T* w;
  const T* u;
  const T* v;
  const T* colsum;
  int64_t batch, hidden, hidden_padded, ld;
};

// The forward's workspace: the (max, sum) pairs of its column splits (0 bytes for one).
size_t mine_row_lse_workspace_bytes(int64_t batch, bool is_double);
cudaError_t launch_mine_row_lse(const MineArgs& args, cudaStream_t stream);
cudaError_t launch_mine_row_lse_backward(const MineArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
