// geopref/cuda/detail/row_forward.cuh — the fused forward over token rows as
// every entry enqueues it: forward_kernel on an (N, splits) grid, then, when a
// row is split, combine_kernel merging its partial states in split order
// (kernels.cuh documents both). The launch sequence is written once here so
// that the split protocol (who writes lse and ℓ_t) cannot drift between the
// entries that run it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/detail/device.cuh"
#include "geopref/cuda/detail/dispatch.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

/// combine_kernel over `rows` rows whose states forward_kernel left in
/// partials [rows, splits]; nothing to do with one split (forward_kernel then
/// wrote lse and ℓ_t itself). cols, lse, token_logp: [rows].
inline status enqueue_combine(const lse_state* partials, int splits, int64_t rows,
                              const int32_t* cols, float* lse, float* token_logp,
                              cudaStream_t stream) {
  if (splits <= 1) return status::success;
  launch(combine_kernel<BLOCK>, grid_1d(rows), BLOCK, stream, partials, splits, rows, cols, lse,
         token_logp);
  return last_launch() == status::success ? status::success : status::cuda_error;
}

/// The forward over `rows` rows of z [rows, ld] (V = vocab columns read):
/// forward_kernel, then enqueue_combine. Writes lse and ℓ_t [rows]; cols [rows]
/// is enqueue_rows' label column (−1: unscored); partials holds rows·splits
/// states when splits > 1.
template <class T>
inline status enqueue_row_forward(const T* z, int64_t ld, int64_t vocab,
                                  const logit_transform& transform, int64_t rows, int splits,
                                  const int32_t* cols, float* lse, float* token_logp,
                                  lse_state* partials, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  const status st = visit_map<T>(transform, [&](auto map) {
    launch(forward_kernel<T, decltype(map), BLOCK>, grid, BLOCK, stream, z, ld, vocab, cols, lse,
           token_logp, partials, map);
    return last_launch();
  });
  if (st != status::success) return status::cuda_error;
  return enqueue_combine(partials, splits, rows, cols, lse, token_logp, stream);
}

}  // namespace geopref::cuda::detail
