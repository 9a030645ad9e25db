// geopref/cuda/detail/arith.cuh — the pure arithmetic of the kernels.
//
// Everything here is GEOPREF_HD and free of CUDA types, so the host test
// (tests/cuda_host/test_cuda_helpers.cpp, compiled by the C++ compiler) checks the
// online softmax, the row partition and the split choice on the CPU.
#pragma once

#include <math.h>
#include <string.h>

#include <cstdint>
#include <type_traits>

#include "geopref/config.hpp"


namespace geopref::cuda::detail {

inline constexpr float LOG2E = 1.4426950408889634f;
inline constexpr float LN2 = 0.6931471805599453f;

/// A float as uint32_t with the same bits or back: the intrinsics (a
/// register move) on the device, memcpy on the host (C++17 has no bit_cast).
template <class To, class From>
GEOPREF_HD_INLINE To same_bits(From x) {
  static_assert((std::is_same_v<To, uint32_t> && std::is_same_v<From, float>) ||
                    (std::is_same_v<To, float> && std::is_same_v<From, uint32_t>),
                "float <-> uint32_t only");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<To, uint32_t>) return __float_as_uint(x);
  else return __uint_as_float(x);
#else
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
#endif
}

/// The bits of a float and back (a register move on the device).
GEOPREF_HD_INLINE uint32_t float_bits(float x) { return same_bits<uint32_t>(x); }
GEOPREF_HD_INLINE float bits_float(uint32_t u) { return same_bits<float>(u); }

/// 2ˣ by the MUFU's ex2.approx.ftz, written out in PTX so that a consumer's
/// -ftz / --use_fast_math changes no bit of the result. Its error is 2 ulp
/// (PTX ISA); results below 2⁻¹²⁶ are flushed to +0, which the host version
/// (the emulator, the host tests) does too.
GEOPREF_HD_INLINE float ex2_ftz(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = exp2f(x);
  return y < 1.1754943508222875e-38f ? 0.0f : y;  // NaN stays NaN
#endif
}

/// eˣ as 2^(x·log₂e) (the scalar paths and merges; the hot loops fold the
/// log₂e into one FFMA with a pre-scaled subtrahend).
GEOPREF_HD_INLINE float exp_fast(float x) { return ex2_ftz(x * LOG2E); }

/// 2ᵈ for an integer-valued d ≤ 0, exactly and without the MUFU: d + 127 is
/// placed in the low mantissa bits of 2²³ + 127 + d and shifted into the
/// exponent field. d < −126 (also −inf and NaN, which fmaxf turns into −127)
/// gives +0.
GEOPREF_HD_INLINE float exp2_int(float d) {
  return bits_float(float_bits(fmaxf(d, -127.0f) + 8388735.0f) << 23);
}

// ---------------------------------------------------------------------------
// Online logsumexp, in base 2.
//
// With y_i = x_i·log₂e, state (m, s) stands for Σ 2^(y_i) = s · 2ᵐ over the
// values seen so far. m is integer-valued and only rises (to ⌈max y⌉) when a
// larger value arrives, so the rescale of s is an exact power of two made
// without an exp (exp2_int), and each value costs one FFMA (y − m), one ex2
// and one add. The empty state is (−FLT_MAX, 0): m stays finite, so no −inf −
// −inf is ever formed; a row whose entries are all −inf ends with s = 0 and
// lse = −inf. NaN and +inf are never dropped: a NaN value makes s NaN (its
// FFMA and ex2 are NaN; the maximum's fmaxf ignores it, which is harmless
// since s already carries it); +inf raises m to +inf and its own term is
// +inf − +inf = NaN. A NaN s survives every merge (NaN · 0 is NaN), so the
// row's lse is NaN (docs/math.md). Finite logits must stay below 2.3·10³⁸ in
// magnitude (x·log₂e must be finite).

struct lse_state {
  float m;  // integer-valued, >= ⌈max y_i⌉ once a finite value was seen
  float s;  // Σ 2^(y_i − m)
};

