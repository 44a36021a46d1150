// The element-wise math of the sampler family (docs/algorithms.md §5), shared by the CPU
// and CUDA kernels (triton_kernels/sampler.py mirrors it).
//
// One op, `sampler_step`, covers every update a diffusion purifier makes outside its
// model, as up to three stages applied to each pixel in one pass:
//
//   A (mode)  identity:  y = x
//             jump:      y = sqrt(r) x + sqrt(1 - r) n,  r = a_to / a_from
//                        (q(x_to | x_from); from a_from = 1 it is the forward process)
//             ddim:      x0 = (x - sqrt(1 - a_from) e) / sqrt(a_from), clamped to [-clip, clip]
//                        when clip > 0; y = sqrt(a_to) x0 + dir e + sigma n, with
//                        sigma = eta sqrt((1 - a_to) / (1 - a_from) (1 - a_from / a_to)) and
//                        dir = sqrt(1 - a_to - sigma^2) (diffusers' DDIMScheduler.step)
//   B (mask)  y = m y + (1 - m) (sqrt(a_known) k + sqrt(1 - a_known) n_known)
//   C (jump)  y = sqrt(rj) y + sqrt(1 - rj) n_jump,  rj = a_jump / a_to
//
// Every a_* is an alpha-bar (cumulative product of 1 - beta), one per sample. The
// per-sample coefficients are computed once per sample (CPU) or per element (CUDA) by
// the same functions, in the order of the PyTorch reference (miga_fast/reference/sampler.py).
// The backward is exact and element-wise: the output is affine in x, e, k and the noises
// except where the ddim clip is active (there x0 is constant).
#pragma once

#include <cmath>

#include "hd.h"

namespace miga_fast {

enum SamplerMode : int { kSamplerIdentity = 0, kSamplerJump = 1, kSamplerDdim = 2 };

template <typename A>
MIGA_HD A sampler_sqrt(A v) {
#if defined(__CUDACC__)
  return sqrt(v);  // CUDA's float and double overloads
#else
  return std::sqrt(v);
#endif
}

// The per-sample coefficients of one call.
template <typename A>
struct SamplerCoef {
  // stage A
  A sa_from = A(1), s1m_from = A(0);  // sqrt(a_from), sqrt(1 - a_from) (ddim)
  A sa_to = A(1);                     // sqrt(a_to) (ddim)
  A dir = A(0), sigma = A(0);         // ddim
  A jx = A(1), jn = A(0);             // jump: sqrt(r), sqrt(1 - r)
  // stage B
  A ka = A(1), kn = A(0);  // sqrt(a_known), sqrt(1 - a_known)
  // stage C
  A cx = A(1), cn = A(0);  // sqrt(rj), sqrt(1 - rj)
};

template <typename A>
MIGA_HD SamplerCoef<A> sampler_coef(int mode, bool has_mask, bool has_jump, A a_from, A a_to, A a_known, A a_jump,
                                    A eta) {
  SamplerCoef<A> c;
  if (mode == kSamplerJump) {
    const A r = a_to / a_from;
    c.jx = sampler_sqrt(r);
    c.jn = sampler_sqrt(A(1) - r);
  } else if (mode == kSamplerDdim) {
    c.sa_from = sampler_sqrt(a_from);
    c.s1m_from = sampler_sqrt(A(1) - a_from);
    c.sa_to = sampler_sqrt(a_to);
    const A variance = (A(1) - a_to) / (A(1) - a_from) * (A(1) - a_from / a_to);
    c.sigma = eta * sampler_sqrt(variance);
    const A d2 = A(1) - a_to - c.sigma * c.sigma;
    c.dir = sampler_sqrt(d2 > A(0) ? d2 : A(0));
  }
  if (has_mask) {
    c.ka = sampler_sqrt(a_known);
    c.kn = sampler_sqrt(A(1) - a_known);
  }
  if (has_jump) {
    const A rj = a_jump / a_to;
    c.cx = sampler_sqrt(rj);
    c.cn = sampler_sqrt(A(1) - rj);
  }
  return c;
}

// Whether the ddim x0 of this element lies inside the clip range (torch.clamp's gradient
// passes where lo <= v <= hi); always with no clip.
template <typename A>
MIGA_HD bool ddim_inside(A x0, A clip) {
  return !(clip > A(0)) || (x0 >= -clip && x0 <= clip);
}

// The forward of one element. Absent inputs are passed as 0 (their flags off).
template <typename A>
MIGA_HD A sampler_forward(const SamplerCoef<A>& c, int mode, bool has_mask, bool has_jump, A clip, A x, A e, A n, A m,
                          A k, A nk, A nj) {
  A y = x;
  if (mode == kSamplerJump) {
    y = c.jx * x + c.jn * n;
  } else if (mode == kSamplerDdim) {
    A x0 = (x - c.s1m_from * e) / c.sa_from;
    if (clip > A(0)) x0 = x0 < -clip ? -clip : (x0 > clip ? clip : x0);
    y = c.sa_to * x0 + c.dir * e + c.sigma * n;
  }
  if (has_mask) y = m * y + (A(1) - m) * (c.ka * k + c.kn * nk);
  if (has_jump) y = c.cx * y + c.cn * nj;
  return y;
}

// d y / d (x, e, k) of one element: the backward multiplies the upstream gradient by them.
template <typename A>
struct SamplerPartials {
  A dx, de, dk;
};

template <typename A>
MIGA_HD SamplerPartials<A> sampler_partials(const SamplerCoef<A>& c, int mode, bool has_mask, bool has_jump, A clip,
                                            A x, A e, A m) {
  SamplerPartials<A> p{A(1), A(0), A(0)};
  if (mode == kSamplerJump) {
    p.dx = c.jx;
  } else if (mode == kSamplerDdim) {
    const A x0 = (x - c.s1m_from * e) / c.sa_from;
    if (ddim_inside(x0, clip)) {
      p.dx = c.sa_to / c.sa_from;
      p.de = c.dir - c.sa_to * c.s1m_from / c.sa_from;
    } else {
      p.dx = A(0);
      p.de = c.dir;
    }
  }
  if (has_mask) {
    p.dx = m * p.dx;
    p.de = m * p.de;
    p.dk = (A(1) - m) * c.ka;
  }
  if (has_jump) {
    p.dx = c.cx * p.dx;
    p.de = c.cx * p.de;
    p.dk = c.cx * p.dk;
  }
  return p;
}

}  // namespace miga_fast
