// geopref/cuda/detail/arith.cuh — the pure arithmetic of the kernels.
//
// Everything here is GEOPREF_HD and free of CUDA types, so the host test
// (tests/cuda_host/test_cuda_helpers.cpp, compiled by the C++ compiler) checks the
// online softmax, the row partition and the split choice on the CPU.
#pragma once

#include <math.h>

#include <cstdint>

#include "geopref/config.hpp"

// #pragma unroll for code that the host compiler also sees (g++ warns on it).
#if defined(__CUDA_ARCH__)
#define GEOPREF_UNROLL _Pragma("unroll")
#else
#define GEOPREF_UNROLL
#endif

namespace geopref::cuda::detail {

inline constexpr float LOG2E = 1.4426950408889634f;

/// eˣ as 2^(x·log2 e): a single ex2 instruction on the device. x is always a
/// difference z − m ≤ 0 here, and the terms that matter have |x| ≲ 100, where
/// the rounding of x·log2 e costs at most ~1e-5 relative — below what the fp32
/// accumulation of a 10⁵-term sum already loses (see the tolerances in
/// tests/cuda/gpu_harness.cuh).
GEOPREF_HD_INLINE float exp_fast(float x) { return exp2f(x * LOG2E); }

// ---------------------------------------------------------------------------
// Online logsumexp.
//
// State (m, s) stands for the sum Σ exp(x_i) = s · eᵐ over the values seen so
// far; m is their maximum. The empty state is (−inf, 0). Rows whose entries
// are all −inf stay at (−inf, 0), and their lse is −inf, never NaN.

struct lse_state {
  float m;  // running maximum
  float s;  // Σ exp(x_i − m)
};

GEOPREF_HD_INLINE lse_state lse_empty() { return {-INFINITY, 0.0f}; }

/// The state of the union of two disjoint sets of values.
GEOPREF_HD_INLINE lse_state lse_merge(lse_state a, lse_state b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return lse_empty();  // both empty (or all −inf): avoid −inf − −inf
  return {m, a.s * exp_fast(a.m - m) + b.s * exp_fast(b.m - m)};
}

/// Adds W values: the maximum is taken over the whole vector first, so the
/// running sum is rescaled once per vector, not once per element.
template <int W>
GEOPREF_HD_INLINE lse_state lse_update(lse_state st, const float (&x)[W]) {
  float vm = x[0];
GEOPREF_UNROLL
  for (int i = 1; i < W; ++i) vm = fmaxf(vm, x[i]);
  const float m = fmaxf(st.m, vm);
  if (m == -INFINITY) return st;  // everything so far is −inf
  float s = st.s * exp_fast(st.m - m);
GEOPREF_UNROLL
  for (int i = 0; i < W; ++i) s += exp_fast(x[i] - m);
  return {m, s};
}

/// Adds one value (prologue and tail elements).
GEOPREF_HD_INLINE lse_state lse_update1(lse_state st, float x) {
  const float v[1] = {x};
  return lse_update<1>(st, v);
}

/// log Σ exp(x_i) = m + log s; −inf for the empty state.
GEOPREF_HD_INLINE float lse_finish(lse_state st) {
  if (st.m == -INFINITY) return -INFINITY;
  return st.m + logf(st.s);
}

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
// How many blocks share one row. Splitting only pays when there are too few
// rows to fill the GPU; the choice depends on the shape alone (not on the
// device or the pointers), so the workspace size is a function of the
// arguments and results are reproducible across calls.

inline constexpr int MAX_SPLITS = 64;          // gridDim.y, and partials per row
inline constexpr int64_t TARGET_BLOCKS = 2048;  // enough to fill an H100/H200 twice over
inline constexpr int64_t MIN_VECS_PER_SPLIT = 512;  // 2 vectors per thread of a 256-thread block

GEOPREF_HD_INLINE int choose_splits(int64_t n_rows, int64_t vocab, int elem_bytes) {
  if (n_rows <= 0 || n_rows >= TARGET_BLOCKS) return 1;
  const int64_t nvec = vocab / (16 / elem_bytes);
  int64_t k = (TARGET_BLOCKS + n_rows - 1) / n_rows;
  const int64_t by_work = nvec / MIN_VECS_PER_SPLIT;
  if (k > by_work) k = by_work;
  if (k > MAX_SPLITS) k = MAX_SPLITS;
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
