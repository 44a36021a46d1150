// CPU kernels of the MINE family (docs/algorithms.md §3): for the critic scores
// T_ij = sum_h w_h act(u_ih + v_jh), the row-wise log-sum-exp over j (all j, or j != i),
// and its backward, which recomputes each row (for d/du, d/dw) and each column (for d/dv)
// instead of storing anything B x B. Memory: O(B * H) plus one B-vector per thread.
// Rows run in parallel; results do not depend on the thread count (d/dw is summed from
// per-row partials in a fixed order). The ReLU forward runs in two instructions per pair
// and hidden unit on operands the glue prepares (relu_operands; mine_loops.h,
// row_lse_relu). The loops (mine_loops.h) are built for plain x86-64 and for AVX2 and
// chosen at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/mine_checks.h"
#include "../common/mine_math.h"
#include "dispatch.h"

namespace miga_fast {
namespace {

#define MIGA_FAST_LOOPS "mine_loops.h"
#define MIGA_FAST_AVX2_TARGET "avx2,fma"
#include "instantiate_loops.h"

// fn(Act<T>{}) for the activation code.
template <typename T, typename F>
void with_activation(int64_t code, F&& fn) {
  switch (static_cast<MineActivation>(code)) {
    case MineActivation::kRelu:
      fn(Relu<T>{});
      break;
    case MineActivation::kElu:
      fn(Elu<T>{});
      break;
    default:
      fn(Softplus<T>{});
  }
}

// Rows per parallel task: enough work (rows x B x H) to amortise the scheduling.
int64_t grain(int64_t B, int64_t H) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, B * H)); }

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// the block shape, the same in both builds of the loops
constexpr int64_t kReluRows = generic::kReluRows, kReluCols = generic::kReluCols, kReluLanes = generic::kReluLanes;

// The ReLU forward's operands (mine_loops.h, row_lse_relu): a = |w| u and c = -|w| v with
// the units of w > 0 first, then w < 0, each group padded to whole lanes; a to whole row
// blocks, c to whole column blocks; k = v w (in float64, rounded once).
struct ReluOperands {
  at::Tensor a, c, k;
  int64_t hp = 0, np = 0;
};

ReluOperands relu_operands(const at::Tensor& u, const at::Tensor& v, const at::Tensor& w) {
  const int64_t B = u.size(0);
  const at::Tensor pos = (w > 0).nonzero().squeeze(1), neg = (w < 0).nonzero().squeeze(1);
  ReluOperands r;
  r.np = round_up(pos.numel(), kReluLanes);
  r.hp = r.np + round_up(neg.numel(), kReluLanes);
  const at::Tensor absw = w.abs();
  r.a = at::zeros({round_up(B, kReluRows), r.hp}, u.options());
  r.c = at::zeros({round_up(B, kReluCols), r.hp}, u.options());
  const int64_t starts[2] = {0, r.np};
  const at::Tensor* groups[2] = {&pos, &neg};
  for (int g = 0; g < 2; ++g) {
    const at::Tensor& idx = *groups[g];
    if (idx.numel() == 0) continue;
    const at::Tensor s = absw.index_select(0, idx);
    r.a.narrow(0, 0, B).narrow(1, starts[g], idx.numel()).copy_(u.index_select(1, idx) * s);
    r.c.narrow(0, 0, B).narrow(1, starts[g], idx.numel()).copy_(v.index_select(1, idx) * s.neg());
  }
  r.k = at::zeros({r.c.size(0)}, u.options());
  r.k.narrow(0, 0, B).copy_(at::mv(v.to(at::kDouble), w.to(at::kDouble)));
  return r;
}

