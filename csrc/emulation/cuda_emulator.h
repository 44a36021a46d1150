// A CUDA emulator for testing the kernels in csrc/cuda/ on a machine without a GPU.
//
// The .cu files are compiled as plain C++ with csrc/emulation/shim/ first on the include
// path: its <cuda_runtime.h> includes this header (see csrc/emulation/README.md). Every CUDA thread of a block becomes
// a fiber (ucontext) on one OS thread; fibers switch only at __syncthreads and warp
// shuffles, so a run is deterministic and a missing barrier shows: a thread that reads
// shared memory before the threads meant to write it have run sees the poison (0xFF
// bytes, NaN as float or double) that fills all shared memory, static and dynamic, before
// every block.
//
// Static shared memory is declared with MIGA_FAST_SHARED(name, type) (csrc/cuda/device.h),
// not __shared__: here it takes `name` from a per-block arena, the nth declaration a
// thread executes getting the nth slot, the same in every thread. (A __shared__ function
// static cannot be found to be poisoned: GCC places the statics of function templates in
// their own sections whatever section is asked for.) __shared__ itself does not compile.
//
// What it checks beyond the results:
//   - __syncthreads reached by every thread of the block the same number of times
//     (a barrier in divergent code, or a thread that returned before one, is an error);
//   - a warp shuffle whose source lane has exited or sits at another barrier (deadlock);
//   - the launch configuration: block size, grid size, and static plus dynamic shared
//     memory against 48 KiB, or against the limit a kernel opted into with
//     cudaFuncSetAttribute (at most the H100's 227 KiB, which the emulated device reports);
//     static shared memory alone against 48 KiB; threads declaring different static
//     shared variables;
//   - asynchronous copies (<cuda_pipeline.h>, cp.async): each copy poisons its shared
//     destination when issued and lands only when its thread waits for its group
//     (__pipeline_wait_prior), the latest a GPU may land it, so a read before the wait (or
//     before the barrier after it) sees NaN; a copy of a size other than 4, 8 or 16 bytes,
//     misaligned, or outside shared memory, and a group never waited for, are errors.
// What it does not model: concurrency between blocks (they run one after another),
// memory coalescing, timing, fused multiply-add contraction (nvcc fuses by default, so
// float results differ from a GPU's in the last bits).
#pragma once

#ifndef MIGA_FAST_CUDA_EMULATION
#error "cuda_emulator.h is included through the emulated build's shim (csrc/emulation/shim/cuda_runtime.h)"
#endif

#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// Device qualifiers become host C++. Static shared variables live in the block's arena
// (MIGA_FAST_SHARED below), poisoned (0xFF) before every block as the dynamic shared memory
// is: stale values from an earlier block cannot hide a race.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ miga_fast_emulator_declares_static_shared_memory_with_MIGA_FAST_SHARED
#define __align__(n) __attribute__((aligned(n)))

