// torch.ops.miga_fast_emu: miga_fast's schemas, whose CPU kernels in the emulated build
// are the CUDA glue (csrc/cuda/<family>.cpp) running the CUDA kernels under the emulator.
#include <torch/library.h>

#include "../schemas.h"

TORCH_LIBRARY(miga_fast_emu, m) { miga_fast::define_ops(m); }
