// geopref/cuda/detail/token_kernels.cuh — the kernels only the per-token
// primitive (token_logps, token_logps_grad) adds. Its forward and backward
// over the logits are forward_kernel (→ combine_kernel) and backward_kernel
// of kernels.cuh, the ones train_step runs:
//
//   token_rows_kernel  labels (int32/int64) → column [N], −1 for unscored
//                      rows (no sequences: every row with a label in [0, V)
//                      is scored); validates labels; with an upstream
//                      gradient also g_t [N], checked (0 for unscored rows)
//   stats_kernel       H_t = Σ_v p_tv (lse_t − z_tv) from the lse of the
//                      forward, one block per scored row (optional output);
//                      with STATS also log Σ p², the mean logit and top-1
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/cuda/detail/device.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

/// Per row: the label column (−1 for ignore_index or an invalid label, which
/// is also recorded as label_out_of_range). `egrad_in` (the entropy's
/// upstream, optional) is checked on scored rows. When `grad_in` is set, the
/// backward's coefficient row_grad[t] = grad_in[t] for scored rows (read for
/// those only; NaN or ±inf is recorded as invalid_upstream_grad and counts as
/// 0) and 0 for unscored rows.
template <class Label, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    token_rows_kernel(const Label* __restrict__ labels, int64_t n_rows, int64_t vocab,
                      int64_t ignore_index, const float* __restrict__ grad_in,
                      int32_t* __restrict__ cols, float* __restrict__ row_grad,
                      int* __restrict__ flag, const float* __restrict__ egrad_in) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    int32_t c = -1;
    const auto y = static_cast<int64_t>(labels[t]);
    if (y != ignore_index) {
      if (y < 0 || y >= vocab) record(flag, status::label_out_of_range);
      else c = static_cast<int32_t>(y);
    }
    cols[t] = c;
    if (grad_in != nullptr) {
      float g = c >= 0 ? grad_in[t] : 0.0f;
      if (!isfinite(g)) {
        record(flag, status::invalid_upstream_grad);
        g = 0.0f;
      }
      row_grad[t] = g;
    }
    // The entropy's upstream is only checked here (the backward reads the
    // caller's e_t, so a bad one leaves that row's gradient unspecified, as
    // every device-side error leaves the outputs).
    if (egrad_in != nullptr && c >= 0 && !isfinite(egrad_in[t]))
      record(flag, status::invalid_upstream_grad);
  }
}

/// The optional per-token outputs of the second read (each [N], null: not
/// written; 0 for unscored rows).
struct token_stats_out {
  float* entropy = nullptr;           // H_t
  float* log_sum_sq_probs = nullptr;  // log Σ_v p_tv²
  float* mean_logits = nullptr;       // (1/V) Σ_v z′_tv
  uint8_t* is_top1 = nullptr;         // 1: y_t is the row's first arg-max of z
};

