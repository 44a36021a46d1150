// csrc/cuda/sampler_kernels.cu compiled as C++ against the emulator (see README.md here).
#include "../cuda/sampler_kernels.cu"
