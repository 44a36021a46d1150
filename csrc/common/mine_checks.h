// Argument checks shared by the CPU and CUDA kernels of the MINE family (the Python layer,
// miga_fast/ops/mine.py, has already given users a clear error; these guard direct calls).
#pragma once

#include <ATen/ATen.h>

namespace miga_fast {

// Activation codes of the mine_* ops (miga_fast/ops/mine.py: ACTIVATIONS).
enum class MineActivation : int64_t { kRelu = 0, kElu = 1, kSoftplus = 2 };

inline void check_mine_inputs(const char* op, const at::Tensor& u, const at::Tensor& v, const at::Tensor& w,
                              int64_t activation, c10::DeviceType device) {
  TORCH_CHECK(u.dim() == 2 && u.size(0) >= 2, op, ": `u` must be [B, H] with B >= 2, got ", u.sizes());
  TORCH_CHECK(v.sizes() == u.sizes(), op, ": `v` must have u's shape ", u.sizes(), ", got ", v.sizes());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == u.size(1), op, ": `w2` must be [H] = [", u.size(1), "], got ", w.sizes());
  TORCH_CHECK(v.scalar_type() == u.scalar_type() && w.scalar_type() == u.scalar_type(), op,
              ": u, v and w2 must share a dtype");
  TORCH_CHECK(u.device().type() == device && v.device() == u.device() && w.device() == u.device(), op,
              ": u, v and w2 must be on the kernel's device, got ", u.device());
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, op,
              ": the kernel takes float32 or float64, got ", u.scalar_type());
  TORCH_CHECK(activation >= 0 && activation <= 2, op, ": unknown activation code ", activation);
}

inline void check_mine_backward(const char* op, const at::Tensor& u, const at::Tensor& grad, const at::Tensor& lse) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == u.size(0) && grad.scalar_type() == u.scalar_type() &&
                  grad.device() == u.device(),
              op, ": `grad` must be [B] in u's dtype and device");
  TORCH_CHECK(
      lse.dim() == 1 && lse.size(0) == u.size(0) && lse.scalar_type() == u.scalar_type() && lse.device() == u.device(),
      op, ": `lse` must be [B] in u's dtype and device");
}

// The prologue every backend's glue shares: the checks, then u, v, w2 (and, for the
// backward, the upstream gradient and the saved lse) contiguous, with B and H.
struct MineCall {
  at::Tensor u, v, w, grad, lse;
  int64_t batch = 0, hidden = 0;

  MineCall(const char* op, const at::Tensor& u_in, const at::Tensor& v_in, const at::Tensor& w_in, int64_t activation,
           c10::DeviceType device, const at::Tensor* grad_in = nullptr, const at::Tensor* lse_in = nullptr) {
    check_mine_inputs(op, u_in, v_in, w_in, activation, device);
    if (grad_in != nullptr) {
      check_mine_backward(op, u_in, *grad_in, *lse_in);
      grad = grad_in->contiguous();
      lse = lse_in->contiguous();
    }
    u = u_in.contiguous();
    v = v_in.contiguous();
    w = w_in.contiguous();
    batch = u.size(0);
    hidden = u.size(1);
  }
};

}  // namespace miga_fast
