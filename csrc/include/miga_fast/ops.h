// miga_fast's ops for C++ consumers (find_package(miga_fast); docs/integrations.md): typed
// calls through the PyTorch dispatcher, so each call runs the kernel registered for its
// tensors' device (the CPU kernels, or the CUDA ones in a CUDA build), with the same
// checks and errors (c10::Error) as from Python. The schemas are csrc/schemas.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <tuple>

namespace miga_fast {
namespace detail {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace detail

// ---- projection family: in place on delta; eps, alpha: 1-D tensors of 1 or B values.

// One l-inf PGD step: delta <- clamp(x + clamp(delta + alpha * direction * sign(grad), -eps, eps), 0, 1) - x.
inline void pgd_step_linf_(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                           const at::Tensor& alpha, double direction = 1.0) {
  using F = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
  static const auto op = detail::find<F>("miga_fast::pgd_step_linf_");
  op.call(delta, grad, x, eps, alpha, direction);
}

// The same step on the adversarial image adv = x + delta, in torchattacks' arithmetic:
// adv <- clamp(x + clamp(adv + alpha * direction * sign(grad) - x, -eps, eps), 0, 1).
inline void pgd_step_linf_image_(at::Tensor& adv, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                                 const at::Tensor& alpha, double direction = 1.0) {
  using F = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
  static const auto op = detail::find<F>("miga_fast::pgd_step_linf_image_");
  op.call(adv, grad, x, eps, alpha, direction);
}

// One l2 PGD step along grad / |grad|_2, then the l2 ball and the box.
inline void pgd_step_l2_(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                         const at::Tensor& alpha, double direction = 1.0) {
  using F = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
  static const auto op = detail::find<F>("miga_fast::pgd_step_l2_");
  op.call(delta, grad, x, eps, alpha, direction);
}

// MI-FGSM: momentum <- mu * momentum + grad / |grad|_1, then the l-inf step along it.
inline void mi_fgsm_step_(at::Tensor& delta, at::Tensor& momentum, const at::Tensor& grad, const at::Tensor& x,
                          const at::Tensor& eps, const at::Tensor& alpha, double mu = 1.0, double direction = 1.0) {
  using F = void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 double, double);
  static const auto op = detail::find<F>("miga_fast::mi_fgsm_step_");
  op.call(delta, momentum, grad, x, eps, alpha, mu, direction);
}

// ---- SSIM family

// The normalised 1-D Gaussian window (pytorch-msssim's, built in float32) in `dtype`.
inline at::Tensor gaussian_window(int64_t size, double sigma, at::ScalarType dtype = at::kFloat) {
  at::Tensor c = at::arange(size, at::kFloat) - static_cast<float>(size / 2);
  at::Tensor g = at::exp(-(c * c) / static_cast<float>(2 * sigma * sigma));
  return (g / g.sum()).to(dtype);
}

// Per-sample SSIM [B] of x, y [B, C, H, W] ("valid" blur, or zero "same" padding);
// cs_only: the contrast-structure term alone. `window`: x's dtype and device.
inline at::Tensor ssim(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window, double data_range = 1.0,
                       double k1 = 0.01, double k2 = 0.03, bool same_padding = false, bool cs_only = false) {
  using F = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double, bool, bool);
  static const auto op = detail::find<F>("miga_fast::ssim");
  return op.call(x, y, window, data_range, k1, k2, same_padding, cs_only);
}

// The SSIM value [B] with its gradients d value_b / d x and d value_b / d y.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> ssim_value_and_grad(const at::Tensor& x, const at::Tensor& y,
                                                                          const at::Tensor& window,
                                                                          double data_range = 1.0, double k1 = 0.01,
                                                                          double k2 = 0.03, bool same_padding = false,
                                                                          bool cs_only = false) {
  using F = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           double, double, double, bool, bool);
  static const auto op = detail::find<F>("miga_fast::ssim_value_and_grad");
  return op.call(x, y, window, data_range, k1, k2, same_padding, cs_only);
}

}  // namespace miga_fast
