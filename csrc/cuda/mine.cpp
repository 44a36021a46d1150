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

cuda::MineArgs make_args(const at::Tensor& u, const at::Tensor& v, const at::Tensor& w, int64_t activation,
                         bool exclude_diag) {
  cuda::MineArgs a;
  a.u = u.data_ptr();
  a.v = v.data_ptr();
  a.w = w.data_ptr();
  a.batch = u.size(0);
  a.hidden = u.size(1);
  a.activation = static_cast<int>(activation);
  a.exclude_diag = exclude_diag;
  a.is_double = u.scalar_type() == at::kDouble;
  return a;
}

at::Tensor mine_row_lse_cuda(const at::Tensor& u_in, const at::Tensor& v_in, const at::Tensor& w_in,
                             int64_t activation, bool exclude_diag) {
  check_mine_inputs("miga_fast.mine_row_lse", u_in, v_in, w_in, activation, glue::kDevice);
  const glue::DeviceGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous(), v = v_in.contiguous(), w = w_in.contiguous();
  at::Tensor lse = at::empty({u.size(0)}, u.options());
  if (std::getenv("MIGA_FAST_POISON") != nullptr) lse.fill_(std::numeric_limits<double>::quiet_NaN());
  cuda::MineArgs a = make_args(u, v, w, activation, exclude_diag);
  a.out = lse.data_ptr();
  const cudaError_t err = cuda::launch_mine_row_lse(a, glue::current_stream());
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA mine_row_lse kernel failed: ", cudaGetErrorString(err));
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_row_lse_backward_cuda(const at::Tensor& grad_in,
                                                                        const at::Tensor& u_in,
                                                                        const at::Tensor& v_in,
                                                                        const at::Tensor& w_in,
                                                                        const at::Tensor& lse_in,
                                                                        int64_t activation, bool exclude_diag) {
  check_mine_inputs("miga_fast.mine_row_lse_backward", u_in, v_in, w_in, activation, glue::kDevice);
  check_mine_backward("miga_fast.mine_row_lse_backward", u_in, grad_in, lse_in);
  const glue::DeviceGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous(), v = v_in.contiguous(), w = w_in.contiguous();
  const at::Tensor g = grad_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor gu = at::zeros_like(u), gv = at::zeros_like(v), gw_rows = at::zeros_like(u);
  cuda::MineArgs a = make_args(u, v, w, activation, exclude_diag);
  a.grad = g.data_ptr();
  a.lse = lse.data_ptr();
  a.gu = gu.data_ptr();
  a.gv = gv.data_ptr();
  a.gw_rows = gw_rows.data_ptr();
  const cudaError_t err = cuda::launch_mine_row_lse_backward(a, glue::current_stream());
  TORCH_CHECK(err == cudaSuccess, "miga_fast: CUDA mine_row_lse_backward kernel failed: ", cudaGetErrorString(err));
  return {gu.mul_(w), gv.mul_(w), gw_rows.sum(0)};
}

}  // namespace

MIGA_FAST_CUDA_IMPL(m) {
  m.impl("mine_row_lse", &mine_row_lse_cuda);
  m.impl("mine_row_lse_backward", &mine_row_lse_backward_cuda);
}

}  // namespace miga_fast
