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
#include <algorithm>
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

/// The logit the softmax sees, z' = apply(transform, z) (options.hpp), and
/// ∂z'/∂z. The identity transform gives z itself and 1, exactly.
template <class Logit>
inline double logit_at(const logit_transform& tr, Logit x) {
  return apply(tr, to_double(x));
}
template <class Logit>
inline double logit_slope(const logit_transform& tr, Logit x) {
  return slope(tr, to_double(x));
}

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
  if (const status s = validate(in.logit_transform); s != status::success) return s;
  if (all_terms_reference_free(opt.loss) && in.ref_logps != nullptr)
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
  if (in.token_weights != nullptr && S > 0) {
    // Only scored rows' weights are read, so only theirs are checked.
    const int64_t end = static_cast<int64_t>(in.offsets[S]);
    for (int64_t t = 0; t < end; ++t)
      if (in.labels[t] != opt.ignore_index && !is_finite(in.token_weights[t]))
        return status::invalid_weight;
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

/// The pair step (docs/math.md §7, "The pair step"): per pair, the log-prob form
/// each term asks for, its log-ratios, value and derivatives, converted to
/// ∂/∂L_s of the summed log-prob (1/n_s for averaged forms); then the
/// batch-coupled terms (sft, sorted). out.loss is the unreduced Σ of the
/// per-pair losses. `margin_for(t)` gives the margin functor of term type t.
template <class MarginFor>
void run_pairs(const pair_inputs& in, const options& opt, const MarginFor& margin_for,
               pair_outputs& out) {
  const int64_t S = in.n_seqs, P = in.n_pairs;
  const loss_config& lc = opt.loss;
  const double beta = lc.beta;
  const double norm = reduction_divisor(opt, P);
  const transform_fn<double> phi{lc.transform, lc.f_alpha};
  auto first = [&](int64_t i) { return in.pairs ? in.pairs[2 * i] : i; };
  auto second = [&](int64_t i) { return in.pairs ? in.pairs[2 * i + 1] : P + i; };
  auto avg = [&](int64_t s) {
    return in.seq_counts[s] > 0 ? in.seq_sums[s] / static_cast<double>(in.seq_counts[s]) : 0.0;
  };
  // The log-prob of sequence s in a form, and ∂(that form)/∂L_s.
  auto form = [&](int64_t s, bool averaged) { return averaged ? avg(s) : in.seq_sums[s]; };
  auto to_sum = [&](int64_t s, bool averaged, double d) {
    if (!averaged) return d;
    return in.seq_counts[s] > 0 ? d / static_cast<double>(in.seq_counts[s]) : 0.0;
  };
  auto ref = [&](int64_t s) { return in.ref_logps ? in.ref_logps[s] : 0.0; };
  const bool shown_avg = uses_average_logps(opt);

  std::vector<double> coef_a(static_cast<size_t>(P), 0.0), coef_b(static_cast<size_t>(P), 0.0);
  std::vector<double> pl(static_cast<size_t>(P), 0.0), scale(static_cast<size_t>(P), 0.0);
  std::vector<double> prob(static_cast<size_t>(P), 1.0), wt(static_cast<size_t>(P), 1.0);
  metrics st{};
  for (int64_t i = 0; i < P; ++i) {
    const int64_t a = first(i), b = second(i);
    const double p = in.soft_labels ? in.soft_labels[i] : 1.0;
    const double w = in.weights ? in.weights[i] : 1.0;
    double upstream = in.grad_loss;
    if (opt.reduce == reduction::none && in.grad_pair_losses) upstream *= in.grad_pair_losses[i];
    prob[i] = p;
    wt[i] = w;
    // ∂Loss/∂(pair i's loss) = upstream · w_i / norm.
    scale[i] = upstream * (w / norm);

    // Metrics and the reported margin: the reported form, the transform.
    const double ma = form(a, shown_avg), mb = form(b, shown_avg);
    const double ha = ma - ref(a), hb = mb - ref(b);
    const double h_shown = phi.phi(ha) - phi.phi(hb);
    if (out.margins) out.margins[i] = lc.transform == margin_transform::reverse_kl ? ha - hb : h_shown;
    const double rc = beta * ha, rr = beta * hb;
    st.rewards_chosen += rc;
    st.rewards_rejected += rr;
    st.rewards_accuracies += rc > rr ? 1.0 : 0.0;
    st.rewards_margins += rc - rr;
    st.logps_chosen += ma;
    st.logps_rejected += mb;
    st.calibration_error += std::fabs(math::sigmoid(beta * h_shown) - p);

    // A zero-weight pair contributes exactly nothing, even if its loss is
    // infinite (0·∞ would otherwise give NaN).
    if (w == 0.0) continue;
    for (int k = 0; k < term_count(lc); ++k) {
      const loss_type t = term_type(lc, k);
      const double lambda = term_weight(lc, k);
      const loss_kind kind = kind_of(t);
      if (kind == loss_kind::sorted || kind == loss_kind::sft) continue;  // batch-coupled, below
      const bool av = term_averaged(opt, t);
      const bool free = is_reference_free(t);
      const double xa = form(a, av), xb = form(b, av);
      const double rw = xa - (free ? 0.0 : ref(a)), rl = xb - (free ? 0.0 : ref(b));
      double v = 0, dw = 0, dl = 0;  // value, ∂/∂x_a, ∂/∂x_b
      if (kind == loss_kind::margin) {
        const auto f = margin_for(t);
        const double h = lc.transform == margin_transform::reverse_kl ? rw - rl : phi.phi(rw) - phi.phi(rl);
        // The geometric form: f((2p̂ − 1) h), chain rule (2p̂ − 1) f'.
        const double g = lc.geometric ? 2.0 * p - 1.0 : 1.0;
        v = f.value(g * h, p);
        const double d = g * f.derivative(g * h, p);
        dw = d * phi.dphi(rw);
        dl = -d * phi.dphi(rl);
      } else {
        const pair_grad<double> r = two_sided_term<double>(t, beta, lc.bco_delta, rw, rl);
        v = r.value, dw = r.d_w, dl = r.d_l;
      }
      pl[i] += lambda * w * v;
      coef_a[i] += scale[i] * lambda * to_sum(a, av, dw);
      coef_b[i] += scale[i] * lambda * to_sum(b, av, dl);
    }
  }

  // ---- batch-coupled terms, over the pairs with non-zero weight.
  for (int k = 0; k < term_count(lc); ++k) {
    const loss_type t = term_type(lc, k);
    const double lambda = term_weight(lc, k);
    if (kind_of(t) == loss_kind::sft) {
      // NLL = −Σ_i L_{a_i} / Σ_i n_{a_i}; every pair's loss is w_i · NLL (TRL
      // adds the batch NLL to each pair's loss), so ∂Loss/∂L_{a_j} =
      // −(Σ_i scale_i) / Σ_i n_{a_i}.
      double sum = 0.0, scales = 0.0;
      int64_t n = 0;
      for (int64_t i = 0; i < P; ++i)
        if (wt[i] != 0.0) sum += in.seq_sums[first(i)], n += in.seq_counts[first(i)], scales += scale[i];
      if (opt.nll_tokens > 0.0) {
        // Data parallel: n and Σ w over every rank's live pairs are given
        // (W_g, n_g); one upstream u for all pairs (not reduction::none).
        // Pair i's share λ (W_g / n_g)(−L_{a_i}) sums over all ranks' pairs
        // to λ W_g NLL_g, and ∂/∂L_{a_i} = −λ u W_g / (norm n_g) is the
        // single-process coefficient with the global sums.
        const double ratio = opt.nll_weight / opt.nll_tokens;
        const double c = -lambda * in.grad_loss * (opt.nll_weight / norm) / opt.nll_tokens;
        for (int64_t i = 0; i < P; ++i)
          if (wt[i] != 0.0) pl[i] += lambda * ratio * -in.seq_sums[first(i)], coef_a[i] += c;
        continue;
      }
      const double nll = n > 0 ? -sum / static_cast<double>(n) : 0.0;
      const double c = n > 0 ? -lambda * scales / static_cast<double>(n) : 0.0;
      for (int64_t i = 0; i < P; ++i)
        if (wt[i] != 0.0) pl[i] += lambda * wt[i] * nll, coef_a[i] += c;
    } else if (kind_of(t) == loss_kind::sorted) {
      // aot: δ_k = sort(x)_k − sort(y)_k with x_i = x_{a_i} − x_{b_i} (policy)
      // and y_i = R_{a_i} − R_{b_i}; aot_unpaired: x_i = ρ_w, y_i = ρ_l.
      // Position k takes the weight, soft label and upstream gradient of the
      // k-th non-zero-weight pair (TRL multiplies the sorted losses
      // elementwise); the loss is cdpo's with p̂ (TRL's label_smoothing 1 − p̂).
      const bool av = term_averaged(opt, t);
      std::vector<int64_t> live;
      for (int64_t i = 0; i < P; ++i)
        if (wt[i] != 0.0) live.push_back(i);
      const auto m = static_cast<int64_t>(live.size());
      std::vector<double> x(static_cast<size_t>(P)), y(static_cast<size_t>(P));
      for (int64_t i : live) {
        const int64_t a = first(i), b = second(i);
        const double xa = form(a, av), xb = form(b, av);
        if (t == loss_type::aot) x[i] = xa - xb, y[i] = ref(a) - ref(b);
        else x[i] = xa - ref(a), y[i] = xb - ref(b);
      }
      auto sorted = [&](const std::vector<double>& v) {
        std::vector<int64_t> perm = live;
        std::stable_sort(perm.begin(), perm.end(), [&](int64_t i, int64_t j) {
          return math::sort_key(v[i]) < math::sort_key(v[j]);
        });
        return perm;
      };
      const std::vector<int64_t> px = sorted(x), py = sorted(y);
      const cdpo_loss<double> f{beta};
      for (int64_t q = 0; q < m; ++q) {
        const int64_t j = live[q];
        const double delta = x[px[q]] - y[py[q]];
        pl[j] += lambda * wt[j] * f.value(delta, prob[j]);
        const double d = scale[j] * lambda * f.derivative(delta, prob[j]);
        const int64_t i = px[q];
        coef_a[i] += to_sum(first(i), av, d);
        if (t == loss_type::aot) {
          coef_b[i] -= to_sum(second(i), av, d);
        } else {
          const int64_t r = py[q];
          coef_b[r] -= to_sum(second(r), av, d);
        }
      }
    }
  }

  double total = 0.0;
  for (int64_t i = 0; i < P; ++i) total += pl[i];
  if (out.pair_losses)
    for (int64_t i = 0; i < P; ++i) out.pair_losses[i] = pl[i];
  if (out.grad_seq_sums) {
    for (int64_t s = 0; s < S; ++s) out.grad_seq_sums[s] = 0.0;
    for (int64_t i = 0; i < P; ++i) {
      out.grad_seq_sums[first(i)] += coef_a[i];
      out.grad_seq_sums[second(i)] += coef_b[i];
    }
  }
  out.sums = {st.rewards_chosen, st.rewards_rejected, st.rewards_accuracies, st.rewards_margins,
              st.logps_chosen, st.logps_rejected, st.calibration_error, static_cast<double>(P)};
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
  out.loss = total;
  out.stats = st;
}

/// The margin functor of each built-in term type.
struct builtin_margin {
  loss_config config;
  any_loss<double> operator()(loss_type t) const {
    any_loss<double> l(config);
    l.type = t;
    return l;
  }
};

/// A caller's margin loss, for every margin term.
template <class Loss>
struct custom_margin {
  const Loss& loss;
  const Loss& operator()(loss_type) const { return loss; }
};

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
    for (int64_t t = in.offsets[s]; t < static_cast<int64_t>(in.offsets[s + 1]); ++t) {
      if (!scored(t)) {
        zero_row(t);
        continue;
      }
      // ∂L_s/∂ℓ_t = w_t (1 without token weights).
      const double g = in.token_weights ? grad_sum[s] * in.token_weights[t] : grad_sum[s];
      const Logit* z = in.logits + t * in.ld;
      const int64_t y = in.labels[t];
      double* g_row = grad_logits + t * gld;
      for (int64_t v = 0; v < V; ++v) {
        const double d = logit_at(in.logit_transform, z[v]) - lse[t];
        // 1 − e^{ℓ} as −expm1(ℓ) keeps the label column accurate when the
        // model is confident; the chain rule through the transform last.
        g_row[v] = (v == y ? g * -std::expm1(d) : g * -std::exp(d)) *
                   logit_slope(in.logit_transform, z[v]);
      }
    }
  }
  for (int64_t t = rows_in_seqs; t < N; ++t) zero_row(t);  // rows outside every sequence
}

