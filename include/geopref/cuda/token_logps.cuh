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

/// The rows the primitive reads: logits_source and vocab_rows (labels
/// already shifted, labels[t] = input_ids[t + 1]). There are no sequences:
/// every row whose label is not ignore_index is scored.
struct token_rows : logits_source, vocab_rows {
  int64_t ignore_index = -100;  // the label of unscored rows
};

/// Arguments of token_logps (token_outputs: token_logps required when N > 0).
struct token_logps_args : token_outputs {
  token_rows rows;
};

/// Arguments of token_logps_grad: token_grad_inputs, and the gradient
/// (logits_gradient, required when N > 0) grad[t, v] = g_t (𝟙[v = y_t] −
/// exp(z[t, v] − lse_t)) for scored rows, 0 for unscored rows. In place
/// allowed (grad_logits == rows.logits, same ld and dtype); any other
/// overlap with the logits, lse or g is rejected (overlapping_buffers).
struct token_grad_args : token_grad_inputs, entropy_upstream, logits_gradient {
  token_rows rows;  // the rows token_logps was given
};

/// Token log-probs (and lse, entropy) of the selected tokens.
inline status token_logps(void* workspace, size_t& workspace_bytes, const token_logps_args& args,
                          cudaStream_t stream = nullptr) noexcept;

/// The backward of token_logps for any per-token upstream gradient.
inline status token_logps_grad(void* workspace, size_t& workspace_bytes,
                               const token_grad_args& args, cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/detail/token_api.cuh"
