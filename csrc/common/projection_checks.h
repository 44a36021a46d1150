// Argument checks and preparation of the projection family, shared by the CPU and CUDA glue.
//
// The Python layer checks first and names the argument the user passed; these checks
// guard C++ callers (and torch.ops.* called directly) against memory errors.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

namespace miga_fast {

inline void check_same_layout(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "miga_fast: `", name, "` has shape ", t.sizes(), ", expected ", ref.sizes(),
              " (the shape of `delta`)");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "miga_fast: `", name, "` has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type(), " (the dtype of `delta`)");
  TORCH_CHECK(t.device() == ref.device(), "miga_fast: `", name, "` is on ", t.device(), ", expected ", ref.device(),
              " (the device of `delta`)");
}

// The dtype kernels compute in: float32 for float32/float16/bfloat16, float64 for float64.
inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A per-sample parameter: a 1-D tensor of 1 or B values on delta's device.
// Returns it contiguous in the compute dtype.
inline at::Tensor per_sample_param(const at::Tensor& p, const at::Tensor& delta, const char* name) {
  TORCH_CHECK(p.dim() == 1 && (p.numel() == 1 || p.numel() == delta.size(0)), "miga_fast: `", name,
              "` must be a 1-D tensor of 1 or ", delta.size(0), " values, got shape ", p.sizes());
  TORCH_CHECK(p.device() == delta.device(), "miga_fast: `", name, "` is on ", p.device(), ", expected ",
              delta.device());
  return p.to(compute_dtype(delta.scalar_type())).contiguous();
}

inline void check_delta(const at::Tensor& delta) {
  TORCH_CHECK(delta.dim() >= 1 && delta.size(0) > 0,
              "miga_fast: `delta` must have a non-empty batch dimension, got shape ", delta.sizes());
  TORCH_CHECK(at::isFloatingType(delta.scalar_type()), "miga_fast: `delta` must be a floating tensor, got ",
              delta.scalar_type());
}

inline at::Tensor contiguous_or_self(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// The checked, contiguous tensors of one projection call. `grad`, `momentum` and `alpha`
// are optional (undefined when absent); `alpha` defaults to `eps` (never read then).
struct ProjectionCall {
  at::Tensor delta, momentum, grad, x, eps, alpha;
  int64_t batch = 0;
  int64_t n = 0;  // elements per sample

  ProjectionCall(const at::Tensor& delta_in, const at::Tensor* momentum_in, const at::Tensor* grad_in,
                 const at::Tensor& x_in, const at::Tensor& eps_in, const at::Tensor* alpha_in) {
    check_delta(delta_in);
    check_same_layout(delta_in, x_in, "x");
    if (grad_in != nullptr) check_same_layout(delta_in, *grad_in, "grad");
    if (momentum_in != nullptr) check_same_layout(delta_in, *momentum_in, "momentum");
    eps = per_sample_param(eps_in, delta_in, "eps");
    alpha = alpha_in != nullptr ? per_sample_param(*alpha_in, delta_in, "alpha") : eps;
    delta = contiguous_or_self(delta_in);
    x = contiguous_or_self(x_in);
    if (grad_in != nullptr) grad = contiguous_or_self(*grad_in);
    if (momentum_in != nullptr) momentum = contiguous_or_self(*momentum_in);
    batch = delta.size(0);
    n = delta.numel() / batch;
  }

  int64_t eps_stride() const { return eps.numel() == 1 ? 0 : 1; }
  int64_t alpha_stride() const { return alpha.numel() == 1 ? 0 : 1; }

  // Copies the results into strided outputs (a no-op for contiguous ones).
  void write_back(at::Tensor& delta_out, at::Tensor* momentum_out) const {
    if (!delta.is_same(delta_out)) delta_out.copy_(delta);
    if (momentum_out != nullptr && !momentum.is_same(*momentum_out)) momentum_out->copy_(momentum);
  }
};

// kLinfImage: the l-inf step on the adversarial image (`delta` holds adv = x + delta).
enum class ProjectionKind { kLinf, kL2, kMomentum, kLinfImage };

// A backend's driver: (kind, delta, momentum?, grad?, x, eps, alpha?, mu, direction).
using ProjectionRunner = void (*)(ProjectionKind, at::Tensor&, at::Tensor*, const at::Tensor*, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor*, double, double);

// The six ops of the family as thin adapters over one backend driver, and their
// registration: `ProjectionOps<run>::register_all(m)` in a TORCH_LIBRARY_IMPL block.
template <ProjectionRunner Run>
struct ProjectionOps {
  static void pgd_step_linf(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                            const at::Tensor& alpha, double direction) {
    Run(ProjectionKind::kLinf, delta, nullptr, &grad, x, eps, &alpha, 0.0, direction);
  }
  static void pgd_step_linf_image(at::Tensor& adv, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                                  const at::Tensor& alpha, double direction) {
    Run(ProjectionKind::kLinfImage, adv, nullptr, &grad, x, eps, &alpha, 0.0, direction);
  }
  static void pgd_step_l2(at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                          const at::Tensor& alpha, double direction) {
    Run(ProjectionKind::kL2, delta, nullptr, &grad, x, eps, &alpha, 0.0, direction);
  }
  static void mi_fgsm_step(at::Tensor& delta, at::Tensor& momentum, const at::Tensor& grad, const at::Tensor& x,
                           const at::Tensor& eps, const at::Tensor& alpha, double mu, double direction) {
    Run(ProjectionKind::kMomentum, delta, &momentum, &grad, x, eps, &alpha, mu, direction);
  }
  static void project_linf(at::Tensor& delta, const at::Tensor& x, const at::Tensor& eps) {
    Run(ProjectionKind::kLinf, delta, nullptr, nullptr, x, eps, nullptr, 0.0, 1.0);
  }
  static void project_l2(at::Tensor& delta, const at::Tensor& x, const at::Tensor& eps) {
    Run(ProjectionKind::kL2, delta, nullptr, nullptr, x, eps, nullptr, 0.0, 1.0);
  }
  static void register_all(torch::Library& m) {
    m.impl("pgd_step_linf_", &pgd_step_linf);
    m.impl("pgd_step_linf_image_", &pgd_step_linf_image);
    m.impl("pgd_step_l2_", &pgd_step_l2);
    m.impl("mi_fgsm_step_", &mi_fgsm_step);
    m.impl("project_linf_", &project_linf);
    m.impl("project_l2_", &project_l2);
  }
};

}  // namespace miga_fast
