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
//                            G[t, v] = g_t (𝟙[v = y_t] − exp(Z[t, v] − lse_t)).
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
#include "geopref/status.hpp"

namespace geopref::cuda {

/// The hidden states, the projection and the token rows (no sequences:
/// every row whose label is not ignore_index is scored).
struct linear_token_rows {
  const void* hidden = nullptr;  // [N, ld_hidden] row-major, `type`
  int64_t ld_hidden = 0;         // >= Hd; 0 means Hd
  const void* weight = nullptr;  // [V, ld_weight] row-major, `type` (an nn.Linear's weight)
  int64_t ld_weight = 0;         // >= Hd; 0 means Hd
  const void* bias = nullptr;    // [V] `type`, or null
  dtype type = dtype::bfloat16;  // of hidden, weight, bias, the chunk logits and grad_hidden
  int64_t n_rows = 0;            // N <= 2^31 - 1
  int64_t hidden_size = 0;       // Hd >= 1 when N > 0
  int64_t vocab = 0;             // V >= 1 when N > 0

  const void* labels = nullptr;  // [N] label_type, already shifted
  index_type label_type = index_type::int64;
  int64_t ignore_index = -100;   // the label of unscored rows
  geopref::logit_transform logit_transform{};  // applied to every logit before the softmax

  size_t chunk_bytes = size_t{1} << 30;  // budget for the chunk's logits (fused_linear.cuh)
  cublasHandle_t cublas = nullptr;       // the caller's handle, or null (fused_linear.cuh)
};

/// Arguments of linear_token_logps (the outputs of token_logps_args).
struct linear_token_logps_args {
  linear_token_rows rows;
  float* token_logps = nullptr;  // [N] required when N > 0: ℓ_t, 0 for unscored rows
  float* lse = nullptr;          // [N] optional: lse_t, 0 for unscored rows (the saved input
                                 // of linear_token_logps_grad)
  float* entropy = nullptr;      // [N] optional: H_t, 0 for unscored rows; one more read of
                                 // each chunk, no extra GEMM
};

/// Arguments of linear_token_logps_grad. The gradients follow
/// linear_train_args: each optional, grad_hidden always overwritten (zeros
/// for unscored rows), grad_weight and grad_bias overwritten or, with
/// `accumulate`, added to. No gradient may meet an input or another.
struct linear_token_grad_args {
  linear_token_rows rows;                   // the rows linear_token_logps was given
  const float* lse = nullptr;               // [N] its lse; read for scored rows only
  const float* grad_token_logps = nullptr;  // [N] g_t; read for scored rows only

  void* grad_hidden = nullptr;   // [N, ld_grad_hidden], `type`
  int64_t ld_grad_hidden = 0;    // >= Hd; 0 means Hd
  void* grad_weight = nullptr;   // [V, ld_grad_weight], `type`, or float with grad_weight_float32
  int64_t ld_grad_weight = 0;    // >= Hd; 0 means Hd
  bool grad_weight_float32 = false;
  float* grad_bias = nullptr;    // [V] float; needs a bias
  bool accumulate = false;       // grad_weight += …, grad_bias += … instead of =
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
