// csrc/cuda/ssim_kernels.cu compiled as C++ against the emulator (see README.md here).
#include "../cuda/ssim_kernels.cu"
