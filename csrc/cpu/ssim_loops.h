// The loops of the CPU SSIM kernels, one (b, c) plane at a time. Included twice by
// ssim.cpp (namespaces `generic` and `avx2`); no include guard on purpose.
//
// A plane is zero-padded by `pad` (0 for "valid", win/2 for "same") into hp x wp; every
// blur is then a "valid" separable pass (ho = hp - k + 1, wo = wp - k + 1). All inner
// loops are small functions with __restrict__ arguments (axpy, multiply, the per-pixel
// maps), the form gcc reliably vectorises. The value-and-gradient pass forms, from one set
// of moments, four per-pixel partial maps and applies the transposed blur to them.

// Zero-padded copy of an h x w plane into hp x wp.
template <typename T>
void pad_plane(const T* src, int64_t h, int64_t w, int64_t pad, T* dst) {
  const int64_t wp = w + 2 * pad;
  std::fill(dst, dst + (h + 2 * pad) * wp, T(0));
  for (int64_t i = 0; i < h; ++i) std::copy(src + i * w, src + (i + 1) * w, dst + (i + pad) * wp + pad);
}

// out[i] += a * in[i]: the building block of every blur pass.
template <typename T>
void axpy(const T* __restrict__ in, T a, int64_t n, T* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] += a * in[i];
}

// out[i] += a * (in1[i] + in2[i]): two taps of a symmetric window at the cost of one.
template <typename T>
void axpy2(const T* __restrict__ in1, const T* __restrict__ in2, T a, int64_t n, T* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] += a * (in1[i] + in2[i]);
}

// out[o] += sum_t g[t] * in[o + t * stride] for o < n, pairing the symmetric taps
// t and k-1-t (the Gaussian window is symmetric).
template <typename T>
void taps(const T* in, int64_t stride, const T* g, int k, int64_t n, T* out) {
  for (int t = 0; t < k / 2; ++t) axpy2(in + t * stride, in + (k - 1 - t) * stride, g[t], n, out);
  axpy(in + (k / 2) * stride, g[k / 2], n, out);
}

