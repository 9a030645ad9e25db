// geopref/cuda/token_logps.cuh — the per-token primitive: token log-probs
// of the selected tokens and their backward for any per-token upstream
// gradient, for losses a framework keeps in its own code (GRPO's clipped
// ratios, KTO, SFT, a user's own). docs/math.md, "The per-token primitive".
//
//   token_logps       ℓ_t = z[t, y_t] − lse_t [N] and the saved lse_t [N]
//                     (optionally the entropy H_t [N]) from logits [N, V];
//   token_logps_grad  given g_t = ∂Loss/∂ℓ_t [N], the gradient
//                     grad[t, v] = g_t (𝟙[v = y_t] − exp(z[t, v] − lse_t)),
//                     out of place or in place over the logits.
//
// These are the two passes train_step itself runs (forward_kernel and
// backward_kernel: the same kernels, the same bits); train_step's backward
// is token_logps_grad with g_t = g_{s(t)} · w_t.
//
// Calling convention, errors and determinism: those of geopref/cuda/geopref.cuh
// (two-phase workspace, stream last, a status return; host-checkable
// problems returned at once with nothing enqueued; device-data problems — a
// label outside [0, V) that is not ignore_index, a non-finite g_t of a scored
// row — recorded for device_status(), the item treated as unscored / 0).
// The workspace size depends only on N, V and the logits dtype.
//
// Rows are independent, so a caller may run the primitive over a chunk of
// rows [r, r + n) of a larger problem by offsetting its pointers (logits by
// r·ld elements, labels and every [N] array by r) and passing n_rows = n: one
// workspace sized for the largest chunk serves every chunk. This is how a
// hidden-state variant (logits of one chunk at a time from H·Wᵀ) wraps it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/args.cuh"
#include "geopref/status.hpp"

namespace geopref::cuda {

/// The rows the primitive reads. There are no sequences: every row whose
/// label is not ignore_index is scored.
struct token_rows {
  const void* logits = nullptr;  // [N, ld] row-major, logits_dtype; columns [V, ld) never read;
                                 // aligned to the element size (rows need not be 16-byte aligned)
  dtype logits_dtype = dtype::float32;
  int64_t n_rows = 0;  // N, 0 <= N <= 2^31 - 1 (N·V may exceed 2^31)
  int64_t vocab = 0;   // V, 1 <= V <= 2^31 - 1 when N > 0
  int64_t ld = 0;      // row stride in elements, >= V

  const void* labels = nullptr;  // [N] label_type, already shifted (labels[t] = input_ids[t + 1])
  index_type label_type = index_type::int64;
  int64_t ignore_index = -100;   // the label of unscored rows
  geopref::logit_transform logit_transform{};  // applied to every logit before the softmax
};

/// Arguments of token_logps.
struct token_logps_args {
  token_rows rows;
  float* token_logps = nullptr;  // [N] required when N > 0: ℓ_t, 0 for unscored rows
  float* lse = nullptr;          // [N] optional: lse_t = log Σ_v exp z[t, v], 0 for unscored
                                 // rows (the saved input of token_logps_grad)
  float* entropy = nullptr;      // [N] optional: H_t = −Σ_v p_tv log p_tv, 0 for unscored rows;
                                 // costs a second read of the logits
};

/// Arguments of token_logps_grad.
struct token_grad_args {
  token_rows rows;  // the rows token_logps was given
  const float* lse = nullptr;               // [N] token_logps' lse; read for scored rows only
  const float* grad_token_logps = nullptr;  // [N] g_t = ∂Loss/∂ℓ_t; read for scored rows only
  // grad[t, v] = g_t (𝟙[v = y_t] − exp(z[t, v] − lse_t)) for scored rows, 0
  // for unscored rows; columns [V, grad_ld) never written. In place allowed
  // (grad_logits == rows.logits, same ld and dtype); any other overlap with
  // the logits, lse or g is rejected (overlapping_buffers).
  void* grad_logits = nullptr;  // [N, grad_ld], required when N > 0
  int64_t grad_ld = 0;          // >= V; 0 means ld
  bool grad_float32 = false;    // false: the logits dtype; true: float
};

/// Token log-probs (and lse, entropy) of the selected tokens.
inline status token_logps(void* workspace, size_t& workspace_bytes, const token_logps_args& args,
                          cudaStream_t stream = nullptr) noexcept;

/// The backward of token_logps for any per-token upstream gradient.
inline status token_logps_grad(void* workspace, size_t& workspace_bytes,
                               const token_grad_args& args, cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/detail/token_api.cuh"
