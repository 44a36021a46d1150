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

}  // namespace miga_fast
