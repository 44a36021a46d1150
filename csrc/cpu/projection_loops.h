// The loops of the CPU projection kernels. Included twice by projection.cpp, inside
// namespaces `generic` and `avx2` (the latter under `#pragma GCC target("avx2")`), so the
// same source vectorises for plain x86-64 and for AVX2, picked at run time. No include
// guard on purpose; the includes it needs come before it in projection.cpp.
// (No FMA target: contracting (d + c*g)*f would change the rounding between machines.)

// Calls f(b, begin, end) on index ranges of the flattened [B, n] tensor that never
// straddle a sample, spread over the intra-op threads.
template <typename F>
void for_each_sample_chunk(int64_t batch, int64_t n, const F& f) {
  at::parallel_for(0, batch * n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / n;
      const int64_t stop = std::min(end, (b + 1) * n);
      f(b, i, stop);
      i = stop;
    }
  });
}

template <typename T>
void linf_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x, const T* eps, int64_t eps_stride,
                 const T* alpha, int64_t alpha_stride, T direction, int64_t batch, int64_t n) {
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    if (g != nullptr) {
      const T step = direction * alpha[b * alpha_stride];
      for (int64_t i = i0; i < i1; ++i) d[i] = linf_step(d[i], g[i], x[i], e, step);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = linf_ball_box(d[i], x[i], e);
    }
  });
}

// The l-inf step on the adversarial image (projection_math.h, linf_step_image).
template <typename T>
void linf_image_kernel(T* __restrict__ a, const T* __restrict__ g, const T* __restrict__ x, const T* eps,
                       int64_t eps_stride, const T* alpha, int64_t alpha_stride, T direction, int64_t batch,
                       int64_t n) {
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    const T step = direction * alpha[b * alpha_stride];
    for (int64_t i = i0; i < i1; ++i) a[i] = linf_step_image(a[i], g[i], x[i], e, step);
  });
}

// Largest magnitude of one sample's values (four independent maxima: not latency-bound).
template <typename T>
T max_abs(const T* __restrict__ a, int64_t n) {
  T m[4] = {T(0), T(0), T(0), T(0)};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) {
      const T v = std::abs(a[i + k]);
      m[k] = v > m[k] ? v : m[k];
    }
  for (; i < n; ++i) {
    const T v = std::abs(a[i]);
    m[0] = v > m[0] ? v : m[0];
  }
  const T m01 = m[0] > m[1] ? m[0] : m[1], m23 = m[2] > m[3] ? m[2] : m[3];
  return m01 > m23 ? m01 : m23;
}

// The per-sample sums the l2 and l1 steps need (projection_math.h, l2_factors): over
// s = g / gscale and u = d / dscale, with gscale = max|g| (1 when g = 0).
//   float data: one pass, max|g| and the sums of the unscaled values in double (float32
//     squares can neither overflow nor underflow there), rescaled afterwards; dscale = 1.
//   double data: a pass for the maxima, then the sums of the scaled values.
// Four independent accumulators in a fixed order: deterministic and not latency-bound.
struct SampleSums {
  double ss = 0, su = 0, uu = 0, l1 = 0;  // sum s^2, sum s u, sum u^2, sum |s|
  double gscale = 1, dscale = 1;
};

inline double scale_of(double vmax) { return vmax > 0.0 ? vmax : 1.0; }

// max|g| of 32-bit floats as an integer maximum of the bit patterns with the sign cleared:
// for finite values that order is the order of magnitudes, and an integer max vectorises
// where a floating-point one (NaN rules) does not.
template <typename T>
uint32_t max_magnitude_bits(const T* __restrict__ a, int64_t n, uint32_t m) {
  static_assert(sizeof(T) == sizeof(uint32_t), "for 32-bit floats");
  uint32_t acc[8] = {m, m, m, m, m, m, m, m};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      uint32_t u;
      std::memcpy(&u, a + i + k, sizeof(u));
      u &= 0x7fffffffu;
      acc[k] = u > acc[k] ? u : acc[k];
    }
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, a + i, sizeof(u));
    u &= 0x7fffffffu;
    acc[0] = u > acc[0] ? u : acc[0];
  }
  for (int k = 1; k < 8; ++k) acc[0] = acc[k] > acc[0] ? acc[k] : acc[0];
  return acc[0];
}

