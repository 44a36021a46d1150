// ctest of the emulated CUDA build (csrc/emulation/): the emulator runs a correct kernel,
// exposes a missing barrier as NaN and reports a divergent barrier; and one CUDA kernel
// with its glue, called through the dispatcher as torch.ops.miga_fast_emu, gives the l-inf
// step's exact result on CPU tensors. The Python tests check every kernel in depth.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <string>

namespace {

at::Tensor selftest(int64_t kind) {
  const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("miga_fast_emu_selftest::run", "").typed<at::Tensor(int64_t)>();
  return op.call(kind);
}

int fail(const char* what) {
  std::printf("FAIL: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  const at::Tensor ok = selftest(0);
  if (!at::equal(ok, at::remainder(at::arange(64) + 1, 64).to(at::kFloat))) return fail("a correct kernel");
  const at::Tensor racy = selftest(1);
  if (!at::isnan(racy.slice(0, 0, 63)).all().item<bool>()) return fail("a missing barrier shows as NaN");
  bool reported = false;
  try {
    selftest(2);
  } catch (const c10::Error& e) {
    reported = std::string(e.what()).find("__syncthreads") != std::string::npos;
  }
  if (!reported) return fail("a barrier half the block reaches is reported");

  const auto step = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("miga_fast_emu::pgd_step_linf_", "")
                        .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, double)>();
  at::manual_seed(0);
  const at::Tensor x = at::rand({4, 3, 9, 7});
  at::Tensor delta = (at::rand({4, 3, 9, 7}) - 0.5) * 0.2;
  const at::Tensor grad = at::randn({4, 3, 9, 7});
  const at::Tensor eps = at::tensor({0.03f, 0.05f, 0.0f, 0.1f});
  const at::Tensor alpha = at::tensor({0.01f});
  const at::Tensor e = eps.view({4, 1, 1, 1});
  at::Tensor expected = at::clamp(delta + 0.01f * at::sign(grad), -e, e);
  expected = at::clamp(x + expected, 0, 1) - x;
  step.call(delta, grad, x, eps, alpha, 1.0);
  if (!at::equal(delta, expected)) return fail("the emulated CUDA l-inf step equals plain ATen");
  std::printf("emulated CUDA build: ok\n");
  return 0;
}
