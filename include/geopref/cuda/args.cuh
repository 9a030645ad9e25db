// geopref/cuda/args.cuh — the argument types of the CUDA launch API
// (geopref/cuda/geopref.cuh documents the calling convention and the
// entries; the detail headers include just these types).
#pragma once

#include <cstddef>
#include <cstdint>

#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::cuda {

/// Element type of the logits (and of the gradient, see train_args).
enum class dtype : int {
  float32,   // float
  float16,   // __half
  bfloat16,  // __nv_bfloat16
};

/// Element type of labels and offsets.
enum class index_type : int {
  int32,
  int64,
};

/// The token rows a forward pass reads.
///
/// Row t of the logits scores labels[t]: the library does not shift, so for a
/// causal LM pass labels[t] = input_ids[t + 1] (and ignore_index for the last
/// position of each sequence and for prompt/padding tokens).
/// Rows outside every sequence (t >= offsets[S]) and rows whose label is
/// ignore_index are unscored: their logits are never read and their gradient
/// rows are zeros. Every row's label is still validated (as the CPU
/// reference does).
struct token_inputs {
  const void* logits = nullptr;  // [N, ld] row-major, logits_dtype; columns [V, ld) never read.
                                 // Must be aligned to its element size; 16-byte alignment of
                                 // the rows is not required (a scalar prologue handles it).
  dtype logits_dtype = dtype::float32;
  int64_t n_rows = 0;  // N, 0 <= N <= 2^31 - 1 (N·V itself may exceed 2^31: indices are 64-bit)
  int64_t vocab = 0;   // V, 1 <= V <= 2^31 - 1 when N > 0
  int64_t ld = 0;      // row stride in elements, >= V
  geopref::logit_transform logit_transform{};  // applied to every logit before the softmax

  const void* labels = nullptr;  // [N] label_type; ignore_index (options) marks unscored rows
  index_type label_type = index_type::int64;

  const void* offsets = nullptr;  // [S + 1] offset_type, cu_seqlens style: sequence s owns rows
                                  // [offsets[s], offsets[s+1]); offsets[0] == 0, non-decreasing,
                                  // offsets[S] <= N. A padded [S, T] batch is offsets = s·T.
  index_type offset_type = index_type::int64;
  int64_t n_seqs = 0;  // S >= 0

  // Optional per-token weights (null: all 1): L_s = Σ_t w_t ℓ_t over the
  // scored rows of s, and the gradient of row t is scaled by w_t. Read for
  // scored rows only; NaN or ±inf there is a device-side invalid_weight.
  // LD-DPO's length desensitisation: 1 on each pair's common-length prefix,
  // α after it (policy only; the reference pass without weights, as TRL).
  const float* token_weights = nullptr;  // [N]
};

/// Arguments of sequence_logps (the reference model's forward pass).
/// Typical use: run it over the reference model's logits with the options of
/// the training run, keep seq_logps, pass them as train_args::ref_logps.
struct logps_args {
  token_inputs tokens;

  // Outputs. seq_logps is required, the others are optional (null: not written).
  float* seq_logps = nullptr;       // [S] L_s, or L̄_s = L_s / n_s when uses_average_logps(options)
                                    // (0 for a sequence without scored rows): exactly the form
                                    // train_args::ref_logps expects with the same options.
  int64_t* seq_counts = nullptr;    // [S] n_s, scored rows of sequence s
  float* token_logps = nullptr;     // [N] ℓ_t = z[t, y_t] − lse_t; 0 for unscored rows
  float* lse = nullptr;             // [N] lse_t = log Σ_v exp z[t, v]; 0 for unscored rows
};

/// Arguments of train_step.
struct train_args {
  token_inputs tokens;  // the policy model's logits, labels and sequences

