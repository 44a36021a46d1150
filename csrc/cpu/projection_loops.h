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

// Sums over one sample: out = {sum g*g, sum g*d, sum d*d}. Four independent
// accumulators in a fixed order: deterministic and not latency-bound.
template <typename T>
void dot3(const T* __restrict__ g, const T* __restrict__ d, int64_t n, double out[3]) {
  double gg[4] = {0, 0, 0, 0}, gd[4] = {0, 0, 0, 0}, dd[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double gv = g[i + k], dv = d[i + k];
      gg[k] += gv * gv;
      gd[k] += gv * dv;
      dd[k] += dv * dv;
    }
  }
  for (; i < n; ++i) {
    const double gv = g[i], dv = d[i];
    gg[0] += gv * gv;
    gd[0] += gv * dv;
    dd[0] += dv * dv;
  }
  out[0] = (gg[0] + gg[1]) + (gg[2] + gg[3]);
  out[1] = (gd[0] + gd[1]) + (gd[2] + gd[3]);
  out[2] = (dd[0] + dd[1]) + (dd[2] + dd[3]);
}

template <typename T>
double sum_sq(const T* __restrict__ a, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += static_cast<double>(a[i + k]) * a[i + k];
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]) * a[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename T>
double sum_abs(const T* __restrict__ a, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += std::abs(static_cast<double>(a[i + k]));
  for (; i < n; ++i) acc[0] += std::abs(static_cast<double>(a[i]));
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <typename T>
void l2_kernel(T* __restrict__ d, const T* __restrict__ g, const T* __restrict__ x, const T* eps,
               int64_t eps_stride, const T* alpha, int64_t alpha_stride, T direction,
               int64_t batch, int64_t n) {
  std::vector<L2Factors<T>> fac(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T e = eps[b * eps_stride];
      if (g != nullptr) {
        double s[3];
        dot3(g + b * n, d + b * n, n, s);
        fac[b] = l2_factors<T>(s[0], s[1], s[2], e, direction * alpha[b * alpha_stride]);
      } else {
        fac[b] = L2Factors<T>{T(0), l2_project_factor<T>(sum_sq(d + b * n, n), e)};
      }
    }
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T c = fac[b].c, f = fac[b].f;
    if (g != nullptr) {
      for (int64_t i = i0; i < i1; ++i) d[i] = box((d[i] + c * g[i]) * f, x[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) d[i] = box(d[i] * f, x[i]);
    }
  });
}

template <typename T>
void mi_fgsm_kernel(T* __restrict__ d, T* __restrict__ m, const T* __restrict__ g,
                    const T* __restrict__ x, const T* eps, int64_t eps_stride, const T* alpha,
                    int64_t alpha_stride, T mu, T direction, int64_t batch, int64_t n) {
  std::vector<T> l1(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) l1[b] = static_cast<T>(sum_abs(g + b * n, n));
  });
  for_each_sample_chunk(batch, n, [&](int64_t b, int64_t i0, int64_t i1) {
    const T e = eps[b * eps_stride];
    const T step = direction * alpha[b * alpha_stride];
    const T norm = l1[b];
    for (int64_t i = i0; i < i1; ++i) {
      const T gn = norm > T(0) ? g[i] / norm : T(0);
      const T mv = mu * m[i] + gn;
      m[i] = mv;
      d[i] = linf_step(d[i], mv, x[i], e, step);
    }
  });
}
