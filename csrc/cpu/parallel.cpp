// How many threads the CPU kernels' at::parallel_for really runs on. at::parallel_for is
// a header template: compiled without OpenMP it is a serial loop, whatever
// torch.get_num_threads() says, and nothing else would show it (the results are the same).
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

namespace miga_fast {

int64_t cpu_parallel_threads() {
  std::atomic<uint64_t> seen{0};
  // one task per thread at most (grain = range / threads): each marks its thread's bit
  const int64_t n = 64 * at::get_num_threads();
  at::parallel_for(0, n, 64, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < 64) seen.fetch_or(uint64_t(1) << t);
  });
  return __builtin_popcountll(seen.load());
}

}  // namespace miga_fast
