// The loops of the CPU MINE kernels. Included twice by mine.cpp (namespaces `generic` and
// `avx2`); no include guard on purpose.
//
// Notation (docs/algorithms.md §3): u = U + b1 and v = V are [B, H] row-major, w = w2
// [H]; the critic score without its bias b2 is T_ij = sum_h w_h act(u_ih + v_jh). Nothing
// B x B (let alone B x B x H) is stored: a row (or column) of T lives in a scratch vector
// of B numbers, recomputed by the backward. The inner loops run over h with LANES
// independent accumulators, the form gcc vectorises without reassociating sums.

// The activations (Relu, Elu, Softplus; each with ::type = T) are in ../common/mine_math.h.

constexpr int kLanes = 16;

// out[r] = sum_h w[h] * act(u[r H + h] + b[h]) for R rows of u (u: the first row, rows H
// apart): each chunk of b is loaded once for all R rows (the forward takes R = kRowBlock:
// 1 + 1 / R loads per pair-h instead of 2). Each sum is formed the same way whatever R.
constexpr int kRowBlock = 4;

template <typename Act, int R, typename T = typename Act::type>
void critic_scores(const T* __restrict__ u, const T* __restrict__ b, const T* __restrict__ w, int64_t H,
                   T* __restrict__ out) {
  T acc[R][kLanes] = {};
  int64_t h = 0;
  for (; h + kLanes <= H; h += kLanes)
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < kLanes; ++k) acc[r][k] += w[h + k] * Act::f(u[r * H + h + k] + b[h + k]);
  for (int r = 0; r < R; ++r) {
    T s = T(0);
    for (int k = 0; k < kLanes; ++k) s += acc[r][k];
    for (int64_t t = h; t < H; ++t) s += w[t] * Act::f(u[r * H + t] + b[t]);
    out[r] = s;
  }
}

// sum_h w[h] * act(a[h] + b[h]), in critic_scores' order. Not critic_scores<Act, 1>: gcc
// does not vectorise that instantiation, and the backward, which scores one pair at a time,
// ran 4x slower through it (1024 x 128: 265 against 64 ms on one thread).
template <typename Act, typename T = typename Act::type>
T critic_score(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w, int64_t H) {
  T acc[kLanes] = {};
  int64_t h = 0;
  for (; h + kLanes <= H; h += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += w[h + k] * Act::f(a[h + k] + b[h + k]);
  T s = T(0);
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  for (; h < H; ++h) s += w[h] * Act::f(a[h] + b[h]);
  return s;
}

// log sum_j exp(t[j]) over the n entries of t (entries of -inf are left out). float: the
// branch-free exp (mine_math.h, ~2 ulp) in 8 double lanes, which vectorises (libm's exp per
// entry took half the forward's time); an entry of -inf adds exp(-87), 1e-38 of the sum.
template <typename T>
T log_sum_exp(const T* t, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, t[j]);
  if (m == -std::numeric_limits<T>::infinity()) return m;
  double s = 0.0;
  if constexpr (std::is_same_v<T, float>) {
    double acc[8] = {};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(exp_branchless(t[j + k] - m));
    for (; j < n; ++j) acc[0] += static_cast<double>(exp_branchless(t[j] - m));
    s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  } else {
    for (int64_t j = 0; j < n; ++j) s += std::exp(static_cast<double>(t[j] - m));
  }
  return m + static_cast<T>(std::log(s));
}

// lse[i] = log sum_{j (!= i when exclude_diag)} exp(T_ij) for rows [i0, i1).
template <typename Act, typename T = typename Act::type>
void row_lse(const T* u, const T* v, const T* w, int64_t B, int64_t H, bool exclude_diag, int64_t i0, int64_t i1,
             T* lse, std::vector<T>& row) {
  row.resize(kRowBlock * B);
  int64_t i = i0;
  for (; i + kRowBlock <= i1; i += kRowBlock) {  // kRowBlock rows at a time
    T t[kRowBlock];
    for (int64_t j = 0; j < B; ++j) {
      critic_scores<Act, kRowBlock>(u + i * H, v + j * H, w, H, t);
      for (int r = 0; r < kRowBlock; ++r) row[r * B + j] = t[r];
    }
    for (int r = 0; r < kRowBlock; ++r) {
      T* ri = row.data() + r * B;
      if (exclude_diag) ri[i + r] = -std::numeric_limits<T>::infinity();
      lse[i + r] = log_sum_exp(ri, B);
    }
  }
  for (; i < i1; ++i) {
    const T* ui = u + i * H;
    for (int64_t j = 0; j < B; ++j) row[j] = critic_score<Act>(ui, v + j * H, w, H);
    if (exclude_diag) row[i] = -std::numeric_limits<T>::infinity();
    lse[i] = log_sum_exp(row.data(), B);
  }
}

