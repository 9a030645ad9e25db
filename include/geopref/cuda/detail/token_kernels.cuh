// geopref/cuda/detail/token_kernels.cuh — the kernels only the per-token
// primitive (token_logps, token_logps_grad) adds. Its forward and backward
// over the logits are forward_kernel (→ combine_kernel) and backward_kernel
// of kernels.cuh, the ones train_step runs:
//
//   token_rows_kernel  labels (int32/int64) → column [N], −1 for unscored
//                      rows (no sequences: every row with a label in [0, V)
//                      is scored); validates labels; with an upstream
//                      gradient also g_t [N], checked (0 for unscored rows)
//   entropy_kernel     H_t = Σ_v p_tv (lse_t − z_tv) from the lse of the
//                      forward, one block per scored row (optional output)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/cuda/detail/device.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

/// Per row: the label column (−1 for ignore_index or an invalid label, which
/// is also recorded as label_out_of_range). When `grad_in` is set, the
/// backward's coefficient row_grad[t] = grad_in[t] for scored rows (read for
/// those only; NaN or ±inf is recorded as invalid_upstream_grad and counts as
/// 0) and 0 for unscored rows.
template <class Label, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    token_rows_kernel(const Label* __restrict__ labels, int64_t n_rows, int64_t vocab,
                      int64_t ignore_index, const float* __restrict__ grad_in,
                      int32_t* __restrict__ cols, float* __restrict__ row_grad,
                      int* __restrict__ flag) {
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
  }
}

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
template <class T, class Map, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    entropy_kernel(const T* __restrict__ logits, int64_t ld, int64_t vocab,
                   const int32_t* __restrict__ cols, const float* __restrict__ lse,
                   float* __restrict__ entropy, Map map) {
  constexpr int W = vec_width<T>::value;
  constexpr int U = FWD_UNROLL;
  constexpr int ELEM = static_cast<int>(sizeof(T));
  __shared__ double smem[BLOCK_SIZE / 32];
  const int64_t t = blockIdx.x;
  if (cols[t] < 0) {  // uniform over the block
    if (threadIdx.x == 0) entropy[t] = 0.0f;
    return;
  }
  const T* row = logits + t * ld;
  const float l = lse[t];
  const float neg_l2 = -(l * LOG2E);
  // acc += p·a, with a ≥ −FLT_MAX so that p = 0 gives 0 (fmaxf drops a NaN a,
  // but then p is NaN too).
  auto add = [&](float acc, float z) {
    const float a = map.exp2_arg(z, neg_l2);
    return fmaf(ex2_ftz(a), fmaxf(a, -3.4028234663852886e38f), acc);
  };
  const row_span sp = partition_row(reinterpret_cast<uint64_t>(row), vocab, ELEM);
  const auto* body = reinterpret_cast<const uint4*>(row + sp.pro);  // 16-byte aligned
  float acc = 0.0f;
  int64_t q = threadIdx.x;
  for (; q + (U - 1) * BLOCK_SIZE < sp.nvec; q += U * BLOCK_SIZE) {
    uint4 buf[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) buf[u] = load_once(body + q + u * BLOCK_SIZE);
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) {
      float x[W];
      unpack<T>(buf[u], x);
GEOPREF_UNROLL
      for (int e = 0; e < W; ++e) acc = add(acc, x[e]);
    }
  }
GEOPREF_NO_UNROLL
  for (; q < sp.nvec; q += BLOCK_SIZE) {
    float x[W];
    unpack<T>(load_once(body + q), x);
GEOPREF_UNROLL
    for (int e = 0; e < W; ++e) acc = add(acc, x[e]);
  }
  for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE) acc = add(acc, to_float(row[i]));
  for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE) acc = add(acc, to_float(row[i]));
  const double h = block_reduce<BLOCK_SIZE>(static_cast<double>(acc), plus{}, 0.0, smem);
  if (threadIdx.x == 0) entropy[t] = static_cast<float>(-static_cast<double>(LN2) * h);
}

}  // namespace geopref::cuda::detail
