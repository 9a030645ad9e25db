// geopref/reference/blocks.hpp — the argument blocks of the CPU reference
// (the same cut as geopref/cuda/args.cuh's, over typed host pointers and
// double for every float array). Every argument struct of the reference is
// built from these, as public bases: a field exists once, and handing part
// of one struct to another is a block assignment. No Eigen here, so that
// code which must not see Eigen (dev/support's bridges, included by .cu
// tests) can embed them too. docs/architecture.md, "Argument blocks".
#pragma once

#include <cstdint>

#include "geopref/options.hpp"

namespace geopref::reference {

/// Block *rows*: N token rows over V columns, the label each row scores
/// (already shifted by the caller) and the transform every logit gets
/// before the softmax.
template <class Label>
struct vocab_rows {
  int64_t n_rows = 0;  // N
  int64_t vocab = 0;   // V
  geopref::logit_transform logit_transform{};  // applied to every logit before the softmax
  const Label* labels = nullptr;  // [N]; row t scores labels[t]
};

/// Block *sequences*: sequence s owns rows [offsets[s], offsets[s+1]).
template <class Offset>
struct sequences {
  const Offset* offsets = nullptr;  // [S + 1]
  int64_t n_seqs = 0;               // S
};

/// Block *token weights*.
struct token_weighting {
  const double* token_weights = nullptr;  // [N] finite per-token weights: L_s = Σ_t w_t ℓ_t over
                                          // scored rows; null: all 1 (read for scored rows only)
};

/// The rows, their sequences and token weights.
template <class Label, class Offset>
struct sequence_rows : vocab_rows<Label>, sequences<Offset>, token_weighting {};

/// Block *source* (logits).
template <class Logit>
struct logits_source {
  const Logit* logits = nullptr;  // [N, ld] row-major; columns [V, ld) are never read
  int64_t ld = 0;                 // row stride, >= V
};

/// Block *source* (linear): Z = H·Wᵀ + b.
template <class Elem>
struct linear_source {
  const Elem* hidden = nullptr;  // [N, ld_hidden] row-major
  int64_t ld_hidden = 0;         // >= Hd; 0 means Hd
  const Elem* weight = nullptr;  // [V, ld_weight] row-major
  int64_t ld_weight = 0;         // >= Hd; 0 means Hd
  const Elem* bias = nullptr;    // [V] or null
  int64_t hidden_size = 0;       // Hd
};

/// Block *pairs*: the pairs, their optional arrays and the upstream gradients.
struct pair_set {
  int64_t n_pairs = 0;                  // P
  const int64_t* pairs = nullptr;       // [P, 2] (first, second) sequence indices; null: (i, P + i),
                                        // needs S == 2P
  const double* soft_labels = nullptr;  // [P] p̂ in [0, 1]; null: all 1 (binary)
  const double* ref_logps = nullptr;    // [S] reference log-probs, in the same form as the margin
                                        // uses (L̄ when length-normalised); null: reference-free
  const double* weights = nullptr;      // [P] per-pair weights >= 0; null: all 1
  double grad_loss = 1.0;               // upstream gradient of the reduced loss (scales every reduction)
  const double* grad_pair_losses = nullptr;  // [P] reduction::none only: pair i's upstream gradient is
                                             // grad_loss · grad_pair_losses[i]; null: all 1; ignored
                                             // by the other reductions
};

/// Block *row outputs*.
struct row_outputs {
  double* token_logps = nullptr;  // [N] ℓ_t for scored rows, 0 for unscored rows
  double* lse = nullptr;          // [N] lse_t of scored rows, 0 for unscored rows
};

/// Block *linear gradients*: each optional (null: not computed); grad_weight
/// and grad_bias overwritten, or added to with `accumulate`.
struct linear_gradients {
  double* grad_hidden = nullptr;  // [N, ld_grad_hidden]
  int64_t ld_grad_hidden = 0;     // 0 means Hd
  double* grad_weight = nullptr;  // [V, ld_grad_weight]
  int64_t ld_grad_weight = 0;     // 0 means Hd
  double* grad_bias = nullptr;    // [V], needs a bias
  bool accumulate = false;
};

}  // namespace geopref::reference