namespace miga_fast {
namespace emu {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxStaticShared = 48 * 1024;  // the most static shared memory a kernel may declare
constexpr int kMaxSharedOptIn = 227 * 1024;     // an H100's cudaDevAttrMaxSharedMemoryPerBlockOptin
constexpr int kEmulatedSms = 2;                 // small, so grid-stride loops and partial grids get exercised

enum class State { kRunnable, kAtSyncthreads, kAtShuffle, kDone };

// One asynchronous copy in flight: the source bytes (read when issued) and where they land.
struct AsyncCopy {
  unsigned char* dst = nullptr;
  unsigned char bytes[16] = {};
  size_t size = 0;
};

struct Fiber {
  ucontext_t context{};
  char* stack = nullptr;  // from Runtime::stacks
  uint3 index{};
  int lane = 0;
  State state = State::kRunnable;
  int64_t syncs = 0;
  size_t shared_decls = 0;                       // static shared variables declared so far
  std::vector<AsyncCopy> open;                   // issued since the last commit
  std::deque<std::vector<AsyncCopy>> committed;  // committed groups, oldest first
};

struct Runtime {
  ucontext_t scheduler{};
  std::vector<Fiber> fibers;
  int current = -1;
  void (*body)(void*) = nullptr;
  void* body_data = nullptr;
  std::vector<uint64_t> slots;  // one shuffle slot per thread of the block
  std::vector<unsigned char> dynamic_shared;
  size_t dynamic_limit = kDefaultDynamicShared;  // the running kernel's dynamic shared memory limit
  bool opted_in = false;                         // ... raised with cudaFuncSetAttribute
  // The block's static shared memory: a fixed arena (addresses handed out stay valid), and
  // the (offset, size) of each variable in declaration order.
  std::vector<unsigned char> static_shared = std::vector<unsigned char>(kMaxStaticShared);
  std::vector<std::pair<size_t, size_t>> static_decls;
  size_t static_top = 0;
  std::vector<std::unique_ptr<unsigned char[]>> overflow;  // variables past 48 KiB (an error)
  uint3 thread{}, block{};
  dim3 block_dim{}, grid_dim{};
  cudaError_t last_error = cudaSuccess;
  std::string message;
  std::map<const void*, int> shared_opt_in;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
  // Fiber stacks, one per thread of the largest block launched so far, reused by every
  // launch after (address space only until touched: a fiber uses a few KiB of its stack).
  std::vector<std::unique_ptr<char[]>> stacks;
};

inline uint3 index3(unsigned x, unsigned y, unsigned z) {
  uint3 v;
  v.x = x;
  v.y = y;
  v.z = z;
  return v;
}

inline Runtime& runtime() {
  static Runtime r;
  return r;
}

inline void fail(const std::string& what) {
  Runtime& r = runtime();
  if (r.last_error == cudaSuccess) {
    r.last_error = cudaErrorLaunchFailure;
    r.message = what;
  }
}

inline void enter_scheduler(State s) {
  Runtime& r = runtime();
  Fiber& f = r.fibers[r.current];
  f.state = s;
  swapcontext(&f.context, &r.scheduler);
  r.thread = r.fibers[r.current].index;
}

inline void syncthreads() {
  Runtime& r = runtime();
  ++r.fibers[r.current].syncs;
  enter_scheduler(State::kAtSyncthreads);
}

// Lane `lane` of the calling warp receives slot[source(lane)] (its own value when the
// source is outside the warp), after every live lane has written its slot.
template <typename T, typename Source>
T shuffle(T v, Source source) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "emulated shuffles move at most 8 bytes");
  Runtime& r = runtime();
  const int self = r.current;
  std::memcpy(&r.slots[self], &v, sizeof(T));
  enter_scheduler(State::kAtShuffle);
  const Fiber& f = r.fibers[self];
  const int src_lane = source(f.lane);
  T out = v;
  if (src_lane >= 0 && src_lane < 32) {
    const int src = self - f.lane + src_lane;
    if (src < static_cast<int>(r.fibers.size())) {
      if (r.fibers[src].state == State::kDone)
        fail("warp shuffle reads lane " + std::to_string(src_lane) + ", which has exited");
      std::memcpy(&out, &r.slots[src], sizeof(T));
    }
  }
  enter_scheduler(State::kAtShuffle);  // nobody overwrites a slot before all have read it
  return out;
}

inline void trampoline() {
  Runtime& r = runtime();
  r.body(r.body_data);
  r.fibers[r.current].state = State::kDone;
  // returning resumes uc_link: the scheduler
}

inline std::string where(const Runtime& r) {
  return "block (" + std::to_string(r.block.x) + ", " + std::to_string(r.block.y) + ", " + std::to_string(r.block.z) +
         ")";
}