template <typename T>
void multiply(const T* __restrict__ a, const T* __restrict__ b, int64_t n, T* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

// "Valid" separable blur of an hp x wp plane into ho x wo; `tmp` holds hp * wo values.
template <typename T>
void blur_valid(const T* in, int64_t hp, int64_t wp, const T* g, int k, T* out, T* tmp) {
  const int64_t wo = wp - k + 1, ho = hp - k + 1;
  std::fill(tmp, tmp + hp * wo, T(0));
  for (int64_t r = 0; r < hp; ++r) taps(in + r * wp, 1, g, k, wo, tmp + r * wo);
  std::fill(out, out + ho * wo, T(0));
  for (int64_t r = 0; r < ho; ++r) taps(tmp + r * wo, wo, g, k, wo, out + r * wo);
}

// Transposed "valid" separable blur: an ho x wo map into hp x wp. For a symmetric window
// it is the "valid" blur of the map zero-padded by k - 1 (gather form, paired taps).
// `padded` holds (ho + 2k - 2) * (wo + 2k - 2) values, `tmp` (ho + 2k - 2) * (wo + k - 1).
template <typename T>
void blur_transpose(const T* p, int64_t ho, int64_t wo, const T* g, int k, T* out, T* padded, T* tmp) {
  pad_plane(p, ho, wo, k - 1, padded);
  blur_valid(padded, ho + 2 * (k - 1), wo + 2 * (k - 1), g, k, out, tmp);
}

// The five blurred moments of padded planes xp, yp: m[0..4] = mu_x, mu_y, E[x^2], E[y^2],
// E[xy], each ho x wo. `prod` holds 3 * hp * wp values, `tmp` hp * wo.
template <typename T>
void blurred_moments(const T* xp, const T* yp, int64_t hp, int64_t wp, const T* g, int k, T* m, T* prod, T* tmp) {
  const int64_t ps = hp * wp, ms = (hp - k + 1) * (wp - k + 1);
  multiply(xp, xp, ps, prod);
  multiply(yp, yp, ps, prod + ps);
  multiply(xp, yp, ps, prod + 2 * ps);
  const T* planes[5] = {xp, yp, prod, prod + ps, prod + 2 * ps};
  for (int q = 0; q < 5; ++q) blur_valid(planes[q], hp, wp, g, k, m + q * ms, tmp);
}

// The SSIM map from the raw moments m[0..4] (each ms values).
template <typename T>
void ssim_map(const T* __restrict__ mx, const T* __restrict__ my, const T* __restrict__ exx, const T* __restrict__ eyy,
              const T* __restrict__ exy, int64_t ms, T c1, T c2, T lum, T* __restrict__ out) {
  for (int64_t i = 0; i < ms; ++i) out[i] = ssim_pixel(mx[i], my[i], exx[i], eyy[i], exy[i], c1, c2, lum).s;
}

// The four partial maps of the backward, scaled by the upstream gradient gs
// (common/ssim_math.h: ssim_partials).
template <typename T>
void ssim_partial_maps(const T* __restrict__ mxp, const T* __restrict__ myp, const T* __restrict__ exx,
                       const T* __restrict__ eyy, const T* __restrict__ exy, int64_t ms, T c1, T c2, T lum, T gs,
                       T* __restrict__ pmx, T* __restrict__ pmy, T* __restrict__ psq, T* __restrict__ pxy) {
  for (int64_t i = 0; i < ms; ++i) {
    const T mx = mxp[i], my = myp[i];
    const SsimPartials<T> p = ssim_partials(ssim_pixel(mx, my, exx[i], eyy[i], exy[i], c1, c2, lum), mx, my, gs);
    pmx[i] = p.mx;
    pmy[i] = p.my;
    psq[i] = p.sq;
    pxy[i] = p.xy;
  }
}

// gx = B'[dmu_x] + 2 x B'[dE[x^2]] + y B'[dE[xy]] on one row, and symmetrically gy.
template <typename T>
void combine_row(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ bmx, const T* __restrict__ bmy,
                 const T* __restrict__ bsq, const T* __restrict__ bxy, int64_t w, T* __restrict__ gx,
                 T* __restrict__ gy) {
  for (int64_t j = 0; j < w; ++j) {
    gx[j] = bmx[j] + T(2) * x[j] * bsq[j] + y[j] * bxy[j];
    gy[j] = bmy[j] + T(2) * y[j] * bsq[j] + x[j] * bxy[j];
  }
}

// Scratch layout of one plane: padded x, y, the three products, a blur row buffer, the
// five moments, then `extra` more ho x wo maps.
template <typename T>
struct PlaneBuffers {
  int64_t hp, wp, ho, wo, ps, ms;
  T *xp, *yp, *prod, *tmp, *m, *extra;

  PlaneBuffers(const T* x, const T* y, int64_t h, int64_t w, int64_t pad, int k, int64_t n_extra,
               std::vector<T>& scratch) {
    hp = h + 2 * pad;
    wp = w + 2 * pad;
    ho = hp - k + 1;
    wo = wp - k + 1;
    ps = hp * wp;
    ms = ho * wo;
    scratch.resize(5 * ps + hp * wo + 5 * ms + n_extra);
    xp = scratch.data();
    yp = xp + ps;
    prod = yp + ps;
    tmp = prod + 3 * ps;
    m = tmp + hp * wo;
    extra = m + 5 * ms;
    pad_plane(x, h, w, pad, xp);
    pad_plane(y, h, w, pad, yp);
  }
};

// Forward of one plane: the sum of its SSIM map (double).
template <typename T>
double ssim_plane_forward(const T* x, const T* y, int64_t h, int64_t w, int64_t pad, const T* g, int k, T c1, T c2,
                          T lum, std::vector<T>& scratch) {
  const int64_t ms_est = (h + 2 * pad - k + 1) * (w + 2 * pad - k + 1);
  PlaneBuffers<T> b(x, y, h, w, pad, k, ms_est, scratch);
  blurred_moments(b.xp, b.yp, b.hp, b.wp, g, k, b.m, b.prod, b.tmp);
  const int64_t ms = b.ms;
  ssim_map(b.m, b.m + ms, b.m + 2 * ms, b.m + 3 * ms, b.m + 4 * ms, ms, c1, c2, lum, b.extra);
  double sum = 0.0;
  for (int64_t i = 0; i < ms; ++i) sum += b.extra[i];
  return sum;
}

// Value and gradient of one plane in one pass over its moments: returns the SSIM-map sum
// (double) and writes gx, gy (h x w), the gradients of `gs` times that sum.
template <typename T>
double ssim_plane_value_and_grad(const T* x, const T* y, int64_t h, int64_t w, int64_t pad, const T* g, int k, T c1,
                                 T c2, T lum, T gs, T* gx, T* gy, std::vector<T>& scratch) {
  const int64_t hp = h + 2 * pad, wp = w + 2 * pad;
  const int64_t ho = hp - k + 1, wo = wp - k + 1, ms_est = ho * wo;
  const int64_t pad_size = (ho + 2 * k - 2) * (wo + 2 * k - 2), tmp_size = (ho + 2 * k - 2) * wp;
  PlaneBuffers<T> b(x, y, h, w, pad, k, 5 * ms_est + 4 * hp * wp + pad_size + tmp_size, scratch);
  blurred_moments(b.xp, b.yp, b.hp, b.wp, g, k, b.m, b.prod, b.tmp);
  const int64_t ms = b.ms, ps = b.ps;
  T* smap = b.extra + 4 * ms + 4 * ps + pad_size + tmp_size;
  ssim_map(b.m, b.m + ms, b.m + 2 * ms, b.m + 3 * ms, b.m + 4 * ms, ms, c1, c2, lum, smap);
  double sum = 0.0;
  for (int64_t i = 0; i < ms; ++i) sum += smap[i];
  T* part = b.extra;  // d/dmu_x, d/dmu_y, d/dE[x^2] (= d/dE[y^2]), d/dE[xy]
  T* back = part + 4 * ms;
  T* padded = back + 4 * ps;
  T* tmp2 = padded + pad_size;
  ssim_partial_maps(b.m, b.m + ms, b.m + 2 * ms, b.m + 3 * ms, b.m + 4 * ms, ms, c1, c2, lum, gs, part, part + ms,
                    part + 2 * ms, part + 3 * ms);
  for (int q = 0; q < 4; ++q) blur_transpose(part + q * ms, b.ho, b.wo, g, k, back + q * ps, padded, tmp2);
  for (int64_t i = 0; i < h; ++i) {
    const int64_t r = (i + pad) * wp + pad;
    combine_row(x + i * w, y + i * w, back + r, back + ps + r, back + 2 * ps + r, back + 3 * ps + r, w, gx + i * w,
                gy + i * w);
  }
  return sum;
}

// ---------------------------------------------------------------- the SSIM ball

// The ball moments of one plane in double: mu_x, mu_d, var_x, var_d, cov_xd (each ho x wo,
// written to m). x, d are one h x w plane of x and delta (any float type).
template <typename S>
void ball_plane_moments(const S* x, const S* d, int64_t h, int64_t w, int64_t pad, const double* g, int k, double* m,
                        std::vector<double>& scratch) {
  std::vector<double> xs(x, x + h * w), ds(d, d + h * w);
  PlaneBuffers<double> b(xs.data(), ds.data(), h, w, pad, k, 0, scratch);
  blurred_moments(b.xp, b.yp, b.hp, b.wp, g, k, b.m, b.prod, b.tmp);
  const int64_t ms = b.ms;
  const double *mx = b.m, *md = b.m + ms, *exx = b.m + 2 * ms, *edd = b.m + 3 * ms, *exd = b.m + 4 * ms;
  for (int64_t i = 0; i < ms; ++i) {
    m[i] = mx[i];
    m[ms + i] = md[i];
    m[2 * ms + i] = exx[i] - mx[i] * mx[i];
    m[3 * ms + i] = edd[i] - md[i] * md[i];
    m[4 * ms + i] = exd[i] - mx[i] * md[i];
  }
}

// acc[q] += sum over the ms pixels of SSIM(x, x + t[q] delta) for the nt candidates t
// (common/ssim_math.h: ssim_at_scale; reference/ssim.py: ssim_at_scales).
inline void ball_ssim_sums(const double* m, int64_t ms, const double* t, int nt, double c1, double c2, double* acc) {
  const double *mu_x = m, *mu_d = m + ms, *var_x = m + 2 * ms, *var_d = m + 3 * ms, *cov = m + 4 * ms;
  for (int64_t i = 0; i < ms; ++i) {
    const double mx = mu_x[i], md = mu_d[i], vx = var_x[i], vd = var_d[i], cv = cov[i];
    for (int q = 0; q < nt; ++q) acc[q] += ssim_at_scale(mx, md, vx, vd, cv, t[q], c1, c2);
  }
}

// One window of a plane as csrc/common/window_ball.h's solver reads it: rows y0..y1,
// columns x0..x1 of an h x w plane (row stride w), sums in row-major order.
template <typename T>
struct PlaneWindow {
  T* d;
  const T* x;
  int64_t w, y0, y1, x0, x1;
  int64_t count() const { return (y1 - y0) * (x1 - x0); }
  template <typename F>
  T sum(F f) const {
    T acc = 0;
    for (int64_t i = y0; i < y1; ++i)
      for (int64_t j = x0; j < x1; ++j) acc += f(x[i * w + j], d[i * w + j]);
    return acc;
  }
  template <typename F>
  WinPair<T> sum2(F f) const {
    WinPair<T> acc{0, 0};
    for (int64_t i = y0; i < y1; ++i)
      for (int64_t j = x0; j < x1; ++j) {
        const WinPair<T> v = f(x[i * w + j], d[i * w + j]);
        acc.a += v.a;
        acc.b += v.b;
      }
    return acc;
  }
  template <typename F>
  void store(F f) const {
    for (int64_t i = y0; i < y1; ++i)
      for (int64_t j = x0; j < x1; ++j) d[i * w + j] = f(x[i * w + j], d[i * w + j]);
  }
};

// The window ball of one plane (reference/ssim.py: window_ball_project_): per
// non-overlapping win x win window (edge windows smaller), the exact projection of delta
// onto the window's structural-SSIM ball intersected with the box x + delta in [0, 1]
// (csrc/common/window_ball.h).
template <typename T>
void window_ball_plane(T* d, const T* x, int64_t h, int64_t w, int64_t win, T a, T c_pixel) {
  for (int64_t y0 = 0; y0 < h; y0 += win)
    for (int64_t x0 = 0; x0 < w; x0 += win)
      window_ball_solve<T>(PlaneWindow<T>{d, x, w, y0, std::min(h, y0 + win), x0, std::min(w, x0 + win)}, a, c_pixel);
}