// float: {sum g^2, sum g d, sum d^2} in double and max|g|, in one pass over memory: each
// block of the sample is first scanned for the maximum, then summed while it is still in
// L1 (two simple loops vectorise; one loop doing both did not).
template <typename T>
SampleSums l2_sums_one_pass(const T* __restrict__ g, const T* __restrict__ d, int64_t n) {
  constexpr int64_t kBlock = 2048;
  double gg[4] = {0, 0, 0, 0}, gd[4] = {0, 0, 0, 0}, dd[4] = {0, 0, 0, 0};
  uint32_t mbits = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    const T* gb = g != nullptr ? g + b0 : nullptr;
    const T* db = d + b0;
    int64_t i = 0;
    if (gb != nullptr) {
      mbits = max_magnitude_bits(gb, len, mbits);
      for (; i + 4 <= len; i += 4)
        for (int k = 0; k < 4; ++k) {
          const double gv = gb[i + k], dv = db[i + k];
          gg[k] += gv * gv;
          gd[k] += gv * dv;
          dd[k] += dv * dv;
        }
      for (; i < len; ++i) {
        const double gv = gb[i], dv = db[i];
        gg[0] += gv * gv;
        gd[0] += gv * dv;
        dd[0] += dv * dv;
      }
    } else {
      for (; i + 4 <= len; i += 4)
        for (int k = 0; k < 4; ++k) dd[k] += static_cast<double>(db[i + k]) * db[i + k];
      for (; i < len; ++i) dd[0] += static_cast<double>(db[i]) * db[i];
    }
  }
  SampleSums r;
  T gmax;
  std::memcpy(&gmax, &mbits, sizeof(gmax));
  r.gscale = scale_of(static_cast<double>(gmax));
  r.ss = ((gg[0] + gg[1]) + (gg[2] + gg[3])) / (r.gscale * r.gscale);
  r.su = ((gd[0] + gd[1]) + (gd[2] + gd[3])) / r.gscale;
  r.uu = (dd[0] + dd[1]) + (dd[2] + dd[3]);
  return r;
}

// double: the maxima first, then the sums of g / gscale and d / dscale.
template <typename T>
SampleSums l2_sums_scaled(const T* __restrict__ g, const T* __restrict__ d, int64_t n) {
  SampleSums r;
  r.gscale = g != nullptr ? scale_of(max_abs(g, n)) : 1.0;
  r.dscale = scale_of(max_abs(d, n));
  const double gs = r.gscale, ds = r.dscale;
  double gg[4] = {0, 0, 0, 0}, gd[4] = {0, 0, 0, 0}, dd[4] = {0, 0, 0, 0};
  auto acc = [&](int k, int64_t i) {
    const double gv = g != nullptr ? g[i] / gs : 0.0, dv = d[i] / ds;
    gg[k] += gv * gv;
    gd[k] += gv * dv;
    dd[k] += dv * dv;
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc(k, i + k);
  for (; i < n; ++i) acc(0, i);
  r.ss = (gg[0] + gg[1]) + (gg[2] + gg[3]);
  r.su = (gd[0] + gd[1]) + (gd[2] + gd[3]);
  r.uu = (dd[0] + dd[1]) + (dd[2] + dd[3]);
  return r;
}

template <typename T>
SampleSums l2_sums(const T* g, const T* d, int64_t n) {
  if constexpr (sizeof(T) >= sizeof(double))
    return l2_sums_scaled(g, d, n);
  else
    return l2_sums_one_pass(g, d, n);
}

// {sum |g| / gscale, gscale}: float data in one pass over memory (blocked as in
// l2_sums_one_pass, the sum in double), double data in two.
template <typename T>
SampleSums l1_sums(const T* __restrict__ g, int64_t n) {
  SampleSums r;
  double acc[4] = {0, 0, 0, 0};
  auto sum_abs = [&](const T* a, int64_t len, double scale) {
    int64_t i = 0;
    for (; i + 4 <= len; i += 4)
      for (int k = 0; k < 4; ++k) acc[k] += std::abs(static_cast<double>(a[i + k])) / scale;
    for (; i < len; ++i) acc[0] += std::abs(static_cast<double>(a[i])) / scale;
  };
  if constexpr (sizeof(T) >= sizeof(double)) {
    r.gscale = scale_of(max_abs(g, n));
    sum_abs(g, n, r.gscale);
    r.l1 = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  } else {
    constexpr int64_t kBlock = 2048;
    uint32_t mbits = 0;
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
      const int64_t len = std::min(kBlock, n - b0);
      mbits = max_magnitude_bits(g + b0, len, mbits);
      sum_abs(g + b0, len, 1.0);
    }
    T gmax;
    std::memcpy(&gmax, &mbits, sizeof(gmax));
    r.gscale = scale_of(static_cast<double>(gmax));
    r.l1 = ((acc[0] + acc[1]) + (acc[2] + acc[3])) / r.gscale;
  }
  return r;
}

