// The loops of the CPU sampler kernels. Included twice by sampler.cpp, inside namespaces
// `generic` and `avx2` (the latter under `#pragma GCC target("avx2")`), so the same
// source vectorises for plain x86-64 and for AVX2, picked at run time. No include guard
// on purpose; the includes it needs come before it in sampler.cpp.
//
// The work is split into chunks that never straddle a sample, so the per-sample
// coefficients are loop constants; within a chunk, runs that never straddle a mask plane
// (the mask may be one plane for every channel), so the inner loops are plain and
// vectorise. The stages and the inputs present are template flags: no branch per element.
// SamplerPtrs and coef_of come from sampler.cpp (one type for both instantiations).

// p + offset, or null for an absent input (no arithmetic on a null pointer).
template <typename T>
const T* at(const T* p, int64_t offset) {
  return p != nullptr ? p + offset : nullptr;
}

// Calls f(b, j0, j1) (sample b, offsets [j0, j1) within it) on ranges of the flattened
// [B, n] tensor, spread over the intra-op threads.
template <typename F>
void sampler_chunks(int64_t batch, int64_t n, const F& f) {
  at::parallel_for(0, batch * n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / n;
      const int64_t stop = std::min(end, (b + 1) * n);
      f(b, i - b * n, stop - b * n);
      i = stop;
    }
  });
}

// Calls g(j0, j1, m0) on the runs of [j0, j1) that stay within one mask plane of mask_n
// elements (m0: the run's first offset in the plane); one run when there is no mask.
template <typename G>
void mask_runs(int64_t j0, int64_t j1, int64_t mask_n, const G& g) {
  if (mask_n <= 0) {
    g(j0, j1, int64_t(0));
    return;
  }
  int64_t j = j0, m = j0 % mask_n;
  while (j < j1) {
    const int64_t len = std::min(j1 - j, mask_n - m);
    g(j, j + len, m);
    j += len;
    m = 0;
  }
}

template <typename T, int MODE, bool MASK, bool JUMP, bool CLIP, bool NOISE>
void sampler_forward_loop(const SamplerPtrs<T>& p, T eta, T clip, int64_t batch, int64_t n, int64_t mask_n) {
  const T cl = CLIP ? clip : T(0);
  sampler_chunks(batch, n, [&](int64_t b, int64_t j0, int64_t j1) {
    const SamplerCoef<T> c = coef_of(p, b, MODE, MASK, JUMP, eta);
    const int64_t base = b * n;
    mask_runs(j0, j1, MASK ? mask_n : 0, [&](int64_t r0, int64_t r1, int64_t m0) {
      const T* __restrict__ x = p.x + base;
      const T* __restrict__ e = at(p.eps, base);
      const T* __restrict__ nz = at(p.noise, base);
      const T* __restrict__ kn = at(p.known, base);
      const T* __restrict__ nk = at(p.noise_known, base);
      const T* __restrict__ nj = at(p.noise_jump, base);
      const T* __restrict__ m = MASK ? p.mask + b * mask_n + m0 : nullptr;  // m[j - r0]
      T* __restrict__ out = p.out + base;
      for (int64_t j = r0; j < r1; ++j) {
        const T ej = MODE == kSamplerDdim ? e[j] : T(0);
        const T nzj = (MODE == kSamplerJump || NOISE) ? nz[j] : T(0);
        const T mj = MASK ? m[j - r0] : T(0);
        const T kj = MASK ? kn[j] : T(0);
        const T nkj = MASK ? nk[j] : T(0);
        const T njj = JUMP ? nj[j] : T(0);
        out[j] = sampler_forward<T>(c, MODE, MASK, JUMP, cl, x[j], ej, nzj, mj, kj, nkj, njj);
      }
    });
  });
}