// Runs every thread of the current block to completion, releasing barriers as they fill.
inline void run_block() {
  Runtime& r = runtime();
  const int n = static_cast<int>(r.fibers.size());
  for (Fiber& f : r.fibers) {
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &r.scheduler;
    makecontext(&f.context, trampoline, 0);
    f.state = State::kRunnable;
    f.syncs = 0;
    f.shared_decls = 0;
    f.open.clear();
    f.committed.clear();
  }
  std::memset(r.dynamic_shared.data(), 0xFF, r.dynamic_shared.size());
  std::memset(r.static_shared.data(), 0xFF, r.static_shared.size());
  r.static_decls.clear();
  r.static_top = 0;
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (r.fibers[i].state != State::kRunnable) continue;
      r.current = i;
      r.thread = r.fibers[i].index;
      swapcontext(&r.scheduler, &r.fibers[i].context);
    }
    int done = 0, at_sync = 0;
    for (const Fiber& f : r.fibers) {
      done += f.state == State::kDone;
      at_sync += f.state == State::kAtSyncthreads;
    }
    if (done == n) break;
    bool released = false;
    for (int w0 = 0; w0 < n; w0 += 32) {  // warps whose live lanes all wait at a shuffle
      const int w1 = w0 + 32 < n ? w0 + 32 : n;
      int live = 0, shuffling = 0;
      for (int i = w0; i < w1; ++i) {
        live += r.fibers[i].state != State::kDone;
        shuffling += r.fibers[i].state == State::kAtShuffle;
      }
      if (shuffling > 0 && shuffling == live) {
        for (int i = w0; i < w1; ++i)
          if (r.fibers[i].state == State::kAtShuffle) r.fibers[i].state = State::kRunnable;
        released = true;
      }
    }
    if (!released && at_sync > 0 && at_sync + done == n) {
      if (done > 0)
        fail("__syncthreads in " + where(r) + " reached by " + std::to_string(at_sync) + " threads while " +
             std::to_string(done) + " had returned");
      for (Fiber& f : r.fibers)
        if (f.state == State::kAtSyncthreads) f.state = State::kRunnable;
      released = true;
    }
    if (!released) {
      fail("deadlock in " + where(r) + ": threads wait at different barriers (divergent __syncthreads or shuffle)");
      return;  // the fibers are abandoned; their stacks are reset by the next block
    }
  }
  for (const Fiber& f : r.fibers) {
    size_t pending = f.open.size();
    for (const auto& group : f.committed) pending += group.size();
    if (pending > 0) {
      fail("thread (" + std::to_string(f.index.x) + ", " + std::to_string(f.index.y) + ") of " + where(r) +
           " ended with " + std::to_string(pending) +
           " asynchronous copies never waited for (__pipeline_commit, then __pipeline_wait_prior)");
      return;
    }
  }
  for (const Fiber& f : r.fibers)
    if (f.syncs != r.fibers[0].syncs) {
      fail("__syncthreads in " + where(r) + " called " + std::to_string(f.syncs) + " times by one thread and " +
           std::to_string(r.fibers[0].syncs) + " times by thread 0");
      return;
    }
}

// The calling thread's next static shared variable: the slot every thread's declaration of
// the same rank shares (the first thread to reach it allocates it).
inline void* static_shared(size_t size, size_t align) {
  Runtime& r = runtime();
  Fiber& f = r.fibers[r.current];
  const size_t rank = f.shared_decls++;
  if (rank == r.static_decls.size()) {
    const size_t offset = (r.static_top + align - 1) / align * align;
    if (offset + size > kMaxStaticShared) {
      fail("static shared memory of " + std::to_string(offset + size) + " bytes exceeds 48 KiB");
      r.overflow.emplace_back(new unsigned char[size]);  // somewhere to run on until the block ends
      return r.overflow.back().get();
    }
    r.static_decls.emplace_back(offset, size);
    r.static_top = offset + size;
    // Without an opt-in a block has 48 KiB in all; with one, cudaFuncSetAttribute would have
    // refused a dynamic limit that leaves too little room for the static variables.
    const size_t dynamic = r.dynamic_shared.size() > 16 ? r.dynamic_shared.size() : 0;
    if (!r.opted_in && r.static_top + dynamic > kDefaultDynamicShared)
      fail("static (" + std::to_string(r.static_top) + " bytes) and dynamic (" + std::to_string(dynamic) +
           " bytes) shared memory exceed 48 KiB without cudaFuncSetAttribute");
    if (r.opted_in && r.static_top + r.dynamic_limit > static_cast<size_t>(kMaxSharedOptIn))
      fail("static shared memory (" + std::to_string(r.static_top) + " bytes) and the dynamic limit opted into (" +
           std::to_string(r.dynamic_limit) + " bytes) exceed " + std::to_string(kMaxSharedOptIn) + " bytes");
  } else if (rank > r.static_decls.size() || r.static_decls[rank].second != size) {
    fail("threads of " + where(r) + " declare different static shared variables (declaration " + std::to_string(rank) +
         ")");
    r.overflow.emplace_back(new unsigned char[size]);
    return r.overflow.back().get();
  }
  return r.static_shared.data() + r.static_decls[rank].first;
}

