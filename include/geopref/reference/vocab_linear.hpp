// geopref/reference/vocab_linear.hpp — the CPU reference of
// geopref::cuda::vocab_linear_stats / vocab_linear_step (the fused-linear
// path with W and b sharded by vocabulary), in double, over K simulated
// ranks in one call.
//
// Rank r holds W_r = W[bounds[r] : bounds[r+1]] (and b_r) and the whole H.
// Its logits Z_r = H·W_rᵀ + b_r are formed from its slice alone; the rest is
// compute_vocab_parallel (records per slice, gathered in the order `slot`
// says, combined in rank order, the slice backward G_r), then per rank
//   grad_W_r (+)= G_rᵀ·H,  grad_b_r (+)= Σ_t G_r[t, ·],  partial_r = G_r·W_r,
// and grad_H = Σ_r partial_r summed in rank order (the caller's all-reduce).
// Like reference/fused_linear.hpp, nothing is chunked and Z is not rounded.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/vocab_parallel.hpp"
#include "geopref/status.hpp"

namespace geopref::reference {

/// fused_linear() over K simulated ranks: bounds [K + 1] a tiling of [0, V)
/// (as compute_vocab_parallel), slot [K] where each rank's records land in
/// the gather (null: slot r). out.grad_weight / grad_bias are written slice
/// by slice, out.grad_hidden is the rank-order sum of the partials, and
/// grad_hidden_partials ([K, N, Hd] dense, or null) receives each partial.
template <class Elem, class Label, class Offset>
status fused_linear_vocab_parallel(const linear_inputs<Elem, Label, Offset>& in, const options& opt,
                                   const int64_t* bounds, int n_ranks, const int* slot,
                                   linear_outputs& out, double* grad_hidden_partials = nullptr) {
  using mat = detail::linear_mat;
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  int64_t ldh = 0, ldw = 0, ldgh = 0, ldgw = 0;
  const status c = detail::check_linear(in, out, &ldh, &ldw, &ldgh, &ldgw);
  if (c != status::success) return c;
  if (n_ranks < 1 || bounds == nullptr || bounds[0] != 0 || bounds[n_ranks] != V)
    return status::invalid_vocab_records;
  for (int r = 0; r < n_ranks; ++r)
    if (bounds[r + 1] < bounds[r] + (N > 0 ? 1 : 0)) return status::invalid_vocab_records;

  const mat H = detail::widen_rows(in.hidden, N, Hd, ldh);
  std::vector<mat> Wr(static_cast<size_t>(n_ranks));
  mat Z(N, V);  // the ranks' logits side by side; column block r from W_r, b_r alone
  for (int r = 0; r < n_ranks; ++r) {
    const int64_t b0 = bounds[r], w = bounds[r + 1] - b0;
    mat& W = Wr[static_cast<size_t>(r)];
    W = detail::widen_rows(in.weight, w, Hd, ldw, b0);
    const mat zr = detail::project(H, W, in.bias != nullptr ? in.bias + b0 : in.bias);
    if (w > 0) Z.middleCols(b0, w) = zr;
  }

  const bool backward =
      out.grad_hidden != nullptr || out.grad_weight != nullptr || out.grad_bias != nullptr ||
      grad_hidden_partials != nullptr;
  mat G;
  const status s =
      detail::run_on_logits(detail::logits_inputs(in, Z), out, backward, G,
                            [&](const auto& x, outputs& o) {
                              return compute_vocab_parallel(x, opt, bounds, n_ranks, slot, o);
                            });
  if (s != status::success || !backward) return s;

  mat gh = mat::Zero(N, Hd);
  for (int r = 0; r < n_ranks; ++r) {  // each rank's own products, then the rank-order sum
    const int64_t b0 = bounds[r], w = bounds[r + 1] - b0;
    const mat Gr = G.middleCols(b0, w);
    const mat part = Gr * Wr[static_cast<size_t>(r)];
    gh += part;
    if (grad_hidden_partials != nullptr)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t k = 0; k < Hd; ++k) grad_hidden_partials[(r * N + t) * Hd + k] = part(t, k);
    detail::write_weight_grads(Gr, H, b0, ldgw, out);
  }
  if (out.grad_hidden != nullptr) detail::write_hidden_grad(gh, ldgh, out.grad_hidden);
  return status::success;
}

}  // namespace geopref::reference
