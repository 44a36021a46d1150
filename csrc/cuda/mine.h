// Launchers of the CUDA MINE kernels (mine_kernels.cu). Raw pointers and CUDA types only;
// the torch glue is mine.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace miga_fast {
namespace cuda {

struct MineArgs {
  const void* u = nullptr;       // [B, H]: U + b1
  const void* v = nullptr;       // [B, H]
  const void* w = nullptr;       // [H]: w2
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
  int activation = 0;  // 0 relu, 1 elu, 2 softplus
  bool exclude_diag = false;
  bool is_double = false;
};

// The forward's workspace: the (max, sum) pairs of its column splits (0 bytes for one).
size_t mine_row_lse_workspace_bytes(int64_t batch, bool is_double);
cudaError_t launch_mine_row_lse(const MineArgs& args, cudaStream_t stream);
cudaError_t launch_mine_row_lse_backward(const MineArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
