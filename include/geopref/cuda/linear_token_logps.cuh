// geopref/cuda/linear_token_logps.cuh — the per-token primitive
// (geopref/cuda/token_logps.cuh) from hidden states H [N, Hd] and the output
// projection W [V, Hd] (optional bias b [V]), never holding the logits
// Z = H·Wᵀ + b whole. docs/math.md, "The per-token primitive".
//
//   linear_token_logps       ℓ_t = Z[t, y_t] − lse_t [N] and lse_t [N]
//                            (optionally the entropy H_t [N]);
//   linear_token_logps_grad  given g_t = ∂Loss/∂ℓ_t [N] (fp32) and the
//                            forward's lse, grad_H = G·W, grad_W (+)= Gᵀ·H,
//                            grad_b (+)= Σ_t G[t, ·], with
//                            G[t, v] = g_t (𝟙[v = y_t] − exp(Z[t, v] − lse_t)),
//                            plus, given e_t = ∂Loss/∂H_t and the forward's
//                            H_t, the entropy's term (token_logps_grad's).
//
// These are the two passes of fused_linear_step (geopref/cuda/fused_linear.cuh)
// with the pair step left out: per chunk of rows, Z_c = H_c·Wᵀ + b (cuBLAS,
// fp32 accumulation, rounded to the input dtype), then forward_kernel
// (→ combine_kernel) (→ stats_kernel) for the forward, or backward_kernel
// in place with the coefficient g_t and the GEMMs for the backward. The
// forward costs one GEMM per chunk, the backward three (Z_c again, grad_H_c,
// grad_W); the memory beyond the caller's buffers is the chunk plus O(N).
//
// Calling convention, chunk budget, cuBLAS handle and determinism: those of
// fused_linear.cuh (argument struct, workspace == nullptr asks for the size,
// which depends only on N, V, the dtype and linear_token_rows::chunk_bytes;
// stream last; a status return; a budget below one row of logits is
// workspace_too_small). Device-data problems — a label outside [0, V) that
// is not ignore_index, a non-finite g_t of a scored row — are recorded for
// device_status() and the item treated as unscored / 0, as token_logps does.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/args.cuh"
#include "geopref/cuda/fused_linear.cuh"  // linear_source, linear_gradients
#include "geopref/status.hpp"

namespace geopref::cuda {

/// The hidden states, the projection (linear_source) and the token rows
/// (vocab_rows, labels already shifted); no sequences: every row whose label
/// is not ignore_index is scored.
struct linear_token_rows : linear_source, vocab_rows {
  int64_t ignore_index = -100;  // the label of unscored rows
};

/// Arguments of linear_token_logps (the outputs of token_logps_args).
struct linear_token_logps_args : token_outputs {
  linear_token_rows rows;
};

/// Arguments of linear_token_logps_grad: token_grad_inputs, the entropy's
/// optional upstream (entropy_upstream, as token_logps_grad's) and the
/// gradients (linear_gradients, as linear_train_args').
struct linear_token_grad_args : token_grad_inputs, entropy_upstream, linear_gradients {
  linear_token_rows rows;  // the rows linear_token_logps was given
};

/// Token log-probs (and lse, entropy) of the selected tokens from H and W.
inline status linear_token_logps(void* workspace, size_t& workspace_bytes,
                                 const linear_token_logps_args& args,
                                 cudaStream_t stream = nullptr) noexcept;

/// The backward of linear_token_logps for any per-token upstream gradient.
inline status linear_token_logps_grad(void* workspace, size_t& workspace_bytes,
                                      const linear_token_grad_args& args,
                                      cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/token_logps.cuh"
#include "geopref/cuda/detail/linear_token.cuh"
