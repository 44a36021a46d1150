// The element types the CUDA launchers take (raw pointers and CUDA types only, so the
// kernel files compile without torch's headers). glue.h maps at::ScalarType onto it.
#pragma once

namespace miga_fast {
namespace cuda {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace cuda
}  // namespace miga_fast
