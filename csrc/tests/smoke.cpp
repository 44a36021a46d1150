// ctest smoke test: the ops are registered when the library is linked, and one call
// through the dispatcher gives the l-inf projection's exact result.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("miga_fast::pgd_step_linf_", "")
                      .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, double)>();
  at::manual_seed(0);
  const at::Tensor x = at::rand({4, 3, 9, 7});
  at::Tensor delta = (at::rand({4, 3, 9, 7}) - 0.5) * 0.2;
  const at::Tensor grad = at::randn({4, 3, 9, 7});
  const at::Tensor eps = at::tensor({0.03f, 0.05f, 0.0f, 0.1f});
  const at::Tensor alpha = at::tensor({0.01f});

  // The same step in plain ATen, torchattacks' order.
  const at::Tensor e = eps.view({4, 1, 1, 1});
  at::Tensor expected = at::clamp(delta + 0.01f * at::sign(grad), -e, e);
  expected = at::clamp(x + expected, 0, 1) - x;

  op.call(delta, grad, x, eps, alpha, 1.0);
  if (!at::equal(delta, expected)) {
    std::printf("FAIL: max |diff| = %g\n", (delta - expected).abs().max().item<double>());
    return 1;
  }
  bool rejected = false;
  try {
    op.call(delta, grad.slice(0, 0, 2), x, eps, alpha, 1.0);
  } catch (const c10::Error&) {
    rejected = true;
  }
  if (!rejected) {
    std::printf("FAIL: a mismatched grad shape was not rejected\n");
    return 1;
  }
  std::printf("miga_fast smoke test passed\n");
  return 0;
}
