// The ctests' shared case: torch.ops.<ns>.pgd_step_linf_ called through the dispatcher
// against the same step in plain ATen (torchattacks' order: step, ball, box).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string>

namespace miga_fast_tests {

using LinfStep = void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);

inline c10::TypedOperatorHandle<LinfStep> linf_step(const std::string& ns) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((ns + "::pgd_step_linf_").c_str(), "").typed<LinfStep>();
}

// Whether the op's result equals plain ATen's, bit for bit (prints the gap when not).
inline bool linf_step_is_exact(const c10::TypedOperatorHandle<LinfStep>& op) {
  at::manual_seed(0);
  const at::Tensor x = at::rand({4, 3, 9, 7});
  at::Tensor delta = (at::rand({4, 3, 9, 7}) - 0.5) * 0.2;
  const at::Tensor grad = at::randn({4, 3, 9, 7});
  const at::Tensor eps = at::tensor({0.03f, 0.05f, 0.0f, 0.1f});
  const at::Tensor alpha = at::tensor({0.01f});
  const at::Tensor e = eps.view({4, 1, 1, 1});
  at::Tensor expected = at::clamp(delta + 0.01f * at::sign(grad), -e, e);
  expected = at::clamp(x + expected, 0, 1) - x;
  op.call(delta, grad, x, eps, alpha, 1.0);
  if (at::equal(delta, expected)) return true;
  std::printf("max |diff| = %g\n", (delta - expected).abs().max().item<double>());
  return false;
}

}  // namespace miga_fast_tests