GEOPREF_HD_INLINE lse_state lse_empty() { return {-3.4028234663852886e38f, 0.0f}; }

/// Raises m to ⌈ymax⌉ when that is larger (NaN never raises).
GEOPREF_HD_INLINE lse_state lse_raise(lse_state st, float ymax) {
  const float m = ceilf(ymax);
  if (m > st.m) {
    st.s *= exp2_int(st.m - m);
    st.m = m;
  }
  return st;
}

/// The state of the union of two disjoint sets of values.
GEOPREF_HD_INLINE lse_state lse_merge(lse_state a, lse_state b) {
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * exp2_int(a.m - m) + b.s * exp2_int(b.m - m)};
}

/// Adds W values: the state is raised once for the whole vector, then each
/// value is one FFMA, one ex2 and one add.
template <int W>
GEOPREF_HD_INLINE lse_state lse_update(lse_state st, const float (&x)[W]) {
  float vm = x[0];
GEOPREF_UNROLL
  for (int i = 1; i < W; ++i) vm = fmaxf(vm, x[i]);
  st = lse_raise(st, vm * LOG2E);
  float s = 0.0f;
GEOPREF_UNROLL
  for (int i = 0; i < W; ++i) s += ex2_ftz(fmaf(x[i], LOG2E, -st.m));
  st.s += s;
  return st;
}

/// Adds one value (prologue and tail elements).
GEOPREF_HD_INLINE lse_state lse_update1(lse_state st, float x) {
  const float v[1] = {x};
  return lse_update<1>(st, v);
}

/// log Σ exp(x_i) = (m + log₂ s)·ln 2; −inf for the empty state (s = 0), NaN
/// when s is.
GEOPREF_HD_INLINE float lse_finish(lse_state st) {
  if (st.s == 0.0f) return -INFINITY;
  return (st.m + log2f(st.s)) * LN2;
}

// ---------------------------------------------------------------------------
// The logit transform z' = c·tanh(s·z/c)/T (c = 0: s·z/T; options.hpp), as
// the three maps the logits kernels are instantiated with. Each gives, for a
// raw logit z (already widened to float):
//   value(z)             z'
//   log2(z)              z'·log₂e, or an estimate of it, for the running
//                        maximum only (every map is increasing, so the
//                        maximum of z' is the map of the maximum of z: the
//                        packed 16-bit max still works). The online
//                        logsumexp below is exact for any m that keeps its
//                        terms inside float's range, so the soft-cap's
//                        estimate (within 0.043·c/T of z'·log₂e) costs no
//                        accuracy and saves the hot loop a MUFU per group
//   exp2_arg(z, neg_m)   z'·log₂e + neg_m, the argument of the softmax's ex2
//   coef(g)              g·s/T, the row's gradient coefficient (once per row)
//   grad(z, coef, neg_l) coef·(∂z'/∂z)/(s/T)·2^exp2_arg(z, neg_l): the
//                        gradient of a non-label column
//   label_grad(z, g, l)  g·∂z'/∂z·expm1(z' − l): the label column's, without
//                        the cancellation of 1 − p as p → 1
// identity_map is exactly the untransformed arithmetic (its instantiations
// compile to the same SASS as before the transform existed).

struct identity_map {
  static constexpr bool SOFTCAP = false;
  GEOPREF_HD_INLINE float value(float z) const { return z; }
  GEOPREF_HD_INLINE float log2(float z) const { return z * LOG2E; }
  GEOPREF_HD_INLINE float exp2_arg(float z, float neg_m) const { return fmaf(z, LOG2E, neg_m); }
  GEOPREF_HD_INLINE float coef(float g) const { return g; }
  GEOPREF_HD_INLINE float grad(float z, float coef, float neg_l) const {
    return coef * ex2_ftz(exp2_arg(z, neg_l));
  }
  GEOPREF_HD_INLINE float label_grad(float z, float g, float l) const { return g * expm1f(z - l); }
  GEOPREF_HD_INLINE float grad2(float z, float c0, float c1, float neg_l) const {
    const float a = exp2_arg(z, neg_l);
    return fmaf(c1, fmaxf(a, -256.0f), c0) * ex2_ftz(a);
  }
};

