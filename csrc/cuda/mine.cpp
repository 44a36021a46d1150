// Torch glue of the CUDA MINE kernels (mine_kernels.cu): checks, contiguity, the current
// stream, zeroed accumulators, the final scaling by w2 and the sum over rows of d/dw.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <tuple>

#include "../common/mine_checks.h"
#include "mine.h"
#include "glue.h"

namespace miga_fast {
namespace {

// `colsum` keeps alive what a.colsum points to: for ReLU, v @ w2 (mine.h).
cuda::MineArgs make_args(const MineCall& c, int64_t activation, bool exclude_diag, at::Tensor& colsum) {
  cuda::MineArgs a;
  a.u = c.u.data_ptr();
  a.v = c.v.data_ptr();
  a.w = c.w.data_ptr();
  if (activation == static_cast<int64_t>(MineActivation::kRelu)) {
    colsum = at::mv(c.v, c.w).contiguous();
    a.colsum = colsum.data_ptr();
  }
  a.batch = c.batch;
  a.hidden = c.hidden;
  a.activation = static_cast<int>(activation);
  a.exclude_diag = exclude_diag;
  a.is_double = c.u.scalar_type() == at::kDouble;
  return a;
}

at::Tensor mine_row_lse_cuda(const at::Tensor& u_in, const at::Tensor& v_in, const at::Tensor& w_in, int64_t activation,
                             bool exclude_diag) {
  const MineCall c("miga_fast.mine_row_lse", u_in, v_in, w_in, activation, glue::kDevice);
  const glue::DeviceGuard guard(c.u.device());
  at::Tensor lse = at::empty({c.batch}, c.u.options());
  if (std::getenv("MIGA_FAST_POISON") != nullptr) lse.fill_(std::numeric_limits<double>::quiet_NaN());
  at::Tensor colsum;
  cuda::MineArgs a = make_args(c, activation, exclude_diag, colsum);
  a.out = lse.data_ptr();
  const size_t bytes = cuda::mine_row_lse_workspace_bytes(c.batch, a.is_double);
  at::Tensor workspace;
  if (bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)}, c.u.options().dtype(at::kByte));
    if (std::getenv("MIGA_FAST_POISON") != nullptr) workspace.fill_(0xFF);  // NaN in float and double
    a.workspace = workspace.data_ptr();
  }
  const cudaError_t err = cuda::launch_mine_row_lse(a, glue::current_stream());
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA mine_row_lse kernel failed: ", cudaGetErrorString(err));
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_row_lse_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& u_in, const at::Tensor& v_in, const at::Tensor& w_in,
    const at::Tensor& lse_in, int64_t activation, bool exclude_diag) {
  const MineCall c("miga_fast.mine_row_lse_backward", u_in, v_in, w_in, activation, glue::kDevice, &grad_in, &lse_in);
  const glue::DeviceGuard guard(c.u.device());
  at::Tensor gu = at::zeros_like(c.u), gv = at::zeros_like(c.v), gw_rows = at::zeros_like(c.u);
  at::Tensor colsum;
  cuda::MineArgs a = make_args(c, activation, exclude_diag, colsum);
  a.grad = c.grad.data_ptr();
  a.lse = c.lse.data_ptr();
  a.gu = gu.data_ptr();
  a.gv = gv.data_ptr();
  a.gw_rows = gw_rows.data_ptr();
  const cudaError_t err = cuda::launch_mine_row_lse_backward(a, glue::current_stream());
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA mine_row_lse_backward kernel failed: ", cudaGetErrorString(err));
  return {gu.mul_(c.w), gv.mul_(c.w), gw_rows.sum(0)};
}

}  // namespace

MIGA_FAST_CUDA_IMPL(m) {
  m.impl("mine_row_lse", &mine_row_lse_cuda);
  m.impl("mine_row_lse_backward", &mine_row_lse_backward_cuda);
}

}  // namespace miga_fast
