// Run-time choice between the generic and the AVX2 build of a CPU loop family.
//
// A kernel file instantiates its loops header twice through instantiate_loops.h, inside
// namespaces `generic` and `avx2` (the latter under `#pragma GCC target`, where
// MIGA_FAST_HAVE_AVX2_PATH), then calls MIGA_FAST_CPU_CALL(fn, args...).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define MIGA_FAST_HAVE_AVX2_PATH 1
#endif

namespace miga_fast {

inline bool use_avx2() {
#ifdef MIGA_FAST_HAVE_AVX2_PATH
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported;
#else
  return false;
#endif
}

}  // namespace miga_fast

#ifdef MIGA_FAST_HAVE_AVX2_PATH
#define MIGA_FAST_CPU_CALL(fn, ...) (::miga_fast::use_avx2() ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define MIGA_FAST_CPU_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif
