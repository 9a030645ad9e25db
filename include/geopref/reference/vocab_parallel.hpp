// geopref/reference/vocab_parallel.hpp — the CPU reference of the
// vocab-parallel path (geopref/cuda/vocab_parallel.cuh), in double, over
// simulated ranks: each rank's slice → one record per row; the records of
// all ranks, in whatever order they were gathered, combined in rank order;
// then the unsharded reference from lse and ℓ on (sequence sums, pair step),
// and each rank's backward into its own slice of the gradient.
//
//   slice:    m_r = max_{v ∈ r} z_tv,  s_r = Σ_{v ∈ r} exp(z_tv − m_r),
//             the label logit z_{t,y_t} when y_t ∈ r
//   combine:  M = max_r m_r,  lse_t = M + log Σ_r s_r exp(m_r − M)   (rank order)
//             ℓ_t = z_{t,y_t} − lse_t
//   backward: grad[t, v] = g_t (𝟙[v = y_t] − exp(z_tv − lse_t)) for v ∈ r only
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "geopref/reference/reference.hpp"

namespace geopref::reference {

/// One row's statistics of one slice (double; the device record is float).
struct vocab_record {
  double m = -std::numeric_limits<double>::infinity();  // the slice's max (−∞: empty/unscored)
  double s = 0.0;                                       // Σ exp(z − m) over the slice
  double label = 0.0;                                   // z[t, y_t] when owned
  int rank = 0;
  bool owns = false;  // y_t lies in this slice
};

/// The records [N] of the slice [begin, begin + in.vocab) of a vocabulary of
/// `total` columns: `in` describes the slice (logits pointing at its first
/// column, vocab = its width, the global labels and offsets). Labels are
/// validated against `total`.
template <class Logit, class Label, class Offset>
status vocab_stats(const inputs<Logit, Label, Offset>& in, int64_t begin, int64_t total, int rank,
                   const options& opt, vocab_record* out) {
  const int64_t N = in.n_rows, W = in.vocab, S = in.n_seqs;
  if (N < 0 || W < 0 || S < 0 || (N > 0 && W == 0)) return status::invalid_shape;
  if (in.ld < W) return status::invalid_stride;
  if (begin < 0 || total < W || begin > total - W || rank < 0) return status::invalid_vocab_records;
  if (N > 0 && (in.logits == nullptr || in.labels == nullptr || out == nullptr))
    return status::null_pointer;
  if (S > 0 && in.offsets == nullptr) return status::null_pointer;
  if (const status s = validate(opt); s != status::success) return s;
  if (const status s = validate(in.logit_transform); s != status::success) return s;
  inputs<Logit, Label, Offset> whole = in;  // the labels against the whole vocabulary
  whole.vocab = total;
  whole.ld = total;
  if (const status s = detail::validate_offsets_labels(whole, opt); s != status::success) return s;
  const int64_t rows_in_seqs = S > 0 ? static_cast<int64_t>(in.offsets[S]) : 0;
  for (int64_t t = 0; t < N; ++t) {
    vocab_record r;
    r.rank = rank;
    const auto y = static_cast<int64_t>(in.labels[t]);
    if (t < rows_in_seqs && y != opt.ignore_index) {
      const Logit* z = in.logits + t * in.ld;
      const logit_transform& tr = in.logit_transform;
      for (int64_t v = 0; v < W; ++v) r.m = std::max(r.m, detail::logit_at(tr, z[v]));
      for (int64_t v = 0; v < W; ++v) r.s += std::exp(detail::logit_at(tr, z[v]) - r.m);
      if (y >= begin && y < begin + W)
        r.owns = true, r.label = detail::logit_at(tr, z[y - begin]);
    }
    out[t] = r;
  }
  return status::success;
}

/// Combines the gathered records [K, N] (slot j holds some rank's [N]
/// records, in any order) in rank order into lse [N] and ℓ [N] (0 for
/// unscored rows: `scored[t]` false). invalid_vocab_records when a scored
/// row's records do not hold every rank once, or its label is owned by
/// other than one slice.
inline status vocab_combine(const vocab_record* records, int n_ranks, int64_t n_rows,
                            const std::vector<bool>& scored, double* lse, double* token_logp) {
  for (int64_t t = 0; t < n_rows; ++t) {
    lse[t] = 0.0;
    token_logp[t] = 0.0;
    if (!scored[static_cast<size_t>(t)]) continue;
    std::vector<const vocab_record*> by_rank(static_cast<size_t>(n_ranks), nullptr);
    for (int j = 0; j < n_ranks; ++j) {
      const vocab_record& q = records[static_cast<int64_t>(j) * n_rows + t];
      if (q.rank < 0 || q.rank >= n_ranks || by_rank[static_cast<size_t>(q.rank)] != nullptr)
        return status::invalid_vocab_records;
      by_rank[static_cast<size_t>(q.rank)] = &q;
    }
    double big = -std::numeric_limits<double>::infinity(), label = 0.0;
    int owners = 0;
    for (const vocab_record* q : by_rank) {
      big = std::max(big, q->m);
      if (q->owns) label = q->label, ++owners;
    }
    if (owners != 1) return status::invalid_vocab_records;
    double sum = 0.0;
    for (const vocab_record* q : by_rank) sum += q->s * std::exp(q->m - big);  // rank order
    lse[t] = big + std::log(sum);
    token_logp[t] = label - lse[t];
  }
  return status::success;
}

/// The backward into one rank's slice (grad_slice: [N, grad_ld], its column 0
/// the slice's first): g (𝟙[v = y_t] − exp(z − lse_t)) for the slice's
/// columns of scored rows, 0 for other rows. `in` describes the slice as in
/// vocab_stats; lse [N] and grad_seq_logps [S] come from the combined step.
template <class Logit, class Label, class Offset>
void vocab_slice_grad(const inputs<Logit, Label, Offset>& in, int64_t begin, const options& opt,
                      const double* lse, const double* grad_seq_logps, double* grad_slice,
                      int64_t grad_ld) {
  // The unsharded backward over the slice, with each label moved into the
  // slice's columns, or to a column it does not have (scored, no label
  // column) when another slice owns it.
  const int64_t W = in.vocab;
  const int64_t none = W != opt.ignore_index ? W : W + 1;
  std::vector<Label> local(static_cast<size_t>(in.n_rows));
  for (int64_t t = 0; t < in.n_rows; ++t) {
    const auto y = static_cast<int64_t>(in.labels[t]);
    local[static_cast<size_t>(t)] = static_cast<Label>(
        y == opt.ignore_index ? y : (y >= begin && y < begin + W ? y - begin : none));
  }
  inputs<Logit, Label, Offset> sl = in;
  sl.labels = local.data();
  detail::write_logits_grad(sl, opt, lse, grad_seq_logps, grad_slice, grad_ld);
}

/// The whole vocab-parallel step of K simulated ranks over the full problem
/// `in` (what compute() computes, with the forward sharded): rank r owns
/// columns [bounds[r], bounds[r + 1]) (bounds [K + 1], a tiling of [0, V):
/// bounds[0] = 0, non-decreasing, bounds[K] = V, every width >= 1 when N > 0);
/// its records land in slot slot[r] of the gathered buffer (null: slot r).
/// Every output of compute(); the gradient is written slice by slice.
template <class Logit, class Label, class Offset>
status compute_vocab_parallel(const inputs<Logit, Label, Offset>& in, const options& opt,
                              const int64_t* bounds, int n_ranks, const int* slot, outputs& out) {
  if (const status s = detail::validate_inputs(in, opt, out); s != status::success) return s;
  if (n_ranks < 1 || bounds == nullptr || bounds[0] != 0 || bounds[n_ranks] != in.vocab)
    return status::invalid_vocab_records;
  for (int r = 0; r < n_ranks; ++r)
    if (bounds[r + 1] < bounds[r] + (in.n_rows > 0 ? 1 : 0)) return status::invalid_vocab_records;
  const int64_t N = in.n_rows, S = in.n_seqs;
  std::vector<vocab_record> gathered(static_cast<size_t>(N * n_ranks));
  for (int r = 0; r < n_ranks; ++r) {
    inputs<Logit, Label, Offset> sl = in;
    sl.logits = in.logits + bounds[r];
    sl.vocab = bounds[r + 1] - bounds[r];
    const int j = slot != nullptr ? slot[r] : r;
    if (j < 0 || j >= n_ranks) return status::invalid_vocab_records;
    const status s = vocab_stats(sl, bounds[r], in.vocab, r, opt, gathered.data() + static_cast<int64_t>(j) * N);
    if (s != status::success) return s;
  }
  const int64_t rows_in_seqs = S > 0 ? static_cast<int64_t>(in.offsets[S]) : 0;
  std::vector<bool> scored(static_cast<size_t>(N));
  for (int64_t t = 0; t < N; ++t)
    scored[static_cast<size_t>(t)] = t < rows_in_seqs && static_cast<int64_t>(in.labels[t]) != opt.ignore_index;
  std::vector<double> lse(static_cast<size_t>(N)), logp(static_cast<size_t>(N));
  if (const status s = vocab_combine(gathered.data(), n_ranks, N, scored, lse.data(), logp.data());
      s != status::success)
    return s;

  // The unsharded rest, with the backward left to the slices.
  std::vector<double> grad_seq(static_cast<size_t>(S));
  double* grad = out.grad_logits;
  const int64_t gld = detail::grad_stride(in, out);
  double* keep_grad_seq = out.grad_seq_logps;
  outputs rest = out;
  rest.grad_logits = nullptr;
  rest.grad_seq_logps = grad_seq.data();
  detail::run_rows(in, opt, detail::builtin_margin{opt.loss}, lse, logp, rest);
  if (keep_grad_seq != nullptr) std::copy(grad_seq.begin(), grad_seq.end(), keep_grad_seq);
  rest.grad_logits = grad;
  rest.grad_seq_logps = keep_grad_seq;
  out = rest;
  if (grad != nullptr)
    for (int r = 0; r < n_ranks; ++r) {
      inputs<Logit, Label, Offset> sl = in;
      sl.logits = in.logits + bounds[r];
      sl.vocab = bounds[r + 1] - bounds[r];
      vocab_slice_grad(sl, bounds[r], opt, lse.data(), grad_seq.data(), grad + bounds[r], gld);
    }
  return status::success;
}

}  // namespace geopref::reference
