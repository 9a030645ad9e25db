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

// ---------------------------------------------------------------------------
// The blocks. Every argument struct of the CUDA API is built from these
// (as public bases, so `args.n_pairs` or `args.tokens.labels` name the one
// declaration): a field exists once, and passing part of one entry's
// arguments to another is a slice of a block, never a field-by-field copy.
// docs/architecture.md, "Argument blocks", lists them.

/// Block *rows*: N token rows over a vocabulary of V columns, the label each
/// row scores and the transform every logit gets before the softmax.
///
/// Row t of the logits scores labels[t]: the library does not shift, so for a
/// causal LM pass labels[t] = input_ids[t + 1] (and ignore_index for the last
/// position of each sequence and for prompt/padding tokens). Rows whose label
/// is ignore_index are unscored: their logits are never read and their
/// gradient rows are zeros. Every row's label is still validated (as the CPU
/// reference does).
struct vocab_rows {
  int64_t n_rows = 0;  // N, 0 <= N <= 2^31 - 1 (N·V itself may exceed 2^31: indices are 64-bit)
  int64_t vocab = 0;   // V, 1 <= V <= 2^31 - 1 when N > 0
  geopref::logit_transform logit_transform{};  // applied to every logit before the softmax
  const void* labels = nullptr;  // [N] label_type; ignore_index marks unscored rows
  index_type label_type = index_type::int64;
};

/// Block *sequences*: how the rows group into sequences. Rows outside every
/// sequence (t >= offsets[S]) are unscored.
struct sequences {
  const void* offsets = nullptr;  // [S + 1] offset_type, cu_seqlens style: sequence s owns rows
                                  // [offsets[s], offsets[s+1]); offsets[0] == 0, non-decreasing,
                                  // offsets[S] <= N. A padded [S, T] batch is offsets = s·T.
  index_type offset_type = index_type::int64;
  int64_t n_seqs = 0;  // S >= 0
};

/// Block *token weights*, read by the per-sequence sums (and so only by the
/// entries that form them).
struct token_weighting {
  // Optional per-token weights (null: all 1): L_s = Σ_t w_t ℓ_t over the
  // scored rows of s, and the gradient of row t is scaled by w_t. Read for
  // scored rows only; NaN or ±inf there is a device-side invalid_weight.
  // LD-DPO's length desensitisation: 1 on each pair's common-length prefix,
  // α after it (policy only; the reference pass without weights, as TRL).
  const float* token_weights = nullptr;  // [N]
};

/// Block *source* (logits): where the rows' logits are.
struct logits_source {
  const void* logits = nullptr;  // [N, ld] row-major, logits_dtype; columns [V, ld) never read.
                                 // Must be aligned to its element size; 16-byte alignment of
                                 // the rows is not required (a scalar prologue handles it).
  dtype logits_dtype = dtype::float32;
  int64_t ld = 0;  // row stride in elements, >= V
};

/// Block *pairs*: the pairs, their optional arrays and the upstream gradient.
/// Pair i compares sequence a_i ("chosen") with b_i ("rejected").
struct pair_set {
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
};

/// Block *row outputs*: per-row log-probs and log-sum-exps (optional unless
/// an entry says otherwise; null: not written).
struct row_outputs {
  float* token_logps = nullptr;  // [N] ℓ_t = z[t, y_t] − lse_t; 0 for unscored rows
  float* lse = nullptr;          // [N] lse_t = log Σ_v exp z[t, v]; 0 for unscored rows
};

/// Block *sequence outputs*: row_outputs and the per-sequence sums.
struct logps_outputs : row_outputs {
  float* seq_logps = nullptr;     // [S] L_s, or L̄_s = L_s / n_s when uses_average_logps(options)
                                  // (0 for a sequence without scored rows): exactly the form
                                  // pair_set::ref_logps expects with the same options.
  int64_t* seq_counts = nullptr;  // [S] n_s, scored rows of sequence s
};

/// Block *outputs* of a training step: logps_outputs, the loss, the metrics
/// and g_s; every one optional (null: not computed / not written).
struct train_outputs : logps_outputs {
  float* loss = nullptr;             // [1] the reduced loss; [P] the values w_i f_i for reduction::none
  metrics* stats = nullptr;          // [1] device struct, TRL's metric names (geopref/options.hpp)
  metric_sums* stat_sums = nullptr;  // [1] device struct: the metrics as sums and P, for a
                                     // data-parallel all-reduce (metrics_from_sums after it)
  float* grad_seq_logps = nullptr;   // [S] g_s = ∂Loss/∂L_s w.r.t. the *summed* log-prob
                                     // (1/n_s included when length-normalised)
};