  // Pairs. Pair i compares sequence a_i ("chosen") with b_i ("rejected").
  int64_t n_pairs = 0;              // P >= 0 (pair math runs in one block: meant for batch sizes)
  const int64_t* pairs = nullptr;   // [P, 2] (a_i, b_i) in [0, S); null: TRL's concatenated layout
                                    // a_i = i, b_i = P + i, which needs S == 2P
  const float* soft_labels = nullptr;  // [P] p̂_i = P(a_i ≻ b_i) in [0, 1]; null: all 1 (binary)
  const float* ref_logps = nullptr;    // [S] reference log-probs, summed or (average_logps)
                                       // averaged (the output of sequence_logps with the same
                                       // options); null: reference-free. Must be null when every
                                       // loss term is reference-free (simpo, orpo, sft).
  const float* weights = nullptr;      // [P] per-pair weights w_i >= 0; null: all 1

  // Upstream gradient. The coefficient of every gradient is grad_loss times
  // grad_output[0] (or grad_output[i] for pair i under reduction::none).
  double grad_loss = 1.0;              // host scalar, finite
  const float* grad_output = nullptr;  // device: [1], or [P] for reduction::none; null: 1

  // Outputs; every one is optional (null: not computed / not written).
  float* loss = nullptr;             // [1] the reduced loss; [P] the values w_i f_i for reduction::none
  metrics* stats = nullptr;          // [1] device struct, TRL's metric names (geopref/options.hpp)
  metric_sums* stat_sums = nullptr;  // [1] device struct: the metrics as sums and P, for a
                                     // data-parallel all-reduce (metrics_from_sums after it)
  float* seq_logps = nullptr;        // [S] L_s or L̄_s: uses_average_logps(options)
  int64_t* seq_counts = nullptr;     // [S] n_s
  float* token_logps = nullptr;      // [N] ℓ_t, 0 for unscored rows
  float* lse = nullptr;              // [N] lse_t, 0 for unscored rows
  float* grad_seq_logps = nullptr;   // [S] g_s = ∂Loss/∂L_s w.r.t. the *summed* log-prob
                                     // (1/n_s included when length-normalised)

  // Gradient with respect to the logits (null: no backward pass):
  //   grad[t, v] = g_s (𝟙[v = y_t] − exp(z[t, v] − lse_t)) for scored rows t of s,
  //   0 for every other row; columns [V, grad_ld) are never written.
  // In place is allowed: grad_logits == tokens.logits with grad_ld == ld and
  // the logits dtype. Any other overlap with the logits is rejected
  // (overlapping_buffers).
  void* grad_logits = nullptr;  // [N, grad_ld] row-major
  int64_t grad_ld = 0;          // >= V; 0 means ld
  bool grad_float32 = false;    // false: gradient in the logits dtype; true: float
};

/// Arguments of logits_grad: the backward pass alone, from what a train_step
/// without a gradient returned (its lse and grad_seq_logps outputs). With the
/// same logits, labels, offsets and options the gradient is bitwise the one
/// train_step writes (same kernel, same inputs); the logits are read once.
/// Scaling grad_seq_logps (for example by an upstream scalar) scales the
/// gradient: this is how an autograd backward applies its upstream gradient.
struct grad_args {
  token_inputs tokens;  // the logits, labels and sequences train_step was given

  const float* lse = nullptr;             // [N] lse_t (train_args::lse); read for scored rows only
  const float* grad_seq_logps = nullptr;  // [S] g_s w.r.t. the summed log-prob
                                          // (train_args::grad_seq_logps)

  // The gradient, with train_args' rules: grad[t, v] = g_s (𝟙[v = y_t] −
  // exp(z[t, v] − lse_t)) for scored rows t of s, 0 for every other row;
  // columns [V, grad_ld) never written; in place allowed (same buffer, ld and
  // dtype), any other overlap with the logits, lse or grad_seq_logps rejected
  // (overlapping_buffers).
  void* grad_logits = nullptr;  // [N, grad_ld] row-major, required when N > 0
  int64_t grad_ld = 0;          // >= V; 0 means ld
  bool grad_float32 = false;    // false: gradient in the logits dtype; true: float
};

}  // namespace geopref::cuda
