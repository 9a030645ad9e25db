// Shared helpers for the host tests: seeded random problems in every layout
// the reference accepts, typed views of them, and a poisoned output set;
// loss options and logit transforms; the fields of the reference's input
// blocks (rows, sequences, a linear head); rows for the per-token entries
// with their gradient check; Z = H·Wᵀ + b.
#pragma once

#include <catch2/catch.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"

namespace geopref::test {

/// What random problem to build.
struct spec {
  int64_t pairs = 2;
  int64_t vocab = 5;
  int64_t pad = 0;               // ld = vocab + pad; padding holds NaN (must never be read)
  int64_t max_len = 4;           // packed: lengths drawn in [0, max_len]; padded: T = max_len
  bool padded = false;           // [S, T] layout: offsets = s·T, a random tail of each row masked
  double mask_prob = 0.2;        // probability a row's label is ignore_index
  bool explicit_pairs = false;   // S = 2P + 1 sequences, pairs drawn at random (repeats allowed)
  bool soft = true;              // random p̂ in [0, 1] (else binary)
  bool ref = true;               // random reference log-probs
  bool weights = false;          // random weights in [0, 2], one of them 0
  int64_t trailing_rows = 0;     // rows after offsets[S], outside every sequence
  double logit_scale = 2.0;      // logits ~ U(−scale, scale)
};

/// A problem in double / int64, the master copy every typed view is made from.
struct problem {
  int64_t N = 0, V = 0, ld = 0, S = 0, P = 0;
  std::vector<double> logits;   // [N, ld] row-major
  std::vector<int64_t> labels;  // [N]
  std::vector<int64_t> offsets; // [S + 1]
  std::vector<int64_t> pairs;   // [P, 2] or empty (default pairing)
  std::vector<double> soft, ref, weights, grad_pair_losses;  // empty: omitted
  double grad_loss = 1.0;
};

inline problem make_problem(const spec& sp, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  problem pb;
  pb.P = sp.pairs;
  pb.S = sp.explicit_pairs ? 2 * sp.pairs + 1 : 2 * sp.pairs;
  pb.V = sp.vocab;
  pb.ld = sp.vocab + sp.pad;

  std::vector<int64_t> len(static_cast<size_t>(pb.S));
  for (auto& l : len)
    l = sp.padded ? sp.max_len
                  : static_cast<int64_t>(rng() % static_cast<uint64_t>(sp.max_len + 1));
  pb.offsets.assign(1, 0);
  for (int64_t l : len) pb.offsets.push_back(pb.offsets.back() + l);
  pb.N = pb.offsets.back() + sp.trailing_rows;

  pb.logits.assign(static_cast<size_t>(pb.N * pb.ld), std::numeric_limits<double>::quiet_NaN());
  for (int64_t t = 0; t < pb.N; ++t)
    for (int64_t v = 0; v < pb.V; ++v)
      pb.logits[t * pb.ld + v] = sp.logit_scale * (2.0 * unit(rng) - 1.0);

  pb.labels.resize(static_cast<size_t>(pb.N));
  for (int64_t t = 0; t < pb.N; ++t)
    pb.labels[t] = unit(rng) < sp.mask_prob ? -100
                                            : static_cast<int64_t>(rng() % static_cast<uint64_t>(pb.V));
  if (sp.padded)  // right padding: a random tail of each sequence is masked
    for (int64_t s = 0; s < pb.S; ++s) {
      const int64_t keep = static_cast<int64_t>(rng() % static_cast<uint64_t>(sp.max_len + 1));
      for (int64_t t = pb.offsets[s] + keep; t < pb.offsets[s + 1]; ++t) pb.labels[t] = -100;
    }

  if (sp.explicit_pairs)
    for (int64_t i = 0; i < 2 * pb.P; ++i)
      pb.pairs.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(pb.S)));
  if (sp.soft)
    for (int64_t i = 0; i < pb.P; ++i) pb.soft.push_back(unit(rng));
  if (sp.ref)
    for (int64_t s = 0; s < pb.S; ++s) pb.ref.push_back(-3.0 * unit(rng));
  if (sp.weights) {
    for (int64_t i = 0; i < pb.P; ++i) pb.weights.push_back(2.0 * unit(rng));
    if (pb.P > 0) pb.weights[0] = 0.0;
  }
  return pb;
}

