// geopref/reference/reference.hpp — the CPU reference: clear, host-only,
// double accumulation, Eigen over the caller's raw buffers.
//
// It computes everything the CUDA path computes (docs/math.md is the
// contract) and is what every kernel is checked against. It shares only the
// loss functors (geopref/losses.hpp) with the CUDA code.
//
// Logit types: float, double, Eigen::half, Eigen::bfloat16 (so the reference
// sees exactly the rounded values a GPU kernel reads). Label types: int32_t,
// int64_t. Offset types: int32_t, int64_t.
#pragma once

#include <cstdint>

#include "geopref/losses.hpp"
#include "geopref/reference/blocks.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::reference {

/// The inputs, as raw host pointers (the blocks of blocks.hpp). Sizes are
/// element counts.
template <class Logit, class Label, class Offset>
struct inputs : logits_source<Logit>, sequence_rows<Label, Offset>, pair_set {};

/// The common case in one call: [N, V] logits with ld = V, labels, offsets,
/// S sequences and P pairs. The optional inputs (pairs, soft labels,
/// reference log-probs, weights, upstream gradients) are set on the result.
template <class Logit, class Label, class Offset>
inputs<Logit, Label, Offset> make_inputs(const Logit* logits, int64_t n_rows, int64_t vocab,
                                         const Label* labels, const Offset* offsets,
                                         int64_t n_seqs, int64_t n_pairs) {
  inputs<Logit, Label, Offset> in;
  in.logits = logits;
  in.n_rows = n_rows;
  in.vocab = vocab;
  in.ld = vocab;
  in.labels = labels;
  in.offsets = offsets;
  in.n_seqs = n_seqs;
  in.n_pairs = n_pairs;
  return in;
}

// Conventions the outputs follow (docs/math.md has the full contract):
// - A row is *scored* when it lies inside a sequence (t < offsets[S]) and its
//   label is not opt.ignore_index. The label of every row t in [0, N) is validated,
//   scored or not.
// - Logits are not validated: −∞ entries are fine (they get exactly zero
//   gradient); a label logit of −∞ gives ℓ_t = −∞ and whatever IEEE arithmetic
//   makes of it downstream; a scored row with NaN, +∞ or no finite logit gives NaN.
// - A pair with weight 0 contributes exactly 0 to the loss and the gradients.
// - grad_logits may alias logits (in-place backward) when Logit is double and
//   grad_ld == ld; any other overlap between inputs and outputs is not allowed.

/// The outputs. Every pointer is optional (null: not computed); the
/// reference writes only what is asked for, and never columns [V, ld) of
/// grad_logits.
struct outputs : row_outputs {
  double* seq_logps = nullptr;       // [S] L_s, or L̄_s when length-normalised (0 for n_s = 0)
  int64_t* seq_counts = nullptr;     // [S] n_s, scored rows of sequence s
  double* pair_losses = nullptr;     // [P] w_i f_i (before the divisor)
  double* margins = nullptr;         // [P] h_i (plain, not geometric)
  double* grad_seq_logps = nullptr;  // [S] ∂Loss/∂L_s — w.r.t. the *summed* log-prob, 1/n_s included
  double* grad_logits = nullptr;     // [N, grad_ld]; unscored rows written as zeros
  int64_t grad_ld = 0;               // row stride of grad_logits, >= V (0: use ld)
  double loss = 0;                   // the reduced loss (Σ w_i f_i for reduction::none)
  metrics stats{};
  metric_sums sums{};                // the metrics as sums and the pair count (data parallel)
};

/// The pair step alone (docs/math.md §7, "The pair step"): from per-sequence
/// sums and counts to the loss, per-pair losses, margins, metrics and g_s, for
/// every loss term of opt.loss. compute() runs exactly this between its
/// forward and backward; tests use it to see how the pair step responds to
/// its inputs.
struct pair_inputs : pair_set {
  int64_t n_seqs = 0;
  const double* seq_sums = nullptr;     // [S] L_s (token-weighted sums)
  const int64_t* seq_counts = nullptr;  // [S] n_s
};
struct pair_outputs {
  double* pair_losses = nullptr;  // [P]
  double* margins = nullptr;      // [P]
  double* grad_seq_sums = nullptr;  // [S] ∂Loss/∂L_s (summed form)
  double loss = 0;
  metrics stats{};
  metric_sums sums{};  // the metrics as sums and the pair count (data parallel)
};

/// The pair step with the built-in losses. Validates opt only (the caller
/// vouches for the arrays).
status pair_step(const pair_inputs& in, const options& opt, pair_outputs& out);

/// The pair step with a caller's margin loss (as compute_with_loss).
template <class Loss>
status pair_step_with_loss(const pair_inputs& in, const options& opt, const Loss& loss,
                           pair_outputs& out);