/// min, for the top-1 key.
struct min_of {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

/// grid (N), BLOCK_SIZE threads: the entropy of row t's softmax,
///   H_t = −Σ_v p_v log p_v = Σ_v p_v (lse_t − z_v),  p_v = exp(z_v − lse_t),
/// a second read of the row (only when the caller asks for entropies). In
/// base 2, as the forward: with a_v = z_v·log₂e − lse_t·log₂e (one FFMA),
/// p_v = 2^a_v and H_t = −ln 2 · Σ_v p_v a_v, so each element is one FFMA,
/// one ex2, one max and one FFMA. A column with p_v = 0 (z = −∞, or below
/// ex2's range) adds exactly 0: a_v is raised to −FLT_MAX first, so the term
/// is 0·(−FLT_MAX), never 0·∞. A NaN p (NaN logits, or a non-finite lse_t)
/// keeps H_t NaN. Each thread adds in float, the block in double, in a fixed
/// order: deterministic. Unscored rows get 0, their logits are not read.
/// With a logit transform (`map`, arith.cuh) it is the entropy of softmax(z'):
/// a_v = map.exp2_arg(z_v, −lse_t·log₂e).
///
/// STATS adds, from the same read, TRL 1.x's per-token statistics
/// (docs/math.md, "The per-token primitive"):
///   log Σ_v p_v² = ln(Σ_v p_v·p_v)            one FFMA per element
///   (1/V) Σ_v z′_v = (ln 2 · Σ_v a_v)/V + lse_t   one FADD (a_v = (z′_v − lse_t)·log₂e)
///   is_top1: y_t is the first arg-max of z     a key per thread, the smallest
///     1 + v with z_v = z_y, forced to 0 by any z_v > z_y or NaN (absorbing
///     under min); top-1 iff the block's minimum is 1 + y_t
/// Without STATS the kernel is the entropy pass alone (the same SASS as
/// before the statistics: docs/benchmarks.md, "Static cost").
template <class T, class Map, bool STATS, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    stats_kernel(const T* __restrict__ logits, int64_t ld, int64_t vocab,
                 const int32_t* __restrict__ cols, const float* __restrict__ lse,
                 token_stats_out out, Map map) {
  constexpr int W = vec_width<T>::value;
  constexpr int U = FWD_UNROLL;
  constexpr int ELEM = static_cast<int>(sizeof(T));
  __shared__ double smem[BLOCK_SIZE / 32];
  const int64_t t = blockIdx.x;
  const int32_t c = cols[t];
  if (c < 0) {  // uniform over the block
    if (threadIdx.x == 0) {
      if (out.entropy != nullptr) out.entropy[t] = 0.0f;
      if constexpr (STATS) {
        if (out.log_sum_sq_probs != nullptr) out.log_sum_sq_probs[t] = 0.0f;
        if (out.mean_logits != nullptr) out.mean_logits[t] = 0.0f;
        if (out.is_top1 != nullptr) out.is_top1[t] = 0;
      }
    }
    return;
  }
  const T* row = logits + t * ld;
  const float l = lse[t];
  const float neg_l2 = -(l * LOG2E);
  float acc = 0.0f;   // Σ p·a
  float sq = 0.0f;    // Σ p² (STATS)
  float sa = 0.0f;    // Σ a (STATS)
  int key = 0x7fffffff;  // top-1 key (STATS); 1 + v fits: V <= 2^31 − 1
  float zy = 0.0f;
  if constexpr (STATS) zy = to_float(row[c]);  // the same address for every thread
  // acc += p·a, with a ≥ −FLT_MAX so that p = 0 gives 0 (fmaxf drops a NaN a,
  // but then p is NaN too).
  auto add = [&](float z, int v) {
    const float a = map.exp2_arg(z, neg_l2);
    const float p = ex2_ftz(a);
    acc = fmaf(p, fmaxf(a, -3.4028234663852886e38f), acc);
    if constexpr (STATS) {
      sq = fmaf(p, p, sq);
      sa += a;
      const int k = !(z <= zy) ? 0 : (z == zy ? v + 1 : key);
      key = k < key ? k : key;
    }
  };
  const row_span sp = partition_row(reinterpret_cast<uint64_t>(row), vocab, ELEM);
  const auto* body = reinterpret_cast<const uint4*>(row + sp.pro);  // 16-byte aligned
  int64_t q = threadIdx.x;
  for (; q + (U - 1) * BLOCK_SIZE < sp.nvec; q += U * BLOCK_SIZE) {
    uint4 buf[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) buf[u] = load_once(body + q + u * BLOCK_SIZE);
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) {
      float x[W];
      unpack<T>(buf[u], x);
      const int v0 = static_cast<int>(sp.pro + (q + u * BLOCK_SIZE) * W);
GEOPREF_UNROLL
      for (int e = 0; e < W; ++e) add(x[e], v0 + e);
    }
  }
GEOPREF_NO_UNROLL
  for (; q < sp.nvec; q += BLOCK_SIZE) {
    float x[W];
    unpack<T>(load_once(body + q), x);
    const int v0 = static_cast<int>(sp.pro + q * W);
GEOPREF_UNROLL
    for (int e = 0; e < W; ++e) add(x[e], v0 + e);
  }
  for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE)
    add(to_float(row[i]), static_cast<int>(i));
  for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE)
    add(to_float(row[i]), static_cast<int>(i));
  const double h = block_reduce<BLOCK_SIZE>(static_cast<double>(acc), plus{}, 0.0, smem);
  if (threadIdx.x == 0 && out.entropy != nullptr)
    out.entropy[t] = static_cast<float>(-static_cast<double>(LN2) * h);
  if constexpr (STATS) {
    const double q2 = block_reduce<BLOCK_SIZE>(static_cast<double>(sq), plus{}, 0.0, smem);
    const double a_sum = block_reduce<BLOCK_SIZE>(static_cast<double>(sa), plus{}, 0.0, smem);
    const long long k = block_reduce<BLOCK_SIZE>(static_cast<long long>(key), min_of{},
                                                 0x7fffffffLL, reinterpret_cast<long long*>(smem));
    if (threadIdx.x == 0) {
      if (out.log_sum_sq_probs != nullptr) out.log_sum_sq_probs[t] = static_cast<float>(log(q2));
      if (out.mean_logits != nullptr)
        out.mean_logits[t] = static_cast<float>(static_cast<double>(LN2) * a_sum /
                                                    static_cast<double>(vocab) +
                                                static_cast<double>(l));
      if (out.is_top1 != nullptr) out.is_top1[t] = k == static_cast<long long>(c) + 1 ? 1 : 0;
    }
  }
}

}  // namespace geopref::cuda::detail