/// The problem's buffers in the types a test asks for, and an inputs view.
template <class Logit, class Label, class Offset>
struct typed {
  std::vector<Logit> z;
  std::vector<Label> y;
  std::vector<Offset> off;
  reference::inputs<Logit, Label, Offset> in;

  explicit typed(const problem& pb) {
    z.reserve(pb.logits.size());
    for (double x : pb.logits) z.push_back(static_cast<Logit>(x));
    for (int64_t v : pb.labels) y.push_back(static_cast<Label>(v));
    for (int64_t v : pb.offsets) off.push_back(static_cast<Offset>(v));
    in.logits = z.data();
    in.n_rows = pb.N;
    in.vocab = pb.V;
    in.ld = pb.ld;
    in.labels = y.data();
    in.offsets = off.data();
    in.n_seqs = pb.S;
    in.n_pairs = pb.P;
    in.pairs = pb.pairs.empty() ? nullptr : pb.pairs.data();
    in.soft_labels = pb.soft.empty() ? nullptr : pb.soft.data();
    in.ref_logps = pb.ref.empty() ? nullptr : pb.ref.data();
    in.weights = pb.weights.empty() ? nullptr : pb.weights.data();
    in.grad_loss = pb.grad_loss;
    in.grad_pair_losses = pb.grad_pair_losses.empty() ? nullptr : pb.grad_pair_losses.data();
  }
  typed(const typed&) = delete;
  typed& operator=(const typed&) = delete;
};

/// Every output of the reference, poisoned before a call so that an element
/// the reference should write but does not (or should not write but does)
/// shows up.
struct output_set {
  static constexpr double POISON = -12345.678;
  static constexpr int64_t POISON_INT = -777;
  std::vector<double> token_logps, lse, seq_logps, pair_losses, margins, grad_seq, grad_logits;
  std::vector<int64_t> seq_counts;
  reference::outputs out;

  output_set(int64_t N, int64_t S, int64_t P, int64_t grad_ld, int64_t n_rows_for_grad = -1) {
    const int64_t gr = n_rows_for_grad >= 0 ? n_rows_for_grad : N;
    out.token_logps = poisoned(token_logps, N, POISON);
    out.lse = poisoned(lse, N, POISON);
    out.seq_logps = poisoned(seq_logps, S, POISON);
    out.seq_counts = poisoned(seq_counts, S, POISON_INT);
    out.pair_losses = poisoned(pair_losses, P, POISON);
    out.margins = poisoned(margins, P, POISON);
    out.grad_seq_logps = poisoned(grad_seq, S, POISON);
    out.grad_logits = poisoned(grad_logits, gr * grad_ld, POISON);
    out.grad_ld = grad_ld;
    out.loss = POISON;
    set_stats(POISON);
  }
  output_set(const output_set&) = delete;
  output_set& operator=(const output_set&) = delete;

  /// v as n copies of `poison`; its data, for an output pointer.
  template <class T>
  static T* poisoned(std::vector<T>& v, int64_t n, T poison) {
    v.assign(static_cast<size_t>(n), poison);
    return v.data();
  }

  void set_stats(double v) {
    out.stats.rewards_chosen = out.stats.rewards_rejected = out.stats.rewards_accuracies = v;
    out.stats.rewards_margins = out.stats.logps_chosen = out.stats.logps_rejected = v;
    out.stats.calibration_error = v;
  }

  /// True when nothing was written anywhere.
  bool untouched() const {
    auto all = [](const std::vector<double>& v) {
      for (double x : v)
        if (!(x == POISON)) return false;
      return true;
    };
    for (int64_t c : seq_counts)
      if (c != POISON_INT) return false;
    const metrics& m = out.stats;
    return all(token_logps) && all(lse) && all(seq_logps) && all(pair_losses) && all(margins) &&
           all(grad_seq) && all(grad_logits) && out.loss == POISON && m.rewards_chosen == POISON &&
           m.rewards_rejected == POISON && m.rewards_accuracies == POISON &&
           m.rewards_margins == POISON && m.logps_chosen == POISON &&
           m.logps_rejected == POISON && m.calibration_error == POISON;
  }
};