// p[k] = g * exp(t[k] - l): the softmax weight of pair k times the upstream gradient.
template <typename T>
void softmax_weights(T* t, int64_t n, T g, T l) {
  for (int64_t k = 0; k < n; ++k) t[k] = g * std::exp(t[k] - l);
}

// acc_d[h] += p * act'(a[h] + b[h]); acc_f[h] += p * act(a[h] + b[h]) (when acc_f is given).
template <typename Act, typename T = typename Act::type>
void accumulate(const T* __restrict__ a, const T* __restrict__ b, T p, int64_t H, T* __restrict__ acc_d,
                T* __restrict__ acc_f) {
  if (acc_f != nullptr) {
    for (int64_t h = 0; h < H; ++h) {
      const T z = a[h] + b[h];
      acc_d[h] += p * Act::df(z);
      acc_f[h] += p * Act::f(z);
    }
  } else {
    for (int64_t h = 0; h < H; ++h) acc_d[h] += p * Act::df(a[h] + b[h]);
  }
}

// Rows [i0, i1) of the backward: with p_ij = g_i exp(T_ij - lse_i),
//   gu[i, h]  = w_h sum_j p_ij act'(u_ih + v_jh)
//   gwr[i, h] =     sum_j p_ij act(u_ih + v_jh)      (summed over i afterwards: d/dw)
template <typename Act, typename T = typename Act::type>
void row_grads(const T* u, const T* v, const T* w, const T* g, const T* lse, int64_t B, int64_t H, bool exclude_diag,
               int64_t i0, int64_t i1, T* gu, T* gwr, std::vector<T>& row) {
  row.resize(B);
  for (int64_t i = i0; i < i1; ++i) {
    const T* ui = u + i * H;
    T* gui = gu + i * H;
    T* gwi = gwr + i * H;
    std::fill(gui, gui + H, T(0));
    std::fill(gwi, gwi + H, T(0));
    if (g[i] == T(0)) continue;
    for (int64_t j = 0; j < B; ++j) row[j] = critic_score<Act>(ui, v + j * H, w, H);
    softmax_weights(row.data(), B, g[i], lse[i]);
    if (exclude_diag) row[i] = T(0);
    for (int64_t j = 0; j < B; ++j)
      if (row[j] != T(0)) accumulate<Act>(ui, v + j * H, row[j], H, gui, gwi);
    for (int64_t h = 0; h < H; ++h) gui[h] *= w[h];
  }
}

// Columns [j0, j1) of the backward: gv[j, h] = w_h sum_i p_ij act'(u_ih + v_jh).
template <typename Act, typename T = typename Act::type>
void column_grads(const T* u, const T* v, const T* w, const T* g, const T* lse, int64_t B, int64_t H, bool exclude_diag,
                  int64_t j0, int64_t j1, T* gv, std::vector<T>& col) {
  col.resize(B);
  for (int64_t j = j0; j < j1; ++j) {
    const T* vj = v + j * H;
    T* gvj = gv + j * H;
    std::fill(gvj, gvj + H, T(0));
    for (int64_t i = 0; i < B; ++i)
      col[i] = g[i] == T(0) ? T(0) : g[i] * std::exp(critic_score<Act>(u + i * H, vj, w, H) - lse[i]);
    if (exclude_diag) col[j] = T(0);
    for (int64_t i = 0; i < B; ++i)
      if (col[i] != T(0)) accumulate<Act>(u + i * H, vj, col[i], H, gvj, static_cast<T*>(nullptr));
    for (int64_t h = 0; h < H; ++h) gvj[h] *= w[h];
  }
}

// ---------------------------------------------------------------------------------------
// The ReLU forward in two instructions per pair and hidden unit (the CUDA kernels' form,
// docs/kernels.md). With a = |w| u and c = -|w| v, |w| relu(u + v) = max(a, c) - c, so
//   T_ij = sum_{w_h > 0} max(a_ih, c_jh) - sum_{w_h < 0} max(a_ih, c_jh) + k_j,
//   k_j  = sum_h w_h v_jh:
// a max and an add (or subtract) per pair-h, where the plain form needs an add, a max and
// a multiply-add. The glue (mine.cpp) lays a and c out as rows of hp values, the units with
// w_h > 0 first, then those with w_h < 0 (units with w_h = 0 dropped), each group
// zero-padded to a whole number of kReluLanes (max(0, 0) adds nothing); a is padded to a
// whole number of kReluRows rows and c to a whole number of kReluCols rows, so every block
// is full. A block keeps kReluRows x kReluCols pairs' accumulators in registers: per
// chunk of hp it loads kReluRows + kReluCols vectors for kReluRows x kReluCols pairs.
// Each pair's sum is formed the same way in every block: the results do not depend on how
// rows are split over threads.
constexpr int kReluRows = 4, kReluCols = 2, kReluLanes = 8;

