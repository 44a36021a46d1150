// The include-twice preamble of every CPU kernel file: its loops header compiled once for
// plain x86-64 (namespace `generic`) and once for AVX2 (namespace `avx2`, under
// `#pragma GCC target`), chosen at run time by MIGA_FAST_CPU_CALL (dispatch.h).
//
//   #define MIGA_FAST_LOOPS "projection_loops.h"
//   #define MIGA_FAST_AVX2_TARGET "avx2"      // optional; e.g. "avx2,fma" where FMA
//   #include "instantiate_loops.h"            //   contraction changes no promised result
//
// Included inside the kernel file's namespaces, after dispatch.h and the loops' own
// includes at file scope. No include guard on purpose (one use per kernel file); it
// undefines its two macros.
#ifndef MIGA_FAST_LOOPS
#error "define MIGA_FAST_LOOPS (the loops header to instantiate) before including instantiate_loops.h"
#endif
#ifndef MIGA_FAST_AVX2_TARGET
#define MIGA_FAST_AVX2_TARGET "avx2"
#endif

#ifndef MIGA_FAST_CPU_CALL
#error "include dispatch.h (at file scope) before instantiate_loops.h"
#endif

#define MIGA_FAST_PRAGMA_(text) _Pragma(#text)
#define MIGA_FAST_TARGET_PRAGMA_(isa) MIGA_FAST_PRAGMA_(GCC target(isa))

// MIGA_FAST_ISA_AVX2: 1 in the AVX2 build of the loops, 0 in the generic one (gcc's target
// pragma does not define __AVX2__), for loops that pick their vector width themselves.
#define MIGA_FAST_ISA_AVX2 0
namespace generic {
#include MIGA_FAST_LOOPS
}  // namespace generic
#undef MIGA_FAST_ISA_AVX2

#ifdef MIGA_FAST_HAVE_AVX2_PATH
#pragma GCC push_options
MIGA_FAST_TARGET_PRAGMA_(MIGA_FAST_AVX2_TARGET)
#define MIGA_FAST_ISA_AVX2 1
namespace avx2 {
#include MIGA_FAST_LOOPS
}  // namespace avx2
#undef MIGA_FAST_ISA_AVX2
#pragma GCC pop_options
#endif

#undef MIGA_FAST_TARGET_PRAGMA_
#undef MIGA_FAST_PRAGMA_
#undef MIGA_FAST_AVX2_TARGET
#undef MIGA_FAST_LOOPS
