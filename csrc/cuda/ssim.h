// Launchers of the CUDA SSIM kernels (ssim_kernels.cu). Raw pointers and CUDA types only;
// the torch glue is ssim.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace miga_fast {
namespace cuda {

struct SsimArgs {
  const void* x = nullptr;  // [batch, channels, h, w], float32 or float64 (is_double)
  const void* y = nullptr;
  const void* window = nullptr;  // [k], the data's dtype
  int64_t batch = 0, channels = 0, h = 0, w = 0;
  int k = 0, pad = 0;  // pad = k / 2 for "same", 0 for "valid"
  double c1 = 0, c2 = 0;
  bool cs_only = false;  // the contrast-structure term alone (no luminance term)
  double gs = 0;         // 1 / (channels * ho * wo): the mean's (and gradient's) scale
  bool is_double = false;
  double* partials = nullptr;  // [batch, ssim_tiles()]: each block's SSIM-map sum
  void* gx = nullptr;          // with gradients: d value_b / d x, [batch, channels, h, w]
  void* gy = nullptr;          // ... and d value_b / d y
};

// Blocks per sample (partials per sample) of the value (with_grad false) or the fused
// value-and-gradient kernel.
int64_t ssim_tiles(const SsimArgs& args, bool with_grad);
// Dynamic shared memory the kernel needs; it must not exceed ssim_shared_limit(), the
// current device's opt-in limit per block.
size_t ssim_shared_bytes(const SsimArgs& args, bool with_grad);
size_t ssim_shared_limit();

cudaError_t launch_ssim(const SsimArgs& args, bool with_grad, cudaStream_t stream);

// ssim_ball_scale: `geometry` gives x (as x), delta (as y), the float64 window, c1, c2;
// is_double says x's dtype. Workspaces: moments [batch * channels, 5, ho, wo] double,
// partials [batch, ssim_ball_chunks(), candidates] double; bounds [batch, 2] double
// holds (0, 1) on entry and [t, t_next] on exit (t: the answer). No host sync.
constexpr int kMaxBallCandidates = 4096;
struct BallArgs {
  SsimArgs geometry;
  const double* tau = nullptr;  // [batch]
  int candidates = 0, rounds = 0;
  double* moments = nullptr;
  double* partials = nullptr;
  double* bounds = nullptr;
};
int64_t ssim_ball_chunks(const SsimArgs& geometry);
size_t ssim_ball_shared_bytes(const SsimArgs& geometry);
cudaError_t launch_ssim_ball_scale(const BallArgs& args, cudaStream_t stream);

// ssim_window_ball_project_, in place on delta [batch, channels, h, w] (x's dtype).
struct WindowBallArgs {
  void* delta = nullptr;
  const void* x = nullptr;
  const void* gamma = nullptr;  // [1] (gamma_stride 0) or [batch] (1)
  int64_t gamma_stride = 0;
  int64_t batch = 0, channels = 0, h = 0, w = 0, window = 0;
  double c_pixel = 0;
  bool is_double = false;
};
cudaError_t launch_ssim_window_ball(const WindowBallArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace miga_fast