// Vectors of kVecBytes (one AVX2 register in the AVX2 build, one SSE register in the
// generic one; gcc's vector extension), kReluLanes / lanes of them per chunk of hp.
constexpr int kVecBytes = MIGA_FAST_ISA_AVX2 ? 32 : 16;

template <typename T>
struct ReluVec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int lanes = kVecBytes / static_cast<int>(sizeof(T));
  static constexpr int sub = kReluLanes / lanes;
};

template <typename T>
inline __attribute__((always_inline)) typename ReluVec<T>::type load_lanes(const T* p) {
  typename ReluVec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// sign = +1: acc += max(a, c) over [h0, h1); -1: acc -= max(a, c).
template <typename T, int Sign>
inline __attribute__((always_inline)) void relu_block_range(
    const T* __restrict__ a, const T* __restrict__ c, int64_t hp, int64_t h0, int64_t h1,
    typename ReluVec<T>::type (&acc)[kReluRows][kReluCols][ReluVec<T>::sub]) {
  using V = typename ReluVec<T>::type;
  constexpr int L = ReluVec<T>::lanes, S = ReluVec<T>::sub;
  for (int64_t h = h0; h < h1; h += kReluLanes) {
    V y[kReluCols][S];
    for (int q = 0; q < kReluCols; ++q)
      for (int s = 0; s < S; ++s) y[q][s] = load_lanes(c + q * hp + h + s * L);
    for (int r = 0; r < kReluRows; ++r)
      for (int s = 0; s < S; ++s) {
        const V x = load_lanes(a + r * hp + h + s * L);
        for (int q = 0; q < kReluCols; ++q) {
          const V m = x > y[q][s] ? x : y[q][s];
          if constexpr (Sign > 0)
            acc[r][q][s] += m;
          else
            acc[r][q][s] -= m;
        }
      }
  }
}

template <typename T>
void relu_block_scores(const T* __restrict__ a, const T* __restrict__ c, int64_t hp, int64_t np,
                       T out[kReluRows][kReluCols]) {
  using V = typename ReluVec<T>::type;
  constexpr int L = ReluVec<T>::lanes, S = ReluVec<T>::sub;
  V acc[kReluRows][kReluCols][S] = {};
  relu_block_range<T, 1>(a, c, hp, 0, np, acc);    // the units of w > 0 add,
  relu_block_range<T, -1>(a, c, hp, np, hp, acc);  // those of w < 0 subtract
  for (int r = 0; r < kReluRows; ++r)
    for (int q = 0; q < kReluCols; ++q) {
      T l[kReluLanes];
      for (int s = 0; s < S; ++s)
        for (int k = 0; k < L; ++k) l[s * L + k] = acc[r][q][s][k];
      out[r][q] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
}

// lse[i] for the rows of row blocks [blk0, blk1) (rows i < B only): a [Bp, hp], c [Bc, hp],
// k [Bc]; row: scratch of kReluRows * Bc.
template <typename T>
void row_lse_relu(const T* a, const T* c, const T* k, int64_t B, int64_t Bc, int64_t hp, int64_t np, bool exclude_diag,
                  int64_t blk0, int64_t blk1, T* lse, std::vector<T>& row) {
  static_assert(kReluLanes == 8, "the lane reduction above sums 8 lanes");
  row.resize(kReluRows * Bc);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t i = blk * kReluRows;
    for (int64_t j = 0; j < Bc; j += kReluCols) {
      T t[kReluRows][kReluCols];
      relu_block_scores(a + i * hp, c + j * hp, hp, np, t);
      for (int r = 0; r < kReluRows; ++r)
        for (int q = 0; q < kReluCols; ++q) row[r * Bc + j + q] = t[r][q] + k[j + q];
    }
    for (int r = 0; r < kReluRows && i + r < B; ++r) {
      T* ri = row.data() + r * Bc;
      if (exclude_diag) ri[i + r] = -std::numeric_limits<T>::infinity();
      lse[i + r] = log_sum_exp(ri, B);
    }
  }
}
