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
  using mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldh = in.ld_hidden == 0 ? Hd : in.ld_hidden;
  const int64_t ldw = in.ld_weight == 0 ? Hd : in.ld_weight;
  const int64_t ldgh = out.ld_grad_hidden == 0 ? Hd : out.ld_grad_hidden;
  const int64_t ldgw = out.ld_grad_weight == 0 ? Hd : out.ld_grad_weight;
  if (N < 0 || Hd < 0 || V < 0 || (N > 0 && (Hd == 0 || V == 0))) return status::invalid_shape;
  if (ldh < Hd || ldw < Hd || ldgh < Hd || ldgw < Hd) return status::invalid_stride;
  if (N > 0 && (in.hidden == nullptr || in.weight == nullptr)) return status::null_pointer;
  if (out.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;
  if (n_ranks < 1 || bounds == nullptr || bounds[0] != 0 || bounds[n_ranks] != V)
    return status::invalid_vocab_records;
  for (int r = 0; r < n_ranks; ++r)
    if (bounds[r + 1] < bounds[r] + (N > 0 ? 1 : 0)) return status::invalid_vocab_records;

  auto widen = [](Elem x) {
    if constexpr (std::is_same_v<Elem, double>) return x;
    else return static_cast<double>(static_cast<float>(x));
  };
  mat H(N, Hd);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < Hd; ++k) H(t, k) = widen(in.hidden[t * ldh + k]);
  std::vector<mat> Wr(static_cast<size_t>(n_ranks));
  mat Z(N, V);  // the ranks' logits side by side; column block r from W_r, b_r alone
  for (int r = 0; r < n_ranks; ++r) {
    const int64_t b0 = bounds[r], w = bounds[r + 1] - b0;
    mat& W = Wr[static_cast<size_t>(r)];
    W.resize(w, Hd);
    for (int64_t v = 0; v < w; ++v)
      for (int64_t k = 0; k < Hd; ++k) W(v, k) = widen(in.weight[(b0 + v) * ldw + k]);
    mat zr = H * W.transpose();
    if (in.bias != nullptr)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t v = 0; v < w; ++v) zr(t, v) += widen(in.bias[b0 + v]);
    if (w > 0) Z.middleCols(b0, w) = zr;
  }

  inputs<double, Label, Offset> x = make_inputs<double, Label, Offset>(
      Z.data(), N, V, in.labels, in.offsets, in.n_seqs, in.n_pairs);
  x.pairs = in.pairs;
  x.soft_labels = in.soft_labels;
  x.ref_logps = in.ref_logps;
  x.weights = in.weights;
  x.token_weights = in.token_weights;
  x.grad_loss = in.grad_loss;
  x.grad_pair_losses = in.grad_pair_losses;
  const bool backward =
      out.grad_hidden != nullptr || out.grad_weight != nullptr || out.grad_bias != nullptr ||
      grad_hidden_partials != nullptr;
  mat G;
  outputs o = out.base;
  if (backward) {
    G.resize(N, V);
    o.grad_logits = G.data();
    o.grad_ld = V;
  } else {
    o.grad_logits = nullptr;
  }
  const status s = compute_vocab_parallel(x, opt, bounds, n_ranks, slot, o);
  if (s != status::success) return s;
  o.grad_logits = out.base.grad_logits;  // the caller's, untouched
  o.grad_ld = out.base.grad_ld;
  out.base = o;
  if (!backward) return status::success;

  mat gh = mat::Zero(N, Hd);
  for (int r = 0; r < n_ranks; ++r) {  // each rank's own products, then the rank-order sum
    const int64_t b0 = bounds[r], w = bounds[r + 1] - b0;
    const mat Gr = G.middleCols(b0, w);
    const mat part = Gr * Wr[static_cast<size_t>(r)];
    gh += part;
    if (grad_hidden_partials != nullptr)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t k = 0; k < Hd; ++k) grad_hidden_partials[(r * N + t) * Hd + k] = part(t, k);
    if (out.grad_weight != nullptr) {
      const mat gw = Gr.transpose() * H;
      for (int64_t v = 0; v < w; ++v)
        for (int64_t k = 0; k < Hd; ++k) {
          double& d = out.grad_weight[(b0 + v) * ldgw + k];
          d = out.accumulate ? d + gw(v, k) : gw(v, k);
        }
    }
    if (out.grad_bias != nullptr)
      for (int64_t v = 0; v < w; ++v) {
        const double g = N > 0 ? Gr.col(v).sum() : 0.0;
        double& d = out.grad_bias[b0 + v];
        d = out.accumulate ? d + g : g;
      }
  }
  if (out.grad_hidden != nullptr)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < Hd; ++k) out.grad_hidden[t * ldgh + k] = gh(t, k);
  return status::success;
}

}  // namespace geopref::reference