// The per-element factor k of `k * g` for a per-sample factor `num / gscale`: one multiply
// where k is a normal number of T (every case but extreme gradients), else a division by
// gscale then a multiply by num (exact range handling, slower).
template <typename T>
struct GradScale {
  T k;        // num / gscale, when `multiply`
  T num, gs;  // otherwise: (g / gs) * num
  bool multiply;
};

template <typename T>
GradScale<T> grad_scale(double num, double gscale) {
  GradScale<T> r;
  const double k = num / gscale, ak = k < 0 ? -k : k;
  r.multiply = k == 0.0 || (ak >= static_cast<double>(std::numeric_limits<T>::min()) &&
                            ak <= static_cast<double>(std::numeric_limits<T>::max()));
  r.k = r.multiply ? static_cast<T>(k) : T(0);
  r.num = static_cast<T>(num);
  r.gs = static_cast<T>(gscale);
  return r;
}

template <typename T>
void l2_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x, const T* eps, int64_t eps_stride,
               const T* alpha, int64_t alpha_stride, T direction, int64_t batch, int64_t n) {
  std::vector<T> f(batch);
  std::vector<GradScale<T>> gsc(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T e = eps[b * eps_stride];
      const SampleSums s = l2_sums<T>(g != nullptr ? g + b * n : nullptr, d + b * n, n);
      const T step = g != nullptr ? direction * alpha[b * alpha_stride] : T(0);
      const L2Factors<T> fac = l2_factors<T>(s.ss, s.su, s.uu, s.dscale, e, step);
      f[b] = fac.f;
      gsc[b] = grad_scale<T>(static_cast<double>(fac.c), s.gscale);
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T fb = f[b];
    const GradScale<T> q = gsc[b];
    if (g == nullptr) {
      for (int64_t i = i0; i < i1; ++i) d[i] = box(d[i] * fb, x[i]);
    } else if (q.multiply) {  // (d + c * g / gscale) * f
      for (int64_t i = i0; i < i1; ++i) d[i] = box((d[i] + q.k * g[i]) * fb, x[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = box((d[i] + q.num * (g[i] / q.gs)) * fb, x[i]);
    }
  });
}

// momentum <- mu * momentum + s / |s|_1 with s = g / max|g| (0 where g = 0), then the
// l-inf step on the momentum.
template <typename T>
void mi_fgsm_kernel(T* __restrict__ d, T* __restrict__ m, const T* __restrict__ g, const T* __restrict__ x,
                    const T* eps, int64_t eps_stride, const T* alpha, int64_t alpha_stride, T mu, T direction,
                    int64_t batch, int64_t n) {
  std::vector<GradScale<T>> gsc(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const SampleSums s = l1_sums(g + b * n, n);
      // g / (gscale * l1) = k * g; l1 = 0 only for g = 0: no step (k = 0)
      gsc[b] = s.l1 > 0 ? grad_scale<T>(1.0 / s.l1, s.gscale) : grad_scale<T>(0.0, 1.0);
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    const T step = direction * alpha[b * alpha_stride];
    const GradScale<T> q = gsc[b];
    if (q.multiply) {
      for (int64_t i = i0; i < i1; ++i) {
        const T mv = mu * m[i] + q.k * g[i];
        m[i] = mv;
        d[i] = linf_step(d[i], mv, x[i], e, step);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        const T mv = mu * m[i] + q.num * (g[i] / q.gs);
        m[i] = mv;
        d[i] = linf_step(d[i], mv, x[i], e, step);
      }
    }
  });
}
