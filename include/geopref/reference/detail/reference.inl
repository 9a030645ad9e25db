// Definitions of geopref/reference/reference.hpp — the CPU reference.
//
// Written for clarity and exactness, not speed, but still one pass per row
// (max, then sum of exponentials) so N·V ≈ 1e7 takes well under a second with
// optimisation on. All arithmetic is in double whatever the logit type: half
// and bfloat16 values are widened exactly, so the reference sees the same
// rounded numbers a GPU kernel reads.
//
// Order of work: validate every input (no output is touched on error), then
// forward per row, per sequence, per pair, then the backward, then write the
// requested outputs. Every sum runs in a fixed order, so results are
// bitwise reproducible.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace geopref::reference {
namespace detail {

template <class Logit>
inline constexpr bool is_supported_logit_v =
    std::is_same_v<Logit, float> || std::is_same_v<Logit, double> ||
    std::is_same_v<Logit, Eigen::half> || std::is_same_v<Logit, Eigen::bfloat16>;

template <class Index>
inline constexpr bool is_supported_index_v =
    std::is_same_v<Index, int32_t> || std::is_same_v<Index, int64_t>;

/// Exact widening: half and bfloat16 convert to float losslessly, float to
/// double losslessly.
template <class Logit>
inline double to_double(Logit x) {
  if constexpr (std::is_same_v<Logit, double>) {
    return x;
  } else {
    return static_cast<double>(static_cast<float>(x));
  }
}

inline bool is_finite(double x) { return std::isfinite(x); }

/// The effective row stride of grad_logits (0 means "same as the logits").
template <class Logit, class Label, class Offset>
inline int64_t grad_stride(const inputs<Logit, Label, Offset>& in, const outputs& out) {
  return out.grad_ld != 0 ? out.grad_ld : in.ld;
}

/// Offsets (start at 0, non-decreasing, end at most at N), then every row's
/// label, scored or not (ignore_index or in [0, V)). Sizes and null pointers
/// are checked before this is called.
template <class Logit, class Label, class Offset>
status validate_offsets_labels(const inputs<Logit, Label, Offset>& in, const options& opt) {
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs;
  if (in.offsets != nullptr) {
    if (static_cast<int64_t>(in.offsets[0]) != 0) return status::invalid_offsets;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t lo = in.offsets[s], hi = in.offsets[s + 1];
      if (hi < lo) return status::invalid_offsets;
    }
    if (static_cast<int64_t>(in.offsets[S]) > N) return status::invalid_offsets;
  }
  for (int64_t t = 0; t < N; ++t) {
    const int64_t y = in.labels[t];
    if (y != opt.ignore_index && (y < 0 || y >= V)) return status::label_out_of_range;
  }
  return status::success;
}

/// Validates everything compute() reads, in a fixed order; the first problem
/// found is returned. Reads only [0, N) labels, [0, S] offsets and [0, P)
/// entries of the per-pair arrays, never the logits.
template <class Logit, class Label, class Offset>
status validate_inputs(const inputs<Logit, Label, Offset>& in, const options& opt,
                       const outputs& out) {
  // What to compute.
  if (const status s = validate(opt); s != status::success) return s;
  if (is_reference_free(opt.loss.type) && in.ref_logps != nullptr)
    return status::reference_not_allowed;

  // Sizes and strides.
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs, P = in.n_pairs;
  if (N < 0 || V < 0 || S < 0 || P < 0) return status::invalid_shape;
  if (N > 0 && V == 0) return status::invalid_shape;
  // Sizes no buffer can have: 2P and N·ld (the last row's offset) must not
  // overflow int64, or the checks and the indexing below would.
  constexpr int64_t max_i64 = std::numeric_limits<int64_t>::max();
  if (P > max_i64 / 2) return status::invalid_shape;
  if (in.ld < V) return status::invalid_stride;
  if (N > 0 && in.ld > max_i64 / N) return status::invalid_shape;
  if (out.grad_logits != nullptr && (out.grad_ld < 0 || grad_stride(in, out) < V))
    return status::invalid_stride;
  if (out.grad_logits != nullptr && N > 0 && grad_stride(in, out) > max_i64 / N)
    return status::invalid_shape;

  // Required buffers (optional ones: pairs, soft_labels, ref_logps, weights,
  // grad_pair_losses, every output).
  if (N > 0 && (in.logits == nullptr || in.labels == nullptr)) return status::null_pointer;
  if (S > 0 && in.offsets == nullptr) return status::null_pointer;

  if (const status s = validate_offsets_labels(in, opt); s != status::success) return s;

  // Pairs.
  if (in.pairs == nullptr) {
    if (S != 2 * P) return status::pair_count_mismatch;
  } else {
    for (int64_t i = 0; i < 2 * P; ++i)
      if (in.pairs[i] < 0 || in.pairs[i] >= S) return status::pair_index_out_of_range;
  }

  // Per-pair and per-sequence values.
  if (in.soft_labels != nullptr)
    for (int64_t i = 0; i < P; ++i) {
      const double p = in.soft_labels[i];
      if (!(p >= 0.0 && p <= 1.0)) return status::soft_label_out_of_range;  // NaN fails too
    }
  if (in.weights != nullptr)
    for (int64_t i = 0; i < P; ++i) {
      const double w = in.weights[i];
      if (!(is_finite(w) && w >= 0.0)) return status::invalid_weight;
    }
  if (in.ref_logps != nullptr)
    for (int64_t s = 0; s < S; ++s) {
      const double r = in.ref_logps[s];
      // −∞ is a legitimate (if extreme) log-probability; NaN and +∞ are not.
      if (std::isnan(r) || r == std::numeric_limits<double>::infinity())
        return status::invalid_reference;
    }

  // Upstream gradients.
  if (!is_finite(in.grad_loss)) return status::invalid_upstream_grad;
  if (opt.reduce == reduction::none && in.grad_pair_losses != nullptr)
    for (int64_t i = 0; i < P; ++i)
      if (!is_finite(in.grad_pair_losses[i])) return status::invalid_upstream_grad;

  return status::success;
}