/// z' = a·z, a = s/T: the same instruction count as the identity (log₂e is
/// folded into one pre-scaled constant).
struct scale_map {
  static constexpr bool SOFTCAP = false;
  float a = 1.0f;        // s/T
  float a_log2e = LOG2E;  // s/T·log₂e
  GEOPREF_HD_INLINE float value(float z) const { return a * z; }
  GEOPREF_HD_INLINE float log2(float z) const { return z * a_log2e; }
  GEOPREF_HD_INLINE float exp2_arg(float z, float neg_m) const { return fmaf(z, a_log2e, neg_m); }
  GEOPREF_HD_INLINE float coef(float g) const { return g * a; }
  GEOPREF_HD_INLINE float grad(float z, float coef, float neg_l) const {
    return coef * ex2_ftz(exp2_arg(z, neg_l));
  }
  GEOPREF_HD_INLINE float label_grad(float z, float g, float l) const {
    return g * a * expm1f(a * z - l);
  }
  GEOPREF_HD_INLINE float grad2(float z, float c0, float c1, float neg_l) const {
    const float x = exp2_arg(z, neg_l);
    return fmaf(c1, fmaxf(x, -256.0f), c0) * ex2_ftz(x);
  }
};

/// tanh for the soft-cap. FAST: the MUFU's tanh.approx.f32 (one instruction;
/// relative error about 2⁻¹¹ per the PTX ISA, which is below the rounding of
/// a bfloat16 logit, 2⁻⁹, and equal to a half's, 2⁻¹¹: used for 16-bit
/// logits, where it keeps the forward at two MUFU per element). Otherwise
/// tanhf (a few ulp; float logits, whose own rounding is 2⁻²⁴). The host
/// version (emulator, host tests) is tanhf for both.
template <bool FAST>
GEOPREF_HD_INLINE float softcap_tanh(float x) {
#if defined(__CUDA_ARCH__)
  if constexpr (FAST) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
#endif
  return tanhf(x);
}

/// tanh within 0.03 without the MUFU, for the running maximum's estimate:
/// sign(x)·|x|(1 − 0.255|x|) up to the parabola's top (|x| = 1.96, value
/// 0.98), 0.98 beyond; non-decreasing, NaN for NaN. (Its largest error,
/// 0.0295, was found by a scan of [0, 8] in steps of 10⁻³; tanh is within
/// 0.005 of 1 past 3.)
GEOPREF_HD_INLINE float tanh_rough(float x) {
  const float a = fminf(fabsf(x), 1.9607843f);
  return copysignf(fmaf(-0.255f * a, a, a), x);
}

