// Argument checks and preparation of the sampler family, shared by the CPU and CUDA glue.
//
// The Python layer (miga_fast/ops/sampler.py) checks first and names the argument the
// user passed; these checks guard C++ callers (and torch.ops.* called directly) against
// memory errors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <vector>

#include "projection_checks.h"
#include "sampler_math.h"

namespace miga_fast {

inline void check_sampler_like(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.device() == x.device(),
              "miga_fast.sampler_step: `", name, "` must match `x` in shape, dtype and device; got ", t.sizes(), " ",
              t.scalar_type(), " on ", t.device(), " against ", x.sizes(), " ", x.scalar_type(), " on ", x.device());
}

// The checked, contiguous tensors of one sampler call. Optional inputs are undefined
// tensors when absent. The mask is x's shape, or x's with dimension 1 of size 1 (one
// mask for every channel): element i of sample b reads mask[b * mask_n + i % mask_n].
struct SamplerCall {
  at::Tensor x, eps, known, mask, noise, noise_known, noise_jump;
  at::Tensor a_from, a_to, a_known, a_jump;
  int mode = kSamplerIdentity;
  bool has_mask = false, has_jump = false;
  int64_t batch = 0, n = 0, mask_n = 0;

  SamplerCall(const at::Tensor& x_in, const c10::optional<at::Tensor>& eps_in,
              const c10::optional<at::Tensor>& known_in, const c10::optional<at::Tensor>& mask_in,
              const c10::optional<at::Tensor>& noise_in, const c10::optional<at::Tensor>& noise_known_in,
              const c10::optional<at::Tensor>& noise_jump_in, const at::Tensor& a_from_in, const at::Tensor& a_to_in,
              const at::Tensor& a_known_in, const at::Tensor& a_jump_in, int64_t mode_in, bool forward) {
    TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0,
                "miga_fast.sampler_step: `x` must have a non-empty batch dimension, got shape ", x_in.sizes());
    TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "miga_fast.sampler_step: `x` must be floating, got ",
                x_in.scalar_type());
    TORCH_CHECK(mode_in >= kSamplerIdentity && mode_in <= kSamplerDdim, "miga_fast.sampler_step: mode ", mode_in,
                " is not 0 (identity), 1 (jump) or 2 (ddim)");
    mode = static_cast<int>(mode_in);
    x = contiguous_or_self(x_in);
    batch = x.size(0);
    n = x.numel() / batch;
    const auto take = [&](const c10::optional<at::Tensor>& t, const char* name) -> at::Tensor {
      if (!t.has_value() || !t->defined()) return at::Tensor();
      check_sampler_like(x_in, *t, name);
      return contiguous_or_self(*t);
    };
    eps = take(eps_in, "eps");
    if (forward) {
      known = take(known_in, "known");
      noise = take(noise_in, "noise");
      noise_known = take(noise_known_in, "noise_known");
      noise_jump = take(noise_jump_in, "noise_jump");
    }
    if (mask_in.has_value() && mask_in->defined()) {
      const at::Tensor& m = *mask_in;
      bool shape_ok = m.dim() == x_in.dim();
      for (int64_t d = 0; shape_ok && d < m.dim(); ++d)
        shape_ok = m.size(d) == x_in.size(d) || (d == 1 && m.size(1) == 1);
      TORCH_CHECK(shape_ok && m.scalar_type() == x_in.scalar_type() && m.device() == x_in.device(),
                  "miga_fast.sampler_step: `mask` must be x's shape (or x's with dimension 1 of size 1), dtype and "
                  "device; got ",
                  m.sizes(), " ", m.scalar_type(), " on ", m.device());
      mask = contiguous_or_self(m);
      mask_n = mask.numel() / batch;
      has_mask = true;
    }
    has_jump = noise_jump.defined();  // the backward sets it from its argument
    TORCH_CHECK(mode != kSamplerDdim || eps.defined(), "miga_fast.sampler_step: ddim needs `eps`");
    if (forward) {
      TORCH_CHECK(mode != kSamplerJump || noise.defined(), "miga_fast.sampler_step: a jump needs `noise`");
      TORCH_CHECK(!has_mask || (known.defined() && noise_known.defined()),
                  "miga_fast.sampler_step: a mask needs `known` and `noise_known`");
    }
    a_from = per_sample_param(a_from_in, x, "a_from");
    a_to = per_sample_param(a_to_in, x, "a_to");
    a_known = per_sample_param(a_known_in, x, "a_known");
    a_jump = per_sample_param(a_jump_in, x, "a_jump");
  }

  static int64_t stride_of(const at::Tensor& p) { return p.numel() == 1 ? 0 : 1; }
};

// A backend's drivers: the forward, and the backward writing d/dx, d/deps, d/dknown for
// the `needs` flags set (undefined tensors for the others).
struct SamplerBackwardOut {
  at::Tensor gx, geps, gknown;
};

using SamplerForward = at::Tensor (*)(const SamplerCall&, double eta, double clip);
using SamplerBackward = SamplerBackwardOut (*)(const at::Tensor& grad, const SamplerCall&, double eta, double clip,
                                               bool need_x, bool need_eps, bool need_known);

// The two ops of the family as adapters over one backend's drivers, and their
// registration: `SamplerOps<fwd, bwd>::register_all(m)` in a TORCH_LIBRARY_IMPL block.
template <SamplerForward Fwd, SamplerBackward Bwd>
struct SamplerOps {
  static at::Tensor step(const at::Tensor& x, const c10::optional<at::Tensor>& eps,
                         const c10::optional<at::Tensor>& known, const c10::optional<at::Tensor>& mask,
                         const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& noise_known,
                         const c10::optional<at::Tensor>& noise_jump, const at::Tensor& a_from, const at::Tensor& a_to,
                         const at::Tensor& a_known, const at::Tensor& a_jump, int64_t mode, double eta, double clip) {
    const SamplerCall c(x, eps, known, mask, noise, noise_known, noise_jump, a_from, a_to, a_known, a_jump, mode, true);
    return Fwd(c, eta, clip);
  }

  static std::vector<at::Tensor> step_backward(const at::Tensor& grad, const at::Tensor& x,
                                               const c10::optional<at::Tensor>& eps,
                                               const c10::optional<at::Tensor>& mask, const at::Tensor& a_from,
                                               const at::Tensor& a_to, const at::Tensor& a_known,
                                               const at::Tensor& a_jump, int64_t mode, double eta, double clip,
                                               bool has_jump, bool need_x, bool need_eps, bool need_known) {
    const c10::optional<at::Tensor> none;
    SamplerCall c(x, eps, none, mask, none, none, none, a_from, a_to, a_known, a_jump, mode, false);
    c.has_jump = has_jump;
    check_sampler_like(x, grad, "grad");
    const SamplerBackwardOut out = Bwd(contiguous_or_self(grad), c, eta, clip, need_x, need_eps, need_known);
    std::vector<at::Tensor> result;
    if (need_x) result.push_back(out.gx);
    if (need_eps) result.push_back(out.geps);
    if (need_known) result.push_back(out.gknown);
    return result;
  }

  static void register_all(torch::Library& m) {
    m.impl("sampler_step", &step);
    m.impl("sampler_step_backward", &step_backward);
  }
};

}  // namespace miga_fast
