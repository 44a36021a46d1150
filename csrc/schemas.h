// The one list of miga_fast's op schemas.
//
// Backends register kernels for these names in csrc/cpu/<family>.cpp (CPU) and
// csrc/cuda/<family>.cpp (CUDA). The Python layer (miga_fast/ops/) adds the fake
// kernels for torch.compile and the argument checks users see. The library is
// torch.ops.miga_fast (csrc/ops.cpp); the emulated-CUDA test build defines the same
// schemas as torch.ops.miga_fast_emu (csrc/emulation/).
#pragma once

#include <torch/library.h>

namespace miga_fast {

inline void define_ops(torch::Library& m) {
  // Projection family (docs/algorithms.md §1). `eps` and `alpha` are 1-D tensors of
  // one value or one value per sample; they are read on the device, so no call syncs.
  m.def(
      "pgd_step_linf_(Tensor(a!) delta, Tensor grad, Tensor x, Tensor eps, Tensor alpha, "
      "float direction) -> ()");
  m.def(
      "pgd_step_l2_(Tensor(a!) delta, Tensor grad, Tensor x, Tensor eps, Tensor alpha, "
      "float direction) -> ()");
  // The l-inf step on the adversarial image adv = x + delta (torchattacks' arithmetic, so
  // its results equal torchattacks' PGD bit for bit): adv <- clamp(x + clamp(adv + direction
  // * alpha * sign(grad) - x, -eps, eps), 0, 1).
  m.def(
      "pgd_step_linf_image_(Tensor(a!) adv, Tensor grad, Tensor x, Tensor eps, Tensor alpha, "
      "float direction) -> ()");
  m.def(
      "mi_fgsm_step_(Tensor(a!) delta, Tensor(b!) momentum, Tensor grad, Tensor x, Tensor eps, "
      "Tensor alpha, float mu, float direction) -> ()");
  m.def("project_linf_(Tensor(a!) delta, Tensor x, Tensor eps) -> ()");
  m.def("project_l2_(Tensor(a!) delta, Tensor x, Tensor eps) -> ()");

  // SSIM family (docs/algorithms.md §2): per-sample SSIM [B]; and, in one pass over the
  // blurred moments, the value with its gradients d value_b / d x and d value_b / d y. The
  // upstream gradient of a per-sample value is one number per sample, so the backward is
  // a scaling of these maps: nothing per pixel is recomputed or kept besides them.
  // `window` is the normalised 1-D Gaussian (odd length, x's dtype and device).
  // cs_only: the mean of the contrast-structure map (SSIM without its luminance term), the
  // term MS-SSIM takes at its finer scales.
  m.def(
      "ssim(Tensor x, Tensor y, Tensor window, float data_range, float k1, float k2, "
      "bool same_padding, bool cs_only=False) -> Tensor");
  m.def(
      "ssim_value_and_grad(Tensor x, Tensor y, Tensor window, float data_range, float k1, float k2, "
      "bool same_padding, bool cs_only=False) -> (Tensor, Tensor, Tensor)");
  // Per sample the largest t in [0, 1] with SSIM(x, x + t delta) >= tau[b], refined on a grid
  // of `candidates` scales `rounds` times; the moments (float64 window) are polynomials in t,
  // so one blur pass serves every candidate. Returns [B] in x's dtype.
  m.def(
      "ssim_ball_scale(Tensor delta, Tensor x, Tensor window, Tensor tau, float data_range, float k1, float k2, "
      "bool same_padding, int candidates, int rounds) -> Tensor");
  // The convex SSIM ball in place: per non-overlapping window x window window of every
  // plane, the exact projection of delta's zero-mean part onto the zero-mean structural
  // SSIM ball {S >= gamma} (c_pixel = (K2 * data_range)^2), window means kept; then the box
  // x + delta in [0, 1]. gamma: [1] or [B] in x's dtype.
  m.def("ssim_window_ball_project_(Tensor(a!) delta, Tensor x, Tensor gamma, int window, float c_pixel) -> ()");

  // MINE family (docs/algorithms.md §3). With u = U + b1, v = V [B, H] and w = w2 [H],
  // the critic scores are T_ij = sum_h w_h act(u_ih + v_jh) (b2 is added by the caller);
  // mine_row_lse returns lse_i = log sum_j exp(T_ij) over all j (or j != i), never storing
  // anything B x B; its backward recomputes rows and columns and returns d/du, d/dv, d/dw.
  // activation: 0 relu, 1 elu, 2 softplus.
  m.def("mine_row_lse(Tensor u, Tensor v, Tensor w2, int activation, bool exclude_diag) -> Tensor");
  m.def(
      "mine_row_lse_backward(Tensor grad, Tensor u, Tensor v, Tensor w2, Tensor lse, int activation, "
      "bool exclude_diag) -> (Tensor, Tensor, Tensor)");

  // Sampler family (docs/algorithms.md §5): every update of a diffusion purifier outside
  // its model, element-wise in one pass (csrc/common/sampler_math.h): stage A by `mode`
  // (0 identity, 1 jump a_from -> a_to, 2 DDIM a_from -> a_to), then with `mask` the
  // combine with the noised known image at a_known, then with `noise_jump` a jump
  // a_to -> a_jump. The a_* are 1-D tensors of 1 or B alpha-bars; clip <= 0: no clip.
  // The backward returns d/dx, d/deps, d/dknown for the need_* flags set, in that order.
  m.def(
      "sampler_step(Tensor x, Tensor? eps, Tensor? known, Tensor? mask, Tensor? noise, Tensor? noise_known, "
      "Tensor? noise_jump, Tensor a_from, Tensor a_to, Tensor a_known, Tensor a_jump, int mode, float eta, "
      "float clip) -> Tensor");
  m.def(
      "sampler_step_backward(Tensor grad, Tensor x, Tensor? eps, Tensor? mask, Tensor a_from, Tensor a_to, "
      "Tensor a_known, Tensor a_jump, int mode, float eta, float clip, bool has_jump, bool need_x, bool need_eps, "
      "bool need_known) -> Tensor[]");
}

}  // namespace miga_fast