/// z' = k·tanh(u·z), u = s/c, k = c/T; ∂z'/∂z = (s/T)(1 − tanh²).
template <bool FAST>
struct softcap_map {
  static constexpr bool SOFTCAP = true;
  float u = 1.0f;           // s/c
  float k = 1.0f;           // c/T
  float k_log2e = LOG2E;    // c/T·log₂e
  float slope = 1.0f;       // s/T
  GEOPREF_HD_INLINE float value(float z) const { return k * softcap_tanh<FAST>(u * z); }
  // An estimate (tanh_rough): |error| ≤ 0.03·k·log₂e, which no row notices:
  // an m that far above the maximum leaves the top terms at 2^−0.043k, far
  // from float's 2⁻¹²⁶ for any cap a model uses; that far below, the V
  // terms sum to at most V·2^0.043k, far from 2¹²⁸.
  GEOPREF_HD_INLINE float log2(float z) const { return tanh_rough(u * z) * k_log2e; }
  GEOPREF_HD_INLINE float exp2_arg(float z, float neg_m) const {
    return fmaf(softcap_tanh<FAST>(u * z), k_log2e, neg_m);
  }
  GEOPREF_HD_INLINE float coef(float g) const { return g * slope; }
  GEOPREF_HD_INLINE float grad(float z, float coef, float neg_l) const {
    const float th = softcap_tanh<FAST>(u * z);
    return coef * fmaf(-th, th, 1.0f) * ex2_ftz(fmaf(th, k_log2e, neg_l));
  }
  GEOPREF_HD_INLINE float label_grad(float z, float g, float l) const {
    const float th = softcap_tanh<FAST>(u * z);
    return g * slope * fmaf(-th, th, 1.0f) * expm1f(k * th - l);
  }
  GEOPREF_HD_INLINE float grad2(float z, float c0, float c1, float neg_l) const {
    const float th = softcap_tanh<FAST>(u * z);
    const float x = fmaf(th, k_log2e, neg_l);
    return fmaf(c1, fmaxf(x, -256.0f), c0) * fmaf(-th, th, 1.0f) * ex2_ftz(x);
  }
};

/// The backward with an upstream gradient e_t of the entropy H_t as well as
/// g_t of the log-prob (docs/math.md, "The per-token primitive"):
///   ∂/∂z′_v = −p_v (g_t + e_t H_t + e_t ln 2 · a_v) + g_t 𝟙[v = y_t],
/// a_v = (z′_v − lse_t)·log₂e, through Map's slope. backward_kernel calls
/// at_row(t) once per row (Map::ENTROPY), which reads e_t and H_t and forms
/// c0 = coef(−(g_t + e_t H_t)), c1 = coef(−e_t ln 2); each element is then one
/// FFMA more than Map::grad. The label column adds the entropy's term,
/// grad2(z_y, coef(−e_t H_t), c1), to Map's label_grad. A column with p = 0
/// gives 0 (a is raised to −256 first, where ex2 is already 0).
template <class Map>
struct with_entropy {
  static constexpr bool SOFTCAP = Map::SOFTCAP;
  Map base;
  const float* egrad = nullptr;    // [N] e_t, checked (0 for unscored rows)
  const float* entropy = nullptr;  // [N] H_t, the forward's
  float c1 = 0.0f, ce = 0.0f, eh = 0.0f;
  GEOPREF_HD_INLINE void at_row(int64_t t) {
    const float e = egrad[t];
    eh = e * entropy[t];
    c1 = base.coef(-e * LN2);
    ce = base.coef(-eh);
  }
  GEOPREF_HD_INLINE float coef(float neg_g) const { return base.coef(neg_g - eh); }
  GEOPREF_HD_INLINE float grad(float z, float coef, float neg_l) const {
    return base.grad2(z, coef, c1, neg_l);
  }
  GEOPREF_HD_INLINE float label_grad(float z, float g, float l) const {
    return base.label_grad(z, g, l) + base.grad2(z, ce, c1, -(l * LOG2E));
  }
};

template <class Map>
struct has_entropy_upstream : std::false_type {};
template <class Map>
struct has_entropy_upstream<with_entropy<Map>> : std::true_type {};

// ---------------------------------------------------------------------------
// Row partition.
//
// A row of V elements starting at byte address `addr` is read as a scalar
// prologue [0, pro) up to the first 16-byte boundary, a body of `nvec`
// 16-byte vectors of W = 16 / elem_bytes elements, and a scalar tail
// [tail, V). This handles any row stride and any base alignment (the address
// only has to be a multiple of the element size).

struct row_span {
  int64_t pro;   // elements before the first aligned vector
  int64_t nvec;  // aligned 16-byte vectors
  int64_t tail;  // first element after the vectors; the tail is [tail, V)
};