/// The backward pass over validated inputs: ∂Loss/∂z_tv = g_s (𝟙[v = y_t] −
/// exp(z_tv − lse_t)) for scored rows, 0 elsewhere. Columns [V, gld) are never
/// touched. Each element is read before it is written and nothing else reads
/// it later, so grad_logits may alias the logits (double logits, gld == ld),
/// as in an in-place GPU backward.
template <class Logit, class Label, class Offset>
void write_logits_grad(const inputs<Logit, Label, Offset>& in, const options& opt,
                       const double* lse, const double* grad_sum, double* grad_logits,
                       int64_t gld) {
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs;
  const int64_t rows_in_seqs = S > 0 ? static_cast<int64_t>(in.offsets[S]) : 0;
  auto scored = [&](int64_t t) {
    return t < rows_in_seqs && static_cast<int64_t>(in.labels[t]) != opt.ignore_index;
  };
  auto zero_row = [&](int64_t t) {
    double* g_row = grad_logits + t * gld;
    for (int64_t v = 0; v < V; ++v) g_row[v] = 0.0;
  };
  for (int64_t s = 0; s < S; ++s) {
    const double g = grad_sum[s];
    for (int64_t t = in.offsets[s]; t < static_cast<int64_t>(in.offsets[s + 1]); ++t) {
      if (!scored(t)) {
        zero_row(t);
        continue;
      }
      const Logit* z = in.logits + t * in.ld;
      const int64_t y = in.labels[t];
      double* g_row = grad_logits + t * gld;
      for (int64_t v = 0; v < V; ++v) {
        const double d = to_double(z[v]) - lse[t];
        // 1 − e^{ℓ} as −expm1(ℓ) keeps the label column accurate when the
        // model is confident.
        g_row[v] = v == y ? g * -std::expm1(d) : g * -std::exp(d);
      }
    }
  }
  for (int64_t t = rows_in_seqs; t < N; ++t) zero_row(t);  // rows outside every sequence
}

