// torch.ops.miga_fast: the schemas of csrc/schemas.h.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(miga_fast, m) { miga_fast::define_ops(m); }