template <typename T, int MODE, bool MASK, bool JUMP, bool CLIP>
void sampler_backward_loop(const SamplerPtrs<T>& p, const T* grad, T* gx, T* geps, T* gknown, T eta, T clip,
                           int64_t batch, int64_t n, int64_t mask_n) {
  const T cl = CLIP ? clip : T(0);
  sampler_chunks(batch, n, [&](int64_t b, int64_t j0, int64_t j1) {
    const SamplerCoef<T> c = coef_of(p, b, MODE, MASK, JUMP, eta);
    const int64_t base = b * n;
    mask_runs(j0, j1, MASK ? mask_n : 0, [&](int64_t r0, int64_t r1, int64_t m0) {
      const T* __restrict__ g = grad + base;
      const T* __restrict__ x = p.x + base;
      const T* __restrict__ e = at(p.eps, base);
      const T* __restrict__ m = MASK ? p.mask + b * mask_n + m0 : nullptr;  // m[j - r0]
      for (int64_t j = r0; j < r1; ++j) {
        const T xj = CLIP ? x[j] : T(0);
        const T ej = CLIP ? e[j] : T(0);
        const T mj = MASK ? m[j - r0] : T(0);
        const SamplerPartials<T> d = sampler_partials<T>(c, MODE, MASK, JUMP, cl, xj, ej, mj);
        const T gj = g[j];
        if (gx != nullptr) gx[base + j] = d.dx * gj;
        if (geps != nullptr) geps[base + j] = d.de * gj;
        if (gknown != nullptr) gknown[base + j] = d.dk * gj;
      }
    });
  });
}

// The flags as template arguments: calls F::template run<MODE, MASK, JUMP, CLIP, NOISE>().
// Only DDIM reads CLIP and NOISE (a jump always has its noise).
template <typename F>
void with_sampler_flags(int mode, bool mask, bool jump, bool clip, bool noise, const F& f) {
  const auto by_mode = [&](auto mask_c, auto jump_c) {
    constexpr bool M = decltype(mask_c)::value, J = decltype(jump_c)::value;
    if (mode == kSamplerIdentity) {
      f.template run<kSamplerIdentity, M, J, false, false>();
    } else if (mode == kSamplerJump) {
      f.template run<kSamplerJump, M, J, false, false>();
    } else if (clip) {
      if (noise)
        f.template run<kSamplerDdim, M, J, true, true>();
      else
        f.template run<kSamplerDdim, M, J, true, false>();
    } else {
      if (noise)
        f.template run<kSamplerDdim, M, J, false, true>();
      else
        f.template run<kSamplerDdim, M, J, false, false>();
    }
  };
  using t = std::true_type;
  using n = std::false_type;
  if (mask) {
    if (jump)
      by_mode(t{}, t{});
    else
      by_mode(t{}, n{});
  } else {
    if (jump)
      by_mode(n{}, t{});
    else
      by_mode(n{}, n{});
  }
}

template <typename T>
struct ForwardRun {
  const SamplerPtrs<T>& p;
  T eta, clip;
  int64_t batch, n, mask_n;
  template <int MODE, bool MASK, bool JUMP, bool CLIP, bool NOISE>
  void run() const {
    sampler_forward_loop<T, MODE, MASK, JUMP, CLIP, NOISE>(p, eta, clip, batch, n, mask_n);
  }
};

template <typename T>
struct BackwardRun {
  const SamplerPtrs<T>& p;
  const T* grad;
  T *gx, *geps, *gknown;
  T eta, clip;
  int64_t batch, n, mask_n;
  template <int MODE, bool MASK, bool JUMP, bool CLIP, bool NOISE>
  void run() const {
    if constexpr (!NOISE)  // the noise is not read by the backward: one instantiation
      sampler_backward_loop<T, MODE, MASK, JUMP, CLIP>(p, grad, gx, geps, gknown, eta, clip, batch, n, mask_n);
  }
};

template <typename T>
void sampler_forward_kernel(const SamplerPtrs<T>& p, int mode, bool mask, bool jump, bool clip, bool noise, T eta,
                            T clip_value, int64_t batch, int64_t n, int64_t mask_n) {
  with_sampler_flags(mode, mask, jump, clip, noise, ForwardRun<T>{p, eta, clip_value, batch, n, mask_n});
}

template <typename T>
void sampler_backward_kernel(const SamplerPtrs<T>& p, const T* grad, T* gx, T* geps, T* gknown, int mode, bool mask,
                             bool jump, bool clip, T eta, T clip_value, int64_t batch, int64_t n, int64_t mask_n) {
  with_sampler_flags(mode, mask, jump, clip, false,
                     BackwardRun<T>{p, grad, gx, geps, gknown, eta, clip_value, batch, n, mask_n});
}