/// Block *logits gradient*: where the gradient with respect to the logits goes.
///   grad[t, v] = g_t (𝟙[v = y_t] − exp(z[t, v] − lse_t)) for scored rows,
///   0 for every other row; columns [V, grad_ld) are never written.
/// In place is allowed: grad_logits == logits with grad_ld == ld and the
/// logits dtype. Any other overlap with the logits (or with what the entry
/// reads while writing it) is rejected (overlapping_buffers).
struct logits_gradient {
  void* grad_logits = nullptr;  // [N, grad_ld] row-major
  int64_t grad_ld = 0;          // >= V; 0 means ld
  bool grad_float32 = false;    // false: gradient in the logits dtype; true: float
};

/// Block *saved lse*: a forward pass's lse output, read back by a backward.
struct saved_lse {
  const float* lse = nullptr;  // [N] lse_t; read for scored rows only
};

/// Block *token outputs* of the per-token primitive: row_outputs (token_logps
/// required when N > 0, lse optional: the saved input of the backward) and
/// the entropy.
struct token_outputs : row_outputs {
  float* entropy = nullptr;  // [N] optional: H_t = −Σ_v p_tv log p_tv, 0 for unscored rows;
                             // costs one more read of the logits
  // TRL 1.x's per-token statistics (docs/math.md, "The per-token primitive"),
  // each optional (0 for unscored rows), from the same second read as the
  // entropy (asking for any of them costs that read, and a few instructions
  // per element more; none asked: no second read):
  float* log_sum_sq_probs = nullptr;  // [N] log Σ_v p_tv²
  float* mean_logits = nullptr;       // [N] (1/V) Σ_v z′_tv, of the transformed logits
  uint8_t* is_top1 = nullptr;         // [N] 1 when y_t is the row's first arg-max of z (a tie
                                      // with an earlier column is not top-1; a NaN: 0)
};

/// Block *token gradient inputs* of the per-token backward: the forward's lse
/// and the upstream gradient g_t = ∂Loss/∂ℓ_t.
struct token_grad_inputs : saved_lse {
  const float* grad_token_logps = nullptr;  // [N] g_t; read for scored rows only
};

/// Block *entropy upstream* of the per-token backward from logits: an upstream
/// gradient e_t = ∂Loss/∂H_t of the entropy too (the gradient becomes that of
/// Σ_t g_t ℓ_t + e_t H_t, docs/math.md), with the forward's H_t.
struct entropy_upstream {
  const float* grad_entropy = nullptr;  // [N] optional e_t; read for scored rows only (NaN or
                                        // ±inf there: device-side invalid_upstream_grad)
  const float* entropy = nullptr;       // [N] token_logps' H_t; required with grad_entropy
};

// ---------------------------------------------------------------------------
// The argument structs.

/// Sequences of token rows, without their logits: the per-sequence sums of
/// what another pass (the vocab-parallel combine) computed per row.
struct sequence_rows : vocab_rows, sequences, token_weighting {};

/// The rows of logits a sequence entry scores (without token weights: what
/// the vocab-parallel records read).
struct scored_logits : logits_source, vocab_rows, sequences {};

/// The token rows a forward pass reads: the logits, their rows, sequences
/// and token weights.
struct token_inputs : scored_logits, token_weighting {};

/// Arguments of sequence_logps (the reference model's forward pass).
/// Typical use: run it over the reference model's logits with the options of
/// the training run, keep seq_logps, pass them as train_args::ref_logps.
/// seq_logps is required, the other outputs optional.
struct logps_args : logps_outputs {
  token_inputs tokens;
};

/// Arguments of train_step: the policy model's logits, labels and sequences,
/// the pairs, the outputs and (grad_logits non-null) the gradient with
/// respect to the logits, of which the coefficient of row t of sequence s is
/// g_s · w_t. In place: grad_logits == tokens.logits.
struct train_args : pair_set, train_outputs, logits_gradient {
  token_inputs tokens;
};

/// Arguments of logits_grad: the backward pass alone, from what a train_step
/// without a gradient returned (its lse and grad_seq_logps outputs). With the
/// same logits, labels, offsets and options the gradient is bitwise the one
/// train_step writes (same kernel, same inputs); the logits are read once.
/// Scaling grad_seq_logps (for example by an upstream scalar) scales the
/// gradient: this is how an autograd backward applies its upstream gradient.
/// The gradient follows logits_gradient (required when N > 0); an overlap
/// with the logits other than in place, or with lse or grad_seq_logps, is
/// rejected.
struct grad_args : saved_lse, logits_gradient {
  token_inputs tokens;                    // the logits, labels and sequences train_step was given
  const float* grad_seq_logps = nullptr;  // [S] g_s w.r.t. the summed log-prob
                                          // (train_args::grad_seq_logps)
};

}  // namespace geopref::cuda
