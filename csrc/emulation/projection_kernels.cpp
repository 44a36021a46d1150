// csrc/cuda/projection_kernels.cu compiled as C++ against the emulator (see README.md here).
#include "../cuda/projection_kernels.cu"