/// The whole computation after validation. Writes only requested outputs.
template <class Logit, class Label, class Offset, class Loss>
void run(const inputs<Logit, Label, Offset>& in, const options& opt, const Loss& loss,
         outputs& out) {
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs, P = in.n_pairs;
  const bool averaged = uses_average_logps(opt);
  const int64_t rows_in_seqs = S > 0 ? static_cast<int64_t>(in.offsets[S]) : 0;

  using logit_matrix = Eigen::Matrix<Logit, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using logit_map = Eigen::Map<const logit_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
  // [N, ld] row-major; only columns [0, V) are read.
  const logit_map Z(in.logits, N, V, Eigen::OuterStride<>(in.ld > 0 ? in.ld : 1));

  // A row is scored when it lies inside some sequence (t < offsets[S]) and
  // its label is not ignore_index.
  auto scored = [&](int64_t t) {
    return t < rows_in_seqs && static_cast<int64_t>(in.labels[t]) != opt.ignore_index;
  };

  // ---- forward, per row: lse_t = m + log Σ_v exp(z_tv − m), ℓ_t = z_{t,y} − lse_t.
  std::vector<double> lse(static_cast<size_t>(N), 0.0), logp(static_cast<size_t>(N), 0.0);
  for (int64_t t = 0; t < N; ++t) {
    if (!scored(t)) continue;
    const auto z = Z.row(t);
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < V; ++v) {
      const double x = to_double(z(v));
      if (x > m) m = x;  // NaN never wins here, but poisons the sum below
    }
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(to_double(z(v)) - m);
    // A row without a finite maximum (all −∞, or a +∞) gives NaN: m − m is NaN.
    lse[t] = m + std::log(sum);
    logp[t] = to_double(z(static_cast<int64_t>(in.labels[t]))) - lse[t];
  }

  // ---- per sequence: L_s = Σ ℓ_t (row order), n_s, and the margin's form M_s.
  std::vector<double> seq_sum(static_cast<size_t>(S), 0.0), seq_m(static_cast<size_t>(S), 0.0);
  std::vector<int64_t> count(static_cast<size_t>(S), 0);
  for (int64_t s = 0; s < S; ++s) {
    double acc = 0.0;
    int64_t n = 0;
    for (int64_t t = in.offsets[s]; t < static_cast<int64_t>(in.offsets[s + 1]); ++t)
      if (scored(t)) acc += logp[t], ++n;
    seq_sum[s] = acc;
    count[s] = n;
    // An all-masked sequence has L = 0, n = 0 and average 0 (never 0/0).
    seq_m[s] = averaged ? (n > 0 ? acc / static_cast<double>(n) : 0.0) : acc;
  }

  // ---- per pair: h_i, f_i, f'_i, then the reduction and the coefficients.
  const double norm = reduction_divisor(opt, P);
  const double beta = opt.loss.beta;
  std::vector<double> margin(static_cast<size_t>(P)), pair_loss(static_cast<size_t>(P));
  std::vector<double> grad_m(static_cast<size_t>(S), 0.0);  // ∂Loss/∂M_s
  metrics st{};
  double total = 0.0;
  for (int64_t i = 0; i < P; ++i) {
    const int64_t a = in.pairs ? in.pairs[2 * i] : i;
    const int64_t b = in.pairs ? in.pairs[2 * i + 1] : P + i;
    const double ra = in.ref_logps ? in.ref_logps[a] : 0.0;
    const double rb = in.ref_logps ? in.ref_logps[b] : 0.0;
    const double ha = seq_m[a] - ra, hb = seq_m[b] - rb;
    const double h = ha - hb;
    const double p = in.soft_labels ? in.soft_labels[i] : 1.0;
    const double w = in.weights ? in.weights[i] : 1.0;
    margin[i] = h;

    // A zero-weight pair contributes exactly nothing, even if its loss is
    // infinite (0·∞ would otherwise give NaN).
    double wf = 0.0, coef = 0.0;
    if (w != 0.0) {
      wf = w * loss.value(h, p);
      double upstream = in.grad_loss;
      if (opt.reduce == reduction::none && in.grad_pair_losses) upstream *= in.grad_pair_losses[i];
      // ∂Loss/∂h_i = upstream · (w_i / norm) · f'(h_i); geometric losses
      // already include their (2p̂ − 1) in f'.
      coef = upstream * (w / norm) * loss.derivative(h, p);
    }
    pair_loss[i] = wf;
    total += wf;
    grad_m[a] += coef;
    grad_m[b] -= coef;

    const double rc = beta * ha, rr = beta * hb;
    st.rewards_chosen += rc;
    st.rewards_rejected += rr;
    st.rewards_accuracies += rc > rr ? 1.0 : 0.0;
    st.rewards_margins += rc - rr;
    st.logps_chosen += seq_m[a];
    st.logps_rejected += seq_m[b];
    st.calibration_error += std::fabs(math::sigmoid(beta * h) - p);
  }
  if (P > 0) {
    const double inv = 1.0 / static_cast<double>(P);
    st.rewards_chosen *= inv;
    st.rewards_rejected *= inv;
    st.rewards_accuracies *= inv;
    st.rewards_margins *= inv;
    st.logps_chosen *= inv;
    st.logps_rejected *= inv;
    st.calibration_error *= inv;
  }

  // ∂Loss/∂L_s for the *summed* log-prob: 1/n_s when the margin is averaged.
  std::vector<double> grad_sum(static_cast<size_t>(S), 0.0);
  for (int64_t s = 0; s < S; ++s)
    grad_sum[s] = averaged ? (count[s] > 0 ? grad_m[s] / static_cast<double>(count[s]) : 0.0)
                           : grad_m[s];

  // ---- outputs.
  if (out.token_logps)
    for (int64_t t = 0; t < N; ++t) out.token_logps[t] = logp[t];
  if (out.lse)
    for (int64_t t = 0; t < N; ++t) out.lse[t] = lse[t];
  if (out.seq_logps)
    for (int64_t s = 0; s < S; ++s) out.seq_logps[s] = seq_m[s];
  if (out.seq_counts)
    for (int64_t s = 0; s < S; ++s) out.seq_counts[s] = count[s];
  if (out.pair_losses)
    for (int64_t i = 0; i < P; ++i) out.pair_losses[i] = pair_loss[i];
  if (out.margins)
    for (int64_t i = 0; i < P; ++i) out.margins[i] = margin[i];
  if (out.grad_seq_logps)
    for (int64_t s = 0; s < S; ++s) out.grad_seq_logps[s] = grad_sum[s];

  // ---- backward (may alias the logits, see write_logits_grad).
  if (out.grad_logits)
    write_logits_grad(in, opt, lse.data(), grad_sum.data(), out.grad_logits, grad_stride(in, out));

  out.loss = opt.reduce == reduction::none ? total : total / norm;
  out.stats = st;
}

}  // namespace detail