at::Tensor mine_row_lse_cpu(const at::Tensor& u_in, const at::Tensor& v_in, const at::Tensor& w_in, int64_t activation,
                            bool exclude_diag) {
  const MineCall c("miga_fast.mine_row_lse", u_in, v_in, w_in, activation, c10::DeviceType::CPU);
  const at::Tensor &u = c.u, &v = c.v, &w = c.w;
  const int64_t B = c.batch, H = c.hidden;
  at::Tensor lse = at::empty({B}, u.options());
  if (static_cast<MineActivation>(activation) == MineActivation::kRelu) {
    const ReluOperands r = relu_operands(u, v, w);
    const int64_t blocks = r.a.size(0) / kReluRows, Bc = r.c.size(0);
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "miga_fast_mine_row_lse_relu_cpu", [&] {
      using T = scalar_t;
      const T *ap = r.a.data_ptr<T>(), *cp = r.c.data_ptr<T>(), *kp = r.k.data_ptr<T>();
      T* lp = lse.data_ptr<T>();
      at::parallel_for(0, blocks, std::max<int64_t>(1, grain(B, H) / kReluRows), [&](int64_t b0, int64_t b1) {
        std::vector<T> row;
        MIGA_FAST_CPU_CALL(row_lse_relu<T>, ap, cp, kp, B, Bc, r.hp, r.np, exclude_diag, b0, b1, lp, row);
      });
    });
    return lse;
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "miga_fast_mine_row_lse_cpu", [&] {
    using T = scalar_t;
    const T *up = u.data_ptr<T>(), *vp = v.data_ptr<T>(), *wp = w.data_ptr<T>();
    T* lp = lse.data_ptr<T>();
    at::parallel_for(0, B, grain(B, H), [&](int64_t i0, int64_t i1) {
      std::vector<T> row;
      with_activation<T>(activation, [&](auto act) {
        MIGA_FAST_CPU_CALL(row_lse<decltype(act)>, up, vp, wp, B, H, exclude_diag, i0, i1, lp, row);
      });
    });
  });
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_row_lse_backward_cpu(const at::Tensor& grad_in,
                                                                         const at::Tensor& u_in, const at::Tensor& v_in,
                                                                         const at::Tensor& w_in,
                                                                         const at::Tensor& lse_in, int64_t activation,
                                                                         bool exclude_diag) {
  const MineCall c("miga_fast.mine_row_lse_backward", u_in, v_in, w_in, activation, c10::DeviceType::CPU, &grad_in,
                   &lse_in);
  const at::Tensor &u = c.u, &v = c.v, &w = c.w, &g = c.grad, &lse = c.lse;
  const int64_t B = c.batch, H = c.hidden;
  at::Tensor gu = at::empty_like(u), gv = at::empty_like(v), gw_rows = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "miga_fast_mine_row_lse_backward_cpu", [&] {
    using T = scalar_t;
    const T *up = u.data_ptr<T>(), *vp = v.data_ptr<T>(), *wp = w.data_ptr<T>();
    const T *gp = g.data_ptr<T>(), *lp = lse.data_ptr<T>();
    T *gup = gu.data_ptr<T>(), *gvp = gv.data_ptr<T>(), *gwp = gw_rows.data_ptr<T>();
    at::parallel_for(0, B, grain(B, H), [&](int64_t i0, int64_t i1) {
      std::vector<T> row;
      with_activation<T>(activation, [&](auto act) {
        MIGA_FAST_CPU_CALL(row_grads<decltype(act)>, up, vp, wp, gp, lp, B, H, exclude_diag, i0, i1, gup, gwp, row);
      });
    });
    at::parallel_for(0, B, grain(B, H), [&](int64_t j0, int64_t j1) {
      std::vector<T> col;
      with_activation<T>(activation, [&](auto act) {
        MIGA_FAST_CPU_CALL(column_grads<decltype(act)>, up, vp, wp, gp, lp, B, H, exclude_diag, j0, j1, gvp, col);
      });
    });
  });
  return {gu, gv, gw_rows.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(miga_fast, CPU, m) {
  m.impl("mine_row_lse", &mine_row_lse_cpu);
  m.impl("mine_row_lse_backward", &mine_row_lse_backward_cpu);
}

}  // namespace miga_fast
