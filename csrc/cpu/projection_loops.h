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
void linf_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x,
                 const T* eps, int64_t eps_stride, const T* alpha, int64_t alpha_stride,
                 T direction, int64_t batch, int64_t n) {
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
//   float data: one pass, the sums of the unscaled values in double (float32 squares
//     can neither overflow nor underflow there), rescaled afterwards; dscale = 1.
//   double data: a pass for the maxima, then the sums of the scaled values.
// Four independent accumulators in a fixed order: deterministic and not latency-bound.
struct SampleSums {
  double ss = 0, su = 0, uu = 0, l1 = 0;  // sum s^2, sum s u, sum u^2, sum |s|
  double gscale = 1, dscale = 1;
};

template <typename T, bool WANT_D, bool WANT_L1>
SampleSums sample_sums(const T* __restrict__ g, const T* __restrict__ d, int64_t n) {
  SampleSums r;
  double gg[4] = {0, 0, 0, 0}, gd[4] = {0, 0, 0, 0}, dd[4] = {0, 0, 0, 0}, ga[4] = {0, 0, 0, 0};
  const bool has_g = g != nullptr;
  // Scales: float data needs none in double; double data divides by its maxima.
  constexpr bool kScaled = sizeof(T) >= sizeof(double);
  double gs = 1.0, ds = 1.0;
  T gmax = T(0);
  if (has_g) gmax = max_abs(g, n);
  if (kScaled) {
    gs = static_cast<double>(safe_scale(gmax));
    if (WANT_D) ds = static_cast<double>(safe_scale(max_abs(d, n)));
  }
  auto acc = [&](int k, int64_t i) {
    const double gv = has_g ? static_cast<double>(g[i]) / gs : 0.0;
    if (WANT_L1) ga[k] += std::abs(gv);
    if (WANT_D) {
      const double dv = static_cast<double>(d[i]) / ds;
      gg[k] += gv * gv;
      gd[k] += gv * dv;
      dd[k] += dv * dv;
    }
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc(k, i + k);
  for (; i < n; ++i) acc(0, i);
  const double sgg = (gg[0] + gg[1]) + (gg[2] + gg[3]);
  const double sgd = (gd[0] + gd[1]) + (gd[2] + gd[3]);
  r.uu = (dd[0] + dd[1]) + (dd[2] + dd[3]);
  const double sga = (ga[0] + ga[1]) + (ga[2] + ga[3]);
  r.gscale = static_cast<double>(safe_scale(gmax));
  r.dscale = ds;
  if (kScaled) {
    r.ss = sgg;
    r.su = sgd;
    r.l1 = sga;
  } else {  // rescale the unscaled double sums
    r.ss = sgg / (r.gscale * r.gscale);
    r.su = sgd / r.gscale;
    r.l1 = sga / r.gscale;
  }
  return r;
}

template <typename T>
void l2_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x, const T* eps,
               int64_t eps_stride, const T* alpha, int64_t alpha_stride, T direction,
               int64_t batch, int64_t n) {
  std::vector<L2Factors<T>> fac(batch);
  std::vector<T> gscale(batch, T(1));
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T e = eps[b * eps_stride];
      const SampleSums s = sample_sums<T, true, false>(g != nullptr ? g + b * n : nullptr, d + b * n, n);
      const T step = g != nullptr ? direction * alpha[b * alpha_stride] : T(0);
      fac[b] = l2_factors<T>(s.ss, s.su, s.uu, s.dscale, e, step);
      gscale[b] = static_cast<T>(s.gscale);
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T c = fac[b].c, f = fac[b].f, gs = gscale[b];
    if (g != nullptr) {
      for (int64_t i = i0; i < i1; ++i) d[i] = box((d[i] + c * (g[i] / gs)) * f, x[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = box(d[i] * f, x[i]);
    }
  });
}

// momentum <- mu * momentum + s / |s|_1 with s = g / max|g| (0 where g = 0), then the
// l-inf step on the momentum.
template <typename T>
void mi_fgsm_kernel(T* __restrict__ d, T* __restrict__ m, const T* __restrict__ g,
                    const T* __restrict__ x, const T* eps, int64_t eps_stride, const T* alpha,
                    int64_t alpha_stride, T mu, T direction, int64_t batch, int64_t n) {
  std::vector<T> l1(batch), gscale(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const SampleSums s = sample_sums<T, false, true>(g + b * n, nullptr, n);
      l1[b] = static_cast<T>(s.l1);
      gscale[b] = static_cast<T>(s.gscale);
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    const T step = direction * alpha[b * alpha_stride];
    const T norm = l1[b], gs = gscale[b];
    for (int64_t i = i0; i < i1; ++i) {
      const T gn = norm > T(0) ? (g[i] / gs) / norm : T(0);
      const T mv = mu * m[i] + gn;
      m[i] = mv;
      d[i] = linf_step(d[i], mv, x[i], e, step);
    }
  });
}