/// Bitwise equality of two double arrays (NaN payloads included).
inline bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

/// The logits rounded through a narrower type and widened back, padding kept.
template <class Logit>
inline std::vector<double> rounded_through(const std::vector<double>& z) {
  std::vector<double> r(z.size());
  for (size_t i = 0; i < z.size(); ++i)
    r[i] = std::isnan(z[i]) ? z[i] : static_cast<double>(static_cast<float>(static_cast<Logit>(z[i])));
  return r;
}

/// Loss configurations with every parameter set to a value that exercises it.
inline loss_config config_for(loss_type t, double beta = 0.7) {
  loss_config c;
  c.type = t;
  c.beta = beta;
  c.alpha = 1.5;
  c.gamma = 0.3;
  c.epsilon = t == loss_type::robust ? 0.2 : 0.1;
  c.tau = 0.5;
  return c;
}

/// Default options but for the loss, config_for(t, beta).
inline options options_for(loss_type t, double beta = 0.7) {
  options o;
  o.loss = config_for(t, beta);
  return o;
}

/// The logits' fields of a reference inputs or token_rows (by member name):
/// [n, ld] row-major, V = v, and their labels.
template <class Rows>
void set_rows(Rows& r, const double* logits, int64_t n, int64_t v, int64_t ld,
              const int64_t* labels) {
  r.logits = logits;
  r.n_rows = n;
  r.vocab = v;
  r.ld = ld;
  r.labels = labels;
}

/// The sequences' and pairs' fields of a reference inputs or linear_inputs
/// (by member name): offsets [S + 1], P pairs in the default pairing, soft
/// labels [P] and reference log-probs [S] (null: none).
template <class In, class Offset>
void set_sequences(In& in, const Offset* offsets, int64_t S, int64_t P,
                   const double* soft = nullptr, const double* ref = nullptr) {
  in.offsets = offsets;
  in.n_seqs = S;
  in.n_pairs = P;
  in.soft_labels = soft;
  in.ref_logps = ref;
}

/// The head's fields of a reference linear_inputs or linear_token_rows (by
/// member name): H [N, Hd], W [V, Hd], b [V] (null: none).
template <class Rows>
void set_linear_head(Rows& r, const double* H, const double* W, const double* b, int64_t N,
                     int64_t Hd, int64_t V) {
  r.hidden = H;
  r.weight = W;
  r.bias = b;
  r.n_rows = N;
  r.hidden_size = Hd;
  r.vocab = V;
}

/// A logit transform z' = c·tanh(s·z/c)/T (c = 0: s·z/T).
inline logit_transform make_transform(double s, double c, double t) {
  logit_transform tr;
  tr.scale = s;
  tr.softcap = c;
  tr.temperature = t;
  return tr;
}

/// The used columns [0, v) of [n, ld] logits, packed [n, v]: what a
/// gradient check over the logits perturbs.
inline std::vector<double> packed_columns(const std::vector<double>& z, int64_t n, int64_t v,
                                          int64_t ld) {
  std::vector<double> x;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < v; ++c) x.push_back(z[r * ld + c]);
  return x;
}

/// [n, ld] logits z with their used columns replaced by packed [n, v] x.
inline std::vector<double> with_columns(std::vector<double> z, const std::vector<double>& x,
                                        int64_t n, int64_t v, int64_t ld) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < v; ++c) z[r * ld + c] = x[r * v + c];
  return z;
}

/// Rows for the per-token entries (token_logps, token_logps_grad): N rows of
/// V logits ~ N(0, 2²) at stride ld = V + pad, every fourth row's label
/// ignored (−100), an upstream g_t per row and, with `entropy_upstream`,
/// an e_t (the entropy's upstream) drawn after each g_t.
struct token_problem {
  int64_t n = 0, v = 0, ld = 0;
  std::vector<double> z;        // [N, ld]
  std::vector<int64_t> labels;  // [N]
  std::vector<double> g, e;     // [N]; e empty without entropy_upstream
  logit_transform tr{};