// Whether [p, p + n) lies in the block's shared memory (static or dynamic).
inline bool in_shared(const void* p, size_t n) {
  Runtime& r = runtime();
  const auto* b = static_cast<const unsigned char*>(p);
  const unsigned char* d = r.dynamic_shared.data();
  const unsigned char* st = r.static_shared.data();
  return (b >= d && b + n <= d + r.dynamic_shared.size()) || (b >= st && b + n <= st + r.static_top);
}

// cp.async: the source is read now; the destination holds poison until the copy lands.
inline void memcpy_async(void* dst, const void* src, size_t size) {
  Runtime& r = runtime();
  if (size != 4 && size != 8 && size != 16) {
    fail("asynchronous copy of " + std::to_string(size) + " bytes (4, 8 or 16 only)");
    return;
  }
  if (reinterpret_cast<uintptr_t>(dst) % size != 0 || reinterpret_cast<uintptr_t>(src) % size != 0) {
    fail("asynchronous copy of " + std::to_string(size) + " bytes from or to an address not aligned to its size");
    return;
  }
  if (!in_shared(dst, size)) {
    fail("asynchronous copy to an address outside shared memory");
    return;
  }
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.size = size;
  std::memcpy(c.bytes, src, size);
  std::memset(dst, 0xFF, size);
  r.fibers[r.current].open.push_back(c);
}

inline void pipeline_commit() {
  Fiber& f = runtime().fibers[runtime().current];
  f.committed.push_back(std::move(f.open));
  f.open.clear();
}

// Lands every committed group of the calling thread but the newest `prior`.
inline void pipeline_wait_prior(size_t prior) {
  Fiber& f = runtime().fibers[runtime().current];
  while (f.committed.size() > prior) {
    for (const AsyncCopy& c : f.committed.front()) std::memcpy(c.dst, c.bytes, c.size);
    f.committed.pop_front();
  }
}

template <typename Tuple, typename Kernel>
struct Bound {
  Kernel kernel;
  Tuple args;
  static void call(void* self) {
    auto* b = static_cast<Bound*>(self);
    std::apply(b->kernel, b->args);
  }
};

template <typename... P>
class Launcher {
 public:
  Launcher(dim3 grid, dim3 block, size_t shared, void (*kernel)(P...))
      : grid_(grid), block_(block), shared_(shared), kernel_(kernel) {}