template <class Logit, class Label, class Offset, class MarginFor>
void run_rows(const inputs<Logit, Label, Offset>& in, const options& opt, const MarginFor& margin_for,
              const std::vector<double>& lse, const std::vector<double>& logp, outputs& out);

/// The whole computation after validation. Writes only requested outputs.
template <class Logit, class Label, class Offset, class MarginFor>
void run(const inputs<Logit, Label, Offset>& in, const options& opt, const MarginFor& margin_for,
         outputs& out) {
  const int64_t N = in.n_rows, V = in.vocab, S = in.n_seqs;
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
    const logit_transform& tr = in.logit_transform;
    for (int64_t v = 0; v < V; ++v) {
      const double x = logit_at(tr, z(v));
      if (x > m) m = x;  // NaN never wins here, but poisons the sum below
    }
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(logit_at(tr, z(v)) - m);
    // A row without a finite maximum (all −∞, or a +∞) gives NaN: m − m is NaN
    // (a soft-cap maps ±∞ to ±c/T, which is finite).
    lse[t] = m + std::log(sum);
    logp[t] = logit_at(tr, z(static_cast<int64_t>(in.labels[t]))) - lse[t];
  }

  run_rows(in, opt, margin_for, lse, logp, out);
}

/// Everything after the forward pass, from lse_t and ℓ_t [N] (0 for unscored
/// rows): sequence sums, the pair step, the outputs and the backward. The
/// vocab-parallel reference (vocab_parallel.hpp) enters here with combined
/// lse and ℓ.
template <class Logit, class Label, class Offset, class MarginFor>
void run_rows(const inputs<Logit, Label, Offset>& in, const options& opt, const MarginFor& margin_for,
              const std::vector<double>& lse, const std::vector<double>& logp, outputs& out) {
  const int64_t N = in.n_rows, S = in.n_seqs, P = in.n_pairs;
  const bool averaged = uses_average_logps(opt);
  const int64_t rows_in_seqs = S > 0 ? static_cast<int64_t>(in.offsets[S]) : 0;
  auto scored = [&](int64_t t) {
    return t < rows_in_seqs && static_cast<int64_t>(in.labels[t]) != opt.ignore_index;
  };

  // ---- per sequence: L_s = Σ w_t ℓ_t (row order), n_s.
  std::vector<double> seq_sum(static_cast<size_t>(S), 0.0);
  std::vector<int64_t> count(static_cast<size_t>(S), 0);
  for (int64_t s = 0; s < S; ++s) {
    double acc = 0.0;
    int64_t n = 0;
    for (int64_t t = in.offsets[s]; t < static_cast<int64_t>(in.offsets[s + 1]); ++t)
      if (scored(t)) acc += (in.token_weights ? in.token_weights[t] * logp[t] : logp[t]), ++n;
    seq_sum[s] = acc;
    count[s] = n;
  }
  // The reported form: L̄_s when averaged (an all-masked sequence: 0, never 0/0).
  std::vector<double> seq_m(static_cast<size_t>(S), 0.0);
  for (int64_t s = 0; s < S; ++s)
    seq_m[s] = averaged ? (count[s] > 0 ? seq_sum[s] / static_cast<double>(count[s]) : 0.0)
                        : seq_sum[s];

  // ---- the pair step: every term's losses and coefficients, ∂Loss/∂L_s.
  pair_inputs pin;
  static_cast<pair_set&>(pin) = in;
  pin.n_seqs = S;
  pin.seq_sums = seq_sum.data();
  pin.seq_counts = count.data();
  std::vector<double> pair_loss(static_cast<size_t>(P)), margin(static_cast<size_t>(P));
  std::vector<double> grad_sum(static_cast<size_t>(S), 0.0);
  pair_outputs pout;
  pout.pair_losses = pair_loss.data();
  pout.margins = margin.data();
  pout.grad_seq_sums = grad_sum.data();
  run_pairs(pin, opt, margin_for, pout);
  const double total = pout.loss;
  const metrics st = pout.stats;
  out.sums = pout.sums;
  const double norm = reduction_divisor(opt, P);

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
  detail::run(in, opt, detail::custom_margin<Loss>{loss}, out);
  return status::success;
}