  token_problem(int64_t rows, int64_t vocab, int64_t pad, uint64_t seed,
                bool entropy_upstream = false, logit_transform t = {})
      : n(rows), v(vocab), ld(vocab + pad), tr(t) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (int64_t i = 0; i < n * ld; ++i) z.push_back(normal(rng));
    for (int64_t r = 0; r < n; ++r) {
      labels.push_back(r % 4 == 3 ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(v)));
      g.push_back(normal(rng));
      if (entropy_upstream) e.push_back(normal(rng));
    }
  }
  /// The rows over `logits` (z or a copy of it), with the transform; the
  /// used columns of logits, packed, and z with them replaced.
  reference::token_rows<double, int64_t> rows(const std::vector<double>& logits) const {
    reference::token_rows<double, int64_t> r;
    set_rows(r, logits.data(), n, v, ld, labels.data());
    r.logit_transform = tr;
    return r;
  }
  std::vector<double> packed(const std::vector<double>& logits) const {
    return packed_columns(logits, n, v, ld);
  }
  std::vector<double> unpacked(const std::vector<double>& x) const {
    return with_columns(z, x, n, v, ld);
  }

  /// The per-token gradient check: `grad` (packed [N, V]) against central
  /// differences of `objective` (of the packed used columns) at z, to 1e-5
  /// relative above the 1e-6 floor (the stencil's round-off is ~1e-11
  /// absolute for |f| ≈ 30, δ ≥ 1e-3); then `grad_of(wrong)`, the gradient
  /// from `upstream` with row 1's value 1 % off, fails the check at 1e-4.
  template <class Objective, class GradOf>
  void check_gradient(Objective&& objective, const std::vector<double>& grad,
                      std::vector<double> upstream, GradOf&& grad_of) const {
    const std::vector<double> x = packed(z);
    const auto r = gradcheck::check_gradient(objective, x, grad);
    INFO("worst " << r.worst_rel_error << " at " << r.worst_index);
    CHECK(r.passed(1e-5));
    upstream[1] *= 1.01;
    CHECK_FALSE(gradcheck::check_gradient(objective, x, grad_of(upstream)).passed(1e-4));
  }
};

/// Z = H·Wᵀ + b [N, V] (b null: none), summed in the order k = 0 … Hd − 1
/// after the bias.
inline std::vector<double> linear_logits(const double* H, const double* W, const double* b,
                                         int64_t N, int64_t Hd, int64_t V) {
  std::vector<double> z(static_cast<size_t>(N * V));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < V; ++c) {
      double acc = b != nullptr ? b[c] : 0.0;
      for (int64_t k = 0; k < Hd; ++k) acc += H[t * Hd + k] * W[c * Hd + k];
      z[static_cast<size_t>(t * V + c)] = acc;
    }
  return z;
}

/// The inputs of a linear head, in double: H [N, Hd] and W [V, Hd] and
/// b [V] drawn from U(−1, 1) in that order, from `rng`.
struct linear_weights {
  int64_t N = 0, Hd = 0, V = 0;
  std::vector<double> H, W, b;
  linear_weights() = default;
  linear_weights(int64_t n, int64_t hd, int64_t v, std::mt19937_64& rng) : N(n), Hd(hd), V(v) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (int64_t i = 0; i < N * Hd; ++i) H.push_back(u(rng));
    for (int64_t i = 0; i < V * Hd; ++i) W.push_back(u(rng));
    for (int64_t k = 0; k < V; ++k) b.push_back(u(rng));
  }
  /// The head's fields of a reference linear_inputs or linear_token_rows
  /// (by member name), with or without the bias.
  template <class Rows>
  void set(Rows& r, bool bias) const {
    set_linear_head(r, H.data(), W.data(), bias ? b.data() : nullptr, N, Hd, V);
  }
};

}  // namespace geopref::test
