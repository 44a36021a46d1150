// MIGA_HD, what the shared math headers of csrc/common/ put before their functions:
// __host__ __device__ __forceinline__ under nvcc (the CUDA kernels), inline elsewhere (the
// C++ kernels, and the emulator, which compiles the .cu files as C++).
#pragma once

#if defined(__CUDACC__)
#define MIGA_HD __host__ __device__ __forceinline__
#else
#define MIGA_HD inline
#endif
