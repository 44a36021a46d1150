// Argument checks shared by the CPU and CUDA SSIM kernels (the Python layer,
// miga_fast/ops/ssim.py, has already given users a clear error; these guard direct calls).
#pragma once

#include <ATen/ATen.h>

namespace miga_fast {

inline void check_ssim_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window, bool same,
                              c10::DeviceType device) {
  TORCH_CHECK(x.dim() == 4, "miga_fast.ssim: `x` must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() && y.device() == x.device(),
              "miga_fast.ssim: `y` must match `x` in shape, dtype and device");
  TORCH_CHECK(x.device().type() == device, "miga_fast.ssim: ", c10::DeviceTypeName(device),
              " kernel called with tensors on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "miga_fast.ssim: the kernel takes float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) > 0, "miga_fast.ssim: empty batch");
  TORCH_CHECK(window.dim() == 1 && window.size(0) % 2 == 1 && window.scalar_type() == x.scalar_type() &&
                  window.device() == x.device(),
              "miga_fast.ssim: `window` must be a 1-D tensor of odd length in x's dtype and device");
  const int64_t k = window.size(0);
  TORCH_CHECK(same || (x.size(2) >= k && x.size(3) >= k),
              "miga_fast.ssim: images smaller than the window need padding='same'");
}

// ssim_ball_scale: delta and x [B, C, H, W] of one dtype and device, the float64 window,
// tau a float64 [B]; candidates >= 2 (at most max_candidates), rounds >= 1.
inline void check_ball_scale_inputs(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& window,
                                    const at::Tensor& tau, bool same, int64_t candidates, int64_t rounds,
                                    c10::DeviceType device, int64_t max_candidates) {
  const char* op = "miga_fast.ssim_ball_scale";
  TORCH_CHECK(x.dim() == 4 && delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(), op,
              ": `delta` and `x` must be [B, C, H, W] of one shape and dtype");
  TORCH_CHECK(x.device().type() == device && delta.device() == x.device() && window.device() == x.device() &&
                  tau.device() == x.device(),
              op, ": ", c10::DeviceTypeName(device), " kernel called with tensors on ", x.device(),
              " (all must be on one device)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the kernel takes float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(window.dim() == 1 && window.size(0) % 2 == 1 && window.scalar_type() == at::kDouble, op,
              ": `window` must be a 1-D float64 tensor of odd length");
  TORCH_CHECK(tau.dim() == 1 && tau.size(0) == x.size(0) && tau.scalar_type() == at::kDouble, op,
              ": `tau` must be a float64 [B] tensor");
  TORCH_CHECK(candidates >= 2 && candidates <= max_candidates && rounds >= 1, op,
              ": need 2 <= candidates <= ", max_candidates, " and rounds >= 1");
  const int64_t k = window.size(0);
  TORCH_CHECK(same || (x.size(2) >= k && x.size(3) >= k), op, ": images smaller than the window need padding='same'");
}

// ssim_window_ball_project_: delta and x [B, C, H, W] of one dtype and device, gamma [1]
// or [B] in x's dtype, window >= 1.
inline void check_window_ball_inputs(const at::Tensor& delta, const at::Tensor& x, const at::Tensor& gamma,
                                     int64_t window, c10::DeviceType device) {
  const char* op = "miga_fast.ssim_window_ball_project_";
  TORCH_CHECK(x.dim() == 4 && delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(), op,
              ": `delta` and `x` must be [B, C, H, W] of one shape and dtype");
  TORCH_CHECK(x.device().type() == device && delta.device() == x.device() && gamma.device() == x.device(), op, ": ",
              c10::DeviceTypeName(device), " kernel called with tensors on ", x.device(),
              " (all must be on one device)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(window >= 1, op, ": window must be >= 1");
  TORCH_CHECK(
      gamma.dim() == 1 && (gamma.size(0) == 1 || gamma.size(0) == x.size(0)) && gamma.scalar_type() == x.scalar_type(),
      op, ": `gamma` must be [1] or [B] in x's dtype");
}

}  // namespace miga_fast
