// dev/support/bridge_outputs.hpp — internal to the two bridges
// (reference_bridge.cpp, linear_bridge.cpp): the result vectors, sized and
// zeroed, that the reference's outputs point into. (Their inputs need no
// helper: the problem structs embed the reference's blocks.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "reference_bridge.hpp"

namespace geopref::support {

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
