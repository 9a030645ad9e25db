// dev/support/bridge_fields.hpp — internal to the two bridges
// (reference_bridge.cpp, linear_bridge.cpp): the field groups their plain
// problem structs share with the reference's argument structs, set in one
// place. Templates over both sides, since the groups repeat by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "reference_bridge.hpp"

namespace geopref::support {

/// The token rows' sequences, the pairs with their optional arrays and the
/// upstream gradients, from a ref_problem / linear_ref_problem into
/// reference::inputs / linear_inputs.
template <class Problem, class In>
void set_sequences_and_pairs(const Problem& p, In* in) {
  in->labels = p.labels;
  in->offsets = p.offsets;
  in->n_seqs = p.n_seqs;
  in->n_pairs = p.n_pairs;
  in->pairs = p.pairs;
  in->soft_labels = p.soft_labels;
  in->ref_logps = p.ref_logps;
  in->weights = p.weights;
  in->token_weights = p.token_weights;
  in->grad_loss = p.grad_loss;
  in->grad_pair_losses = p.grad_pair_losses;
}

/// r's forward and pair outputs, zeroed and sized for N rows, S sequences
/// and P pairs, as the reference::outputs `out` writes them (grad_logits is
/// the caller's: it is optional).
template <class Out>
void point_outputs(int64_t n_rows, int64_t n_seqs, int64_t n_pairs, ref_result* r, Out* out) {
  const auto n = static_cast<size_t>(n_rows), s = static_cast<size_t>(n_seqs),
             np = static_cast<size_t>(n_pairs);
  r->token_logps.assign(n, 0.0);
  r->lse.assign(n, 0.0);
  r->seq_logps.assign(s, 0.0);
  r->seq_counts.assign(s, 0);
  r->pair_losses.assign(np, 0.0);
  r->margins.assign(np, 0.0);
  r->grad_seq_logps.assign(s, 0.0);
  out->token_logps = r->token_logps.data();
  out->lse = r->lse.data();
  out->seq_logps = r->seq_logps.data();
  out->seq_counts = r->seq_counts.data();
  out->pair_losses = r->pair_losses.data();
  out->margins = r->margins.data();
  out->grad_seq_logps = r->grad_seq_logps.data();
}

/// r's token_logps, lse and entropy, zeroed [N], as the reference::token_outputs
/// `out` writes them.
template <class Result, class Out>
void point_token_outputs(int64_t n_rows, Result* r, Out* out) {
  const auto n = static_cast<size_t>(n_rows);
  r->token_logps.assign(n, 0.0);
  r->lse.assign(n, 0.0);
  r->entropy.assign(n, 0.0);
  out->token_logps = r->token_logps.data();
  out->lse = r->lse.data();
  out->entropy = r->entropy.data();
}

}  // namespace geopref::support
