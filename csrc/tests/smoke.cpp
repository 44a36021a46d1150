// ctest smoke test: the ops are registered when the library is linked, and one call
// through the dispatcher gives the l-inf projection's exact result.
#include <ATen/ATen.h>

#include <cstdio>

#include "linf_case.h"

int main() {
  const auto op = miga_fast_tests::linf_step("miga_fast");
  if (!miga_fast_tests::linf_step_is_exact(op)) {
    std::printf("FAIL: the l-inf step differs from plain ATen\n");
    return 1;
  }
  const at::Tensor x = at::rand({4, 3, 9, 7});
  at::Tensor delta = at::zeros_like(x);
  bool rejected = false;
  try {
    op.call(delta, at::randn({2, 3, 9, 7}), x, at::tensor({0.03f}), at::tensor({0.01f}), 1.0);
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
