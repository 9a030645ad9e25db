// dev/support/bridge_outputs.hpp — internal to the two bridges
// (reference_bridge.cpp, linear_bridge.cpp): the result vectors, sized and
// zeroed, that the reference's outputs point into, and the choice between
// an entry and its _with_loss form. (Their inputs need no helper: the
// problem structs embed the reference's blocks.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "reference_bridge.hpp"
#include "user_loss.hpp"

namespace geopref::support {

/// v as n zeros; its data, for an output pointer.
template <class T>
T* zeroed(std::vector<T>& v, size_t n) {
  v.assign(n, T{});
  return v.data();
}

/// An entry run with the loss a problem asks for: `with_loss(loss)` with the
/// tests' user loss (log_cosh_loss, β = user_loss_beta) when β > 0, else
/// `builtin()`, the options' built-in loss.
template <class WithLoss, class Builtin>
geopref::status run_problem_loss(double user_loss_beta, WithLoss&& with_loss, Builtin&& builtin) {
  return user_loss_beta > 0 ? with_loss(log_cosh_loss{user_loss_beta}) : builtin();
}

/// out's loss and metrics into r; returns st.
template <class Out>
geopref::status keep_totals(geopref::status st, const Out& out, ref_result& r) {
  r.loss = out.loss;
  r.stats = out.stats;
  return st;
}

/// r's forward and pair outputs, zeroed and sized for N rows, S sequences
/// and P pairs, as the reference::outputs `out` writes them (grad_logits is
/// the caller's: it is optional).
template <class Out>
void point_outputs(int64_t n_rows, int64_t n_seqs, int64_t n_pairs, ref_result* r, Out* out) {
  const auto n = static_cast<size_t>(n_rows), s = static_cast<size_t>(n_seqs),
             np = static_cast<size_t>(n_pairs);
  out->token_logps = zeroed(r->token_logps, n);
  out->lse = zeroed(r->lse, n);
  out->seq_logps = zeroed(r->seq_logps, s);
  out->seq_counts = zeroed(r->seq_counts, s);
  out->pair_losses = zeroed(r->pair_losses, np);
  out->margins = zeroed(r->margins, np);
  out->grad_seq_logps = zeroed(r->grad_seq_logps, s);
}

/// r's token_logps, lse and entropy, zeroed [N], as the reference::token_outputs
/// `out` writes them.
template <class Result, class Out>
void point_token_outputs(int64_t n_rows, Result* r, Out* out) {
  const auto n = static_cast<size_t>(n_rows);
  out->token_logps = zeroed(r->token_logps, n);
  out->lse = zeroed(r->lse, n);
  out->entropy = zeroed(r->entropy, n);
}

}  // namespace geopref::support