template <class Logit, class Label, class Offset, class Loss>
status compute_with_loss(const inputs<Logit, Label, Offset>& in, const options& opt,
                         const Loss& loss, outputs& out) {
  static_assert(detail::is_supported_logit_v<Logit>,
                "logits must be float, double, Eigen::half or Eigen::bfloat16");
  static_assert(detail::is_supported_index_v<Label>, "labels must be int32_t or int64_t");
  static_assert(detail::is_supported_index_v<Offset>, "offsets must be int32_t or int64_t");
  const status s = detail::validate_inputs(in, opt, out);
  if (s != status::success) return s;
  detail::run(in, opt, loss, out);
  return status::success;
}

template <class Logit, class Label, class Offset>
status compute(const inputs<Logit, Label, Offset>& in, const options& opt, outputs& out) {
  // Validate the loss before building a functor from it.
  if (const status s = validate(opt); s != status::success) return s;
  return compute_with_loss(in, opt, any_loss<double>(opt.loss), out);
}

template <class Logit, class Label, class Offset>
status logits_grad(const inputs<Logit, Label, Offset>& in, const options& opt,
                   const double* lse, const double* grad_seq_logps, double* grad_logits,
                   int64_t grad_ld) {
  static_assert(detail::is_supported_logit_v<Logit>,
                "logits must be float, double, Eigen::half or Eigen::bfloat16");
  static_assert(detail::is_supported_index_v<Label>, "labels must be int32_t or int64_t");
  static_assert(detail::is_supported_index_v<Offset>, "offsets must be int32_t or int64_t");
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs;
  if (N < 0 || V < 0 || S < 0) return status::invalid_shape;
  if (N > 0 && V == 0) return status::invalid_shape;
  constexpr int64_t max_i64 = std::numeric_limits<int64_t>::max();
  if (in.ld < V) return status::invalid_stride;
  if (N > 0 && in.ld > max_i64 / N) return status::invalid_shape;
  const int64_t gld = grad_ld != 0 ? grad_ld : in.ld;
  if (grad_ld < 0 || gld < V) return status::invalid_stride;
  if (N > 0 && gld > max_i64 / N) return status::invalid_shape;
  if (N > 0 && (in.logits == nullptr || in.labels == nullptr || lse == nullptr ||
                grad_logits == nullptr))
    return status::null_pointer;
  if (S > 0 && (in.offsets == nullptr || grad_seq_logps == nullptr)) return status::null_pointer;
  if (const status s = detail::validate_offsets_labels(in, opt); s != status::success) return s;
  detail::write_logits_grad(in, opt, lse, grad_seq_logps, grad_logits, gld);
  return status::success;
}

}  // namespace geopref::reference