template <class Logit, class Label, class Offset>
status compute(const inputs<Logit, Label, Offset>& in, const options& opt, outputs& out) {
  static_assert(detail::is_supported_logit_v<Logit>,
                "logits must be float, double, Eigen::half or Eigen::bfloat16");
  static_assert(detail::is_supported_index_v<Label>, "labels must be int32_t or int64_t");
  static_assert(detail::is_supported_index_v<Offset>, "offsets must be int32_t or int64_t");
  const status s = detail::validate_inputs(in, opt, out);
  if (s != status::success) return s;
  detail::run(in, opt, detail::builtin_margin{opt.loss}, out);
  return status::success;
}

template <class Loss>
status pair_step_with_loss(const pair_inputs& in, const options& opt, const Loss& loss,
                           pair_outputs& out) {
  if (const status s = validate(opt); s != status::success) return s;
  detail::run_pairs(in, opt, detail::custom_margin<Loss>{loss}, out);
  if (opt.reduce != reduction::none) out.loss /= reduction_divisor(opt, in.n_pairs);
  return status::success;
}

inline status pair_step(const pair_inputs& in, const options& opt, pair_outputs& out) {
  if (const status s = validate(opt); s != status::success) return s;
  detail::run_pairs(in, opt, detail::builtin_margin{opt.loss}, out);
  if (opt.reduce != reduction::none) out.loss /= reduction_divisor(opt, in.n_pairs);
  return status::success;
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
  if (const status s = validate(in.logit_transform); s != status::success) return s;
  if (const status s = detail::validate_offsets_labels(in, opt); s != status::success) return s;
  if (in.token_weights != nullptr && S > 0)  // as compute(): scored rows' weights only
    for (int64_t t = 0; t < static_cast<int64_t>(in.offsets[S]); ++t)
      if (in.labels[t] != opt.ignore_index && !detail::is_finite(in.token_weights[t]))
        return status::invalid_weight;
  detail::write_logits_grad(in, opt, lse, grad_seq_logps, grad_logits, gld);
  return status::success;
}

}  // namespace geopref::reference