GEOPREF_HD_INLINE row_span partition_row(uint64_t addr, int64_t vocab, int elem_bytes) {
  const int64_t w = 16 / elem_bytes;
  const int64_t mis = static_cast<int64_t>(addr % 16u);
  int64_t pro = mis == 0 ? 0 : (16 - mis) / elem_bytes;
  if (pro > vocab) pro = vocab;
  const int64_t nvec = (vocab - pro) / w;
  return {pro, nvec, pro + nvec * w};
}

/// The vectors [begin, end) that split j of k handles; the split owning
/// nothing gets begin == end. Split 0 also handles the prologue, split k − 1
/// the tail.
struct vec_range {
  int64_t begin, end;
};

GEOPREF_HD_INLINE vec_range split_range(int64_t nvec, int j, int k) {
  const int64_t per = (nvec + k - 1) / k;
  int64_t b = per * j, e = b + per;
  if (b > nvec) b = nvec;
  if (e > nvec) e = nvec;
  return {b, e};
}

/// The columns [begin, end) that split j of k covers, prologue and tail
/// included; the k ranges tile [0, V) in order.
GEOPREF_HD_INLINE vec_range split_columns(row_span sp, int64_t vocab, int elem_bytes, int j,
                                          int k) {
  const int64_t w = 16 / elem_bytes;
  const vec_range v = split_range(sp.nvec, j, k);
  return {j == 0 ? 0 : sp.pro + v.begin * w, j == k - 1 ? vocab : sp.pro + v.end * w};
}

// ---------------------------------------------------------------------------
// How many blocks share one row. Every row is cut into chunks of at most
// CHUNK_VECS 16-byte vectors (64 KiB of logits), whatever N: the grid then
// holds many blocks of equal, modest work, so the last wave of a kernel is a
// small share of it for any N (one block per long row left up to a third of
// a wave idle for an unlucky N). Few rows are cut finer still, to fill the
// GPU. The choice depends on the shape alone (never on the device or the
// pointers): the workspace size is a function of the arguments, and the
// partial states are merged in split order (combine_kernel), so results are
// bitwise identical across runs and across cards with any SM count.

inline constexpr int MAX_SPLITS = 64;               // gridDim.y, and partials per row
inline constexpr int64_t CHUNK_VECS = 4096;         // 16 vectors per thread of a 256-thread block
inline constexpr int64_t TARGET_BLOCKS = 2048;      // enough to fill an H100/H200 twice over
inline constexpr int64_t MIN_VECS_PER_SPLIT = 512;  // 2 vectors per thread of a 256-thread block

GEOPREF_HD_INLINE int choose_splits(int64_t n_rows, int64_t vocab, int elem_bytes) {
  if (n_rows <= 0) return 1;
  const int64_t nvec = vocab / (16 / elem_bytes);
  int64_t k = (nvec + CHUNK_VECS - 1) / CHUNK_VECS;  // fixed-size chunks, for every N
  if (n_rows < TARGET_BLOCKS) {                       // and finer when there are few rows
    int64_t fill = (TARGET_BLOCKS + n_rows - 1) / n_rows;
    const int64_t by_work = nvec / MIN_VECS_PER_SPLIT;
    if (fill > by_work) fill = by_work;
    if (fill > k) k = fill;
  }
  if (k > MAX_SPLITS) k = MAX_SPLITS;  // beyond 64 · 4096 vectors (2M bf16) chunks grow
  return k < 1 ? 1 : static_cast<int>(k);
}

// ---------------------------------------------------------------------------
// Pair and sequence index helpers.

/// The row's sequence by binary search in canonical offsets [S + 1]: the last
/// s with offsets[s] <= t. Always in [0, S − 1] (S >= 1) even for offsets that
/// failed validation, so no caller can index out of bounds.
GEOPREF_HD_INLINE int64_t find_sequence(const int64_t* offsets, int64_t n_seqs, int64_t t) {
  int64_t lo = 0, hi = n_seqs;  // first k in [1, S] with offsets[k] > t lies in (lo, hi]
  while (lo + 1 < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

/// Clamps v into [lo, hi].
GEOPREF_HD_INLINE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

}  // namespace geopref::cuda::detail
