// ctest of the emulated CUDA build (csrc/emulation/): the emulator runs a correct kernel,
// exposes a missing barrier as NaN and reports a divergent barrier; and one CUDA kernel
// with its glue, called through the dispatcher as torch.ops.miga_fast_emu, gives the l-inf
// step's exact result on CPU tensors. The Python tests check every kernel in depth.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "linf_case.h"

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

  if (!miga_fast_tests::linf_step_is_exact(miga_fast_tests::linf_step("miga_fast_emu")))
    return fail("the emulated CUDA l-inf step equals plain ATen");
  std::printf("emulated CUDA build: ok\n");
  return 0;
}