  template <typename... A>
  void operator()(A&&... args) const {
    Runtime& r = runtime();
    const uint64_t threads = uint64_t(block_.x) * block_.y * block_.z;
    if (threads == 0 || threads > 1024 || block_.z > 64) {
      fail("invalid block size " + std::to_string(threads));
      return;
    }
    if (grid_.x == 0 || grid_.y == 0 || grid_.z == 0 || grid_.y > 65535 || grid_.z > 65535) {
      fail("invalid grid");
      return;
    }
    size_t limit = kDefaultDynamicShared;
    const auto opted = r.shared_opt_in.find(reinterpret_cast<const void*>(kernel_));
    if (opted != r.shared_opt_in.end()) limit = static_cast<size_t>(opted->second);
    r.opted_in = opted != r.shared_opt_in.end();
    if (shared_ > limit) {
      fail("dynamic shared memory of " + std::to_string(shared_) + " bytes exceeds the kernel's limit of " +
           std::to_string(limit) + " (48 KiB unless raised with cudaFuncSetAttribute)");
      return;
    }
    using Args = std::tuple<std::decay_t<P>...>;
    Bound<Args, void (*)(P...)> bound{kernel_, Args(std::forward<A>(args)...)};
    r.body = &Bound<Args, void (*)(P...)>::call;
    r.body_data = &bound;
    r.block_dim = block_;
    r.grid_dim = grid_;
    r.fibers.clear();
    r.fibers.resize(threads);
    r.slots.assign(threads, 0);
    r.dynamic_shared.assign(shared_ > 0 ? shared_ : 16, 0xFF);
    r.dynamic_limit = limit;
    while (r.stacks.size() < threads) r.stacks.emplace_back(new char[kStackBytes]);
    for (uint64_t t = 0; t < threads; ++t) {
      Fiber& f = r.fibers[t];
      f.stack = r.stacks[t].get();
      f.index = index3(static_cast<unsigned>(t % block_.x), static_cast<unsigned>((t / block_.x) % block_.y),
                       static_cast<unsigned>(t / (uint64_t(block_.x) * block_.y)));
      f.lane = static_cast<int>(t % 32);
    }
    for (unsigned z = 0; z < grid_.z; ++z)
      for (unsigned y = 0; y < grid_.y; ++y)
        for (unsigned x = 0; x < grid_.x; ++x) {
          r.block = index3(x, y, z);
          run_block();
          if (r.last_error != cudaSuccess) return;
        }
  }

 private:
  dim3 grid_, block_;
  size_t shared_;
  void (*kernel_)(P...);
};

template <typename... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t shared, void (*kernel)(P...)) {
  return Launcher<P...>(grid, block, shared, kernel);
}

inline unsigned char* dynamic_shared() { return runtime().dynamic_shared.data(); }

// The runtime API calls the kernels' launchers make.
inline cudaError_t get_last_error() {
  Runtime& r = runtime();
  const cudaError_t e = r.last_error;
  r.last_error = cudaSuccess;
  return e;
}
inline const char* get_error_string(cudaError_t e) { return e == cudaSuccess ? "no error" : runtime().message.c_str(); }
inline cudaError_t get_device(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int) {
  if (attr == cudaDevAttrMultiProcessorCount) {
    *value = kEmulatedSms;
  } else if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) {
    *value = kMaxSharedOptIn;
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
template <typename F>
cudaError_t func_set_attribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > kMaxSharedOptIn) return cudaErrorInvalidValue;
  runtime().shared_opt_in[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

}  // namespace emu
}  // namespace miga_fast

#define threadIdx (::miga_fast::emu::runtime().thread)
#define blockIdx (::miga_fast::emu::runtime().block)
#define blockDim (::miga_fast::emu::runtime().block_dim)
#define gridDim (::miga_fast::emu::runtime().grid_dim)
#define cudaGetLastError ::miga_fast::emu::get_last_error
#define cudaGetErrorString ::miga_fast::emu::get_error_string
#define cudaGetDevice ::miga_fast::emu::get_device
#define cudaDeviceGetAttribute ::miga_fast::emu::device_get_attribute
#define cudaFuncSetAttribute ::miga_fast::emu::func_set_attribute

inline void __syncthreads() { ::miga_fast::emu::syncthreads(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  return ::miga_fast::emu::shuffle(v, [&](int lane) {
    const int src = lane ^ lane_mask;
    return (src / width == lane / width) ? src : lane;
  });
}

template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  return ::miga_fast::emu::shuffle(v, [&](int lane) {
    const int src = lane + static_cast<int>(delta);
    return (src / width == lane / width) ? src : lane;
  });
}