/// Validates everything, then computes all requested outputs with the loss
/// named in opt.loss. Returns the first problem found; on error no output is
/// written.
template <class Logit, class Label, class Offset>
status compute(const inputs<Logit, Label, Offset>& in, const options& opt, outputs& out);

/// The same with a caller-supplied margin loss (any type with
/// value(h, p) / derivative(h, p) in double, e.g. geometric<my_loss>): it
/// replaces the loss of every margin term of opt.loss (the single type, or
/// each margin term of a combination; the transform and the geometric flag
/// still apply). opt.loss.beta is still used for the rewards metrics;
/// opt.loss.type for whether log-probs are averaged and whether a reference
/// is allowed.
template <class Logit, class Label, class Offset, class Loss>
status compute_with_loss(const inputs<Logit, Label, Offset>& in, const options& opt,
                         const Loss& loss, outputs& out);

/// The backward pass alone, the CPU mirror of cuda::logits_grad: from the lse
/// and grad_seq_logps that compute() wrote (the latter possibly scaled by an
/// upstream gradient, or any g_s a caller derived), writes
///   grad_logits[t, v] = g_s (𝟙[v = y_t] − exp(z[t, v] − lse_t))
/// for scored rows t of sequence s (times w_t with token weights) and zeros
/// for every other row; columns [V, grad_ld) are never touched (grad_ld 0:
/// ld). Reads the token fields of `in` (logits, sizes, labels, offsets,
/// token_weights) and opt.ignore_index only; the pair
/// fields and the loss are ignored. lse [N] is read for scored rows only;
/// grad_seq_logps [S]. Validates like compute() (sizes, strides, null
/// pointers, offsets, labels); on error nothing is written.
template <class Logit, class Label, class Offset>
status logits_grad(const inputs<Logit, Label, Offset>& in, const options& opt,
                   const double* lse, const double* grad_seq_logps, double* grad_logits,
                   int64_t grad_ld = 0);

// ---------------------------------------------------------------------------
// The per-token primitive (docs/math.md, "The per-token primitive"): the CPU
// mirror of geopref::cuda::token_logps / token_logps_grad. No sequences: a
// row is scored when its label is not ignore_index.

/// The rows the primitive reads (raw host pointers).
template <class Logit, class Label>
struct token_rows : logits_source<Logit>, vocab_rows<Label> {
  int64_t ignore_index = -100;
};

/// Outputs of token_logps (row_outputs: ℓ_t = z′[t, y_t] − lse_t and lse_t);
/// every pointer optional. z′ is the transformed logit (docs/math.md §2.1),
/// p_tv = exp(z′_tv − lse_t). The last three are the per-token statistics
/// TRL 1.x's fused LM head logs (no gradient).
struct token_outputs : row_outputs {
  double* entropy = nullptr;           // [N] H_t = Σ_v p_tv (lse_t − z′_tv), 0 for unscored rows
  double* log_sum_sq_probs = nullptr;  // [N] log Σ_v p_tv², 0 for unscored rows
  double* mean_logits = nullptr;       // [N] (1/V) Σ_v z′_tv, 0 for unscored rows
  uint8_t* is_top1 = nullptr;  // [N] 1 when y_t is the row's first arg-max (a tie with an earlier
                               // column is not top-1, TRL's rule; a NaN in the row: 0), decided
                               // on z (the transform is increasing); 0 for unscored rows
};

/// Validates (sizes, strides, null pointers, every row's label), then writes
/// the requested outputs. On error nothing is written.
template <class Logit, class Label>
status token_logps(const token_rows<Logit, Label>& in, token_outputs& out);

/// grad_logits[t, v] = [g_t (𝟙[v = y_t] − p_tv) + e_t p_tv (Σ_u p_tu z′_tu − z′_tv)] ·
/// ∂z′_tv/∂z_tv for scored rows (the gradient of Σ_t g_t ℓ_t + e_t H_t), zeros
/// for the others; columns [V, grad_ld) untouched (grad_ld 0: ld).
/// grad_entropy (e_t) is optional (null: 0); grad_token_logps (g_t) is
/// required unless grad_entropy is given (null then: 0). lse and the upstream
/// gradients [N] are read for scored rows only; a non-finite g_t or e_t there
/// is invalid_upstream_grad. May alias the logits (double logits, grad_ld ==
/// ld). On error nothing is written.
template <class Logit, class Label>
status token_logps_grad(const token_rows<Logit, Label>& in, const double* lse,
                        const double* grad_token_logps, double* grad_logits, int64_t grad_ld = 0,
                        const double* grad_entropy = nullptr);

}  // namespace geopref::reference

#include "geopref/reference/detail/reference.inl"
#include "geopref/reference/detail/token.inl"
