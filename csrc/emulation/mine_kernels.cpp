// csrc/cuda/mine_kernels.cu compiled as C++ against the emulator (see README.md here).
#include "../cuda/mine_kernels.cu"
