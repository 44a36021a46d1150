// Torch glue of the CUDA MINE kernels (mine_kernels.cu): checks, the operands in the
// kernels' padded transposed layout, the current stream, zeroed accumulators, the final
// scaling by w2 and the sum over rows of d/dw.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <tuple>
#include <vector>

#include "../common/mine_checks.h"
#include "mine.h"
#include "glue.h"

namespace miga_fast {
namespace {

// The kernels' operands (mine.h): transposed, zero-padded copies of u and v (for ReLU
// scaled by |w2| and -|w2|, the unscaled ones too when `backward`), the weights and, for
// ReLU, colsum = v @ w2. `keep` holds the tensors the pointers point into.
cuda::MineArgs make_args(const MineCall& c, int64_t activation, bool exclude_diag, bool backward,
                         std::vector<at::Tensor>& keep) {
  const int64_t B = c.batch, H = c.hidden;
  const int64_t ld = (B + cuda::kMineTile - 1) / cuda::kMineTile * cuda::kMineTile;
  const int64_t Hp = (H + cuda::kMineSliceUnits - 1) / cuda::kMineSliceUnits * cuda::kMineSliceUnits;
  const bool relu = activation == static_cast<int64_t>(MineActivation::kRelu);
  const int64_t n = relu && backward ? 4 : 2;
  at::Tensor mats = at::zeros({n, Hp, ld}, c.u.options());
  at::Tensor w = at::zeros({Hp}, c.u.options());
  const auto fill = [&](int64_t k, const at::Tensor& x) { mats[k].narrow(0, 0, H).narrow(1, 0, B).copy_(x.t()); };
  cuda::MineArgs a;
  if (relu) {
    const at::Tensor aw = c.w.abs();
    fill(0, c.u * aw);
    fill(1, (c.v * aw).neg_());
    if (backward) {
      fill(2, c.u);
      fill(3, c.v);
    }
    w.narrow(0, 0, H).copy_(c.w.sign());
    const at::Tensor colsum = at::mv(c.v, c.w).contiguous();
    a.colsum = colsum.data_ptr();
    keep.push_back(colsum);
  } else {
    fill(0, c.u);
    fill(1, c.v);
    w.narrow(0, 0, H).copy_(c.w);
  }
  keep.push_back(mats);
  keep.push_back(w);
  a.a = mats[0].data_ptr();
  a.b = mats[1].data_ptr();
  a.u = mats[n == 4 ? 2 : 0].data_ptr();
  a.v = mats[n == 4 ? 3 : 1].data_ptr();
  a.w = w.data_ptr();
  a.batch = B;
  a.hidden = H;
  a.hidden_padded = Hp;
  a.ld = ld;
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
  std::vector<at::Tensor> keep;
  cuda::MineArgs a = make_args(c, activation, exclude_diag, /*backward=*/false, keep);
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
  std::vector<at::Tensor> keep;
  cuda::MineArgs a = make_args(c, activation, exclude_diag, /*backward=*/true, keep);
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
