// The CPU reference of the fused-linear path (reference/fused_linear.hpp):
// its gradients with respect to H, W and b checked by finite differences of
// its own loss, accumulate vs overwrite, strides, the forward-only outputs,
// and bad shapes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/vocab_linear.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

using lin_in = reference::linear_inputs<double, int64_t, int64_t>;

struct lin_problem : test::linear_weights {
  int64_t S = 0, P = 0;
  std::vector<int64_t> labels, offsets;
  std::vector<double> soft, ref, token_weights;
};

// P pairs of packed sequences (lengths 0..3, a few masked rows), default
// pairing, soft labels and reference log-probs; values ~U(−1, 1) so the
// logits stay O(√Hd).
lin_problem make_lin(int64_t P, int64_t Hd, int64_t V, uint64_t seed, bool token_weights = false) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  lin_problem p;
  p.P = P;
  p.S = 2 * P;
  p.offsets.assign(1, 0);
  for (int64_t s = 0; s < p.S; ++s) p.offsets.push_back(p.offsets.back() + 1 + static_cast<int64_t>(rng() % 3));
  const int64_t N = p.offsets.back() + 1;  // one trailing row outside every sequence
  for (int64_t t = 0; t < N; ++t)
    p.labels.push_back(unit(rng) < 0.15 ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
  static_cast<test::linear_weights&>(p) = test::linear_weights(N, Hd, V, rng);
  for (int64_t i = 0; i < P; ++i) p.soft.push_back(unit(rng));
  for (int64_t s = 0; s < p.S; ++s) p.ref.push_back(-3.0 * unit(rng));
  if (token_weights)
    for (int64_t t = 0; t < p.N; ++t) p.token_weights.push_back(0.5 + unit(rng));
  return p;
}

reference::linear_inputs<double, int64_t, int64_t> inputs_of(const lin_problem& p, bool bias) {
  reference::linear_inputs<double, int64_t, int64_t> in;
  p.set(in, bias);
  in.labels = p.labels.data();
  test::set_sequences(in, p.offsets.data(), p.S, p.P, p.soft.data(), p.ref.data());
  in.token_weights = p.token_weights.empty() ? nullptr : p.token_weights.data();
  return in;
}

/// The gradients of H [N, Hd], W [V, Hd] and b [V], W's and b's starting at
/// `prior` (what accumulate adds to), and outputs pointing into them.
struct lin_grads {
  std::vector<double> gh, gw, gb;
  reference::linear_outputs out;
  explicit lin_grads(const lin_problem& p, double prior = 0.0, bool accumulate = false)
      : gh(static_cast<size_t>(p.N * p.Hd)),
        gw(static_cast<size_t>(p.V * p.Hd), prior),
        gb(static_cast<size_t>(p.V), prior) {
    out.grad_hidden = gh.data();
    out.grad_weight = gw.data();
    out.grad_bias = gb.data();
    out.accumulate = accumulate;
  }
  lin_grads(const lin_grads&) = delete;
  lin_grads& operator=(const lin_grads&) = delete;
};

double loss_of(const reference::linear_inputs<double, int64_t, int64_t>& in, const options& opt) {
  reference::linear_outputs out;
  REQUIRE(reference::fused_linear(in, opt, out) == status::success);
  return out.base.loss;
}

/// The gradient check of `loss(in)` in one input matrix, `field` (the
/// member: hidden, weight or bias) at x0, against the analytic `grad`.
template <class In, class Field, class Loss>
void check_input_gradient(const In& in, Field field, const std::vector<double>& x0,
                          const std::vector<double>& grad, Loss&& loss) {
  const auto r = gradcheck::check_gradient(
      [&](const std::vector<double>& x) {
        auto a = in;
        a.*field = x.data();
        return loss(a);
      },
      x0, grad);
  CHECK(r.passed(1e-7));
}

}  // namespace

TEST_CASE("fused-linear reference: gradients of H, W and b pass the gradient check",
          "[fused_linear]") {
  for (const auto& [type, tw] : {std::pair{loss_type::gdpo, false}, std::pair{loss_type::cipo, true},
                                 std::pair{loss_type::dpo, true}}) {
    const lin_problem p = make_lin(2, 3, 7, 11 + static_cast<uint64_t>(type), tw);
    options opt;
    opt.loss.type = type;
    opt.loss.beta = 0.7;
    auto in = inputs_of(p, true);
    lin_grads g(p);
    REQUIRE(reference::fused_linear(in, opt, g.out) == status::success);
    INFO("loss " << loss_name(type));

    auto loss = [&](const auto& a) { return loss_of(a, opt); };
    check_input_gradient(in, &lin_in::hidden, p.H, g.gh, loss);
    check_input_gradient(in, &lin_in::weight, p.W, g.gw, loss);
    check_input_gradient(in, &lin_in::bias, p.b, g.gb, loss);
  }
}

TEST_CASE("fused-linear reference: the same numbers as compute() on H·Wᵀ + b; strides; "
          "accumulate adds",
          "[fused_linear]") {
  const lin_problem p = make_lin(3, 4, 9, 5);
  options opt;
  opt.loss.type = loss_type::gdpo;
  // Padded copies: ld 6 for H and W, NaN in the padding (never read).
  const int64_t ld = 6;
  std::vector<double> Hp(static_cast<size_t>(p.N * ld), std::nan("")),
      Wp(static_cast<size_t>(p.V * ld), std::nan(""));
  for (int64_t t = 0; t < p.N; ++t)
    for (int64_t k = 0; k < p.Hd; ++k) Hp[t * ld + k] = p.H[t * p.Hd + k];
  for (int64_t v = 0; v < p.V; ++v)
    for (int64_t k = 0; k < p.Hd; ++k) Wp[v * ld + k] = p.W[v * p.Hd + k];
  auto in = inputs_of(p, true);
  auto inp = in;
  inp.hidden = Hp.data();
  inp.weight = Wp.data();
  inp.ld_hidden = ld;
  inp.ld_weight = ld;

  // The logits by hand, then compute() with its gradient.
  std::vector<double> Z = test::linear_logits(p.H.data(), p.W.data(), p.b.data(), p.N, p.Hd, p.V);
  std::vector<double> G(Z.size());
  auto x = reference::make_inputs<double, int64_t, int64_t>(Z.data(), p.N, p.V, p.labels.data(),
                                                             p.offsets.data(), p.S, p.P);
  x.soft_labels = p.soft.data();
  x.ref_logps = p.ref.data();
  reference::outputs o;
  std::vector<double> seq(static_cast<size_t>(p.S)), seq2(seq.size());
  o.seq_logps = seq.data();
  o.grad_logits = G.data();
  REQUIRE(reference::compute(x, opt, o) == status::success);

  std::vector<double> gh(static_cast<size_t>(p.N * ld), 7.0), gw(static_cast<size_t>(p.V * p.Hd)),
      gb(static_cast<size_t>(p.V));
  reference::linear_outputs out;
  out.base.seq_logps = seq2.data();
  out.grad_hidden = gh.data();
  out.ld_grad_hidden = ld;
  out.grad_weight = gw.data();
  out.grad_bias = gb.data();
  REQUIRE(reference::fused_linear(inp, opt, out) == status::success);
  CHECK(out.base.loss == Approx(o.loss).epsilon(1e-14));
  for (int64_t s = 0; s < p.S; ++s) CHECK(seq2[s] == Approx(seq[s]).epsilon(1e-14));
  for (int64_t t = 0; t < p.N; ++t)
    for (int64_t k = 0; k < ld; ++k) {
      if (k >= p.Hd) {
        CHECK(gh[t * ld + k] == 7.0);  // padding untouched
        continue;
      }
      double e = 0;
      for (int64_t v = 0; v < p.V; ++v) e += G[t * p.V + v] * p.W[v * p.Hd + k];
      CHECK(gh[t * ld + k] == Approx(e).margin(1e-14));
    }
  for (int64_t v = 0; v < p.V; ++v) {
    double eb = 0;
    for (int64_t t = 0; t < p.N; ++t) eb += G[t * p.V + v];
    CHECK(gb[v] == Approx(eb).margin(1e-14));
    for (int64_t k = 0; k < p.Hd; ++k) {
      double e = 0;
      for (int64_t t = 0; t < p.N; ++t) e += G[t * p.V + v] * p.H[t * p.Hd + k];
      CHECK(gw[v * p.Hd + k] == Approx(e).margin(1e-14));
    }
  }

  // Accumulate: a second call adds the same again.
  const std::vector<double> gw1 = gw, gb1 = gb;
  out.accumulate = true;
  REQUIRE(reference::fused_linear(inp, opt, out) == status::success);
  for (size_t i = 0; i < gw.size(); ++i) CHECK(gw[i] == Approx(2 * gw1[i]).margin(1e-14));
  for (size_t i = 0; i < gb.size(); ++i) CHECK(gb[i] == Approx(2 * gb1[i]).margin(1e-14));
}

TEST_CASE("fused-linear reference: bad shapes are a status, nothing written", "[fused_linear]") {
  const lin_problem p = make_lin(1, 2, 3, 9);
  options opt;
  auto in = inputs_of(p, false);
  std::vector<double> gb(3, 5.0);
  reference::linear_outputs out;
  out.grad_bias = gb.data();
  CHECK(reference::fused_linear(in, opt, out) == status::null_pointer);  // grad_bias without bias
  CHECK(gb[0] == 5.0);
  out.grad_bias = nullptr;
  auto bad = in;
  bad.ld_hidden = 1;
  CHECK(reference::fused_linear(bad, opt, out) == status::invalid_stride);
  bad = in;
  bad.hidden_size = 0;
  CHECK(reference::fused_linear(bad, opt, out) == status::invalid_shape);
  bad = in;
  bad.weight = nullptr;
  CHECK(reference::fused_linear(bad, opt, out) == status::null_pointer);
  bad = in;
  std::vector<int64_t> labels = p.labels;
  labels[0] = p.V;  // out of range: compute()'s own validation
  bad.labels = labels.data();
  CHECK(reference::fused_linear(bad, opt, out) == status::label_out_of_range);
}

// The vocab-parallel fused linear over K simulated ranks equals the
// unsharded reference: both are double, the sharded one differs only in the
// order of the lse sum (per slice, then across slices) and in summing
// grad_H as K partials, each a sum over fewer columns. Those reorderings
// move a result by a few ulps of the magnitudes summed (≤ V·2⁻⁵³ relative
// for V = 11 terms of O(Hd) size), so 1e-12 (relative to 1 + |value|) holds
// with three orders of margin and still fails on any wrong column, rank or
// missing term (each changes a value by O(1e-2) or more here).
TEST_CASE("vocab-parallel fused-linear reference: K = 1, 2, 3 ranks equal the unsharded one",
          "[fused_linear][vocab_parallel]") {
  const lin_problem p = make_lin(4, 3, 11, 41);
  options opt;
  opt.loss.type = loss_type::gdpo;
  opt.loss.beta = 0.7;
  for (bool accumulate : {false, true}) {
    const auto in = inputs_of(p, true);
    auto lb = p.labels;
    lb[0] = p.V - 1;  // row 0 is in sequence 0 (lengths ≥ 1): a label in the last column
    auto in2 = in;
    in2.labels = lb.data();
    const double prior = accumulate ? 0.3 : 0.0;
    lin_grads want(p, prior, accumulate);
    std::vector<double> seq(static_cast<size_t>(p.S));
    want.out.base.seq_logps = seq.data();
    REQUIRE(reference::fused_linear(in2, opt, want.out) == status::success);
    const std::vector<double> &gh = want.gh, &gw = want.gw, &gb = want.gb;
    const std::vector<std::vector<int64_t>> tilings = {{0, 11}, {0, 4, 11}, {0, 7, 10, 11}, {0, 1, 2, 11}};
    for (const auto& bounds : tilings) {
      const int K = static_cast<int>(bounds.size()) - 1;
      INFO("K = " << K << " accumulate = " << accumulate);
      lin_grads got(p, prior, accumulate);
      std::vector<double> seq2(seq.size()), parts(static_cast<size_t>(K) * gh.size());
      got.out.base.seq_logps = seq2.data();
      REQUIRE(reference::fused_linear_vocab_parallel(in2, opt, bounds.data(), K, nullptr, got.out,
                                                     parts.data()) == status::success);
      const std::vector<double> &gh2 = got.gh, &gw2 = got.gw, &gb2 = got.gb;
      auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-12 * (1 + std::fabs(b)); };
      CHECK(near(got.out.base.loss, want.out.base.loss));
      for (size_t i = 0; i < seq.size(); ++i) CHECK(near(seq2[i], seq[i]));
      for (size_t i = 0; i < gh.size(); ++i) CHECK(near(gh2[i], gh[i]));
      for (size_t i = 0; i < gw.size(); ++i) CHECK(near(gw2[i], gw[i]));
      for (size_t i = 0; i < gb.size(); ++i) CHECK(near(gb2[i], gb[i]));
      // The partials sum (in rank order) to grad_H exactly as returned.
      for (size_t i = 0; i < gh.size(); ++i) {
        double s = 0;
        for (int r = 0; r < K; ++r) s += parts[static_cast<size_t>(r) * gh.size() + i];
        CHECK(s == gh2[i]);
      }
      // Records gathered in reverse slot order: the same bits.
      std::vector<int> rev(static_cast<size_t>(K));
      for (int r = 0; r < K; ++r) rev[static_cast<size_t>(r)] = K - 1 - r;
      lin_grads again(p, prior, accumulate);
      REQUIRE(reference::fused_linear_vocab_parallel(in2, opt, bounds.data(), K, rev.data(),
                                                     again.out) == status::success);
      CHECK(again.out.base.loss == got.out.base.loss);
      CHECK(again.gh == gh2);
      CHECK(again.gw == gw2);
      CHECK(again.gb == gb2);
    }
  }
  {  // a tiling that leaves a gap, or an empty slice, is invalid_vocab_records
    const auto in = inputs_of(p, true);
    reference::linear_outputs out;
    const int64_t gap[] = {0, 4, 10};
    const int64_t empty[] = {0, 4, 4, 11};
    CHECK(reference::fused_linear_vocab_parallel(in, opt, gap, 2, nullptr, out) ==
          status::invalid_vocab_records);
    CHECK(reference::fused_linear_vocab_parallel(in, opt, empty, 3, nullptr, out) ==
          status::invalid_vocab_records);
  }
}

namespace {
/// A caller's margin loss: f = log cosh(βh − 1), f' = β tanh(βh − 1).
struct log_cosh {
  double beta;
  double value(double h, double) const {
    const double x = std::fabs(beta * h - 1.0);
    return x + std::log1p(std::exp(-2.0 * x)) - std::log(2.0);
  }
  double derivative(double h, double) const { return beta * std::tanh(beta * h - 1.0); }
};
}  // namespace

TEST_CASE("fused-linear reference with a caller's loss: the built-in functor gives the built-in "
          "numbers; a new one passes the gradient check",
          "[fused_linear]") {
  const lin_problem p = make_lin(3, 3, 7, 71, true);
  options opt;
  opt.loss.type = loss_type::dpo;
  opt.loss.beta = 0.7;
  const auto in = inputs_of(p, true);
  lin_grads g0(p), g1(p), g(p);
  REQUIRE(reference::fused_linear(in, opt, g0.out) == status::success);
  REQUIRE(reference::fused_linear_with_loss(in, opt, dpo_loss<double>{0.7}, g1.out) ==
          status::success);
  const double l0 = g0.out.base.loss, l1 = g1.out.base.loss;
  CHECK(l1 == l0);
  CHECK(g1.gh == g0.gh);
  CHECK(g1.gw == g0.gw);
  CHECK(g1.gb == g0.gb);

  const log_cosh lc{0.9};
  REQUIRE(reference::fused_linear_with_loss(in, opt, lc, g.out) == status::success);
  const double l = g.out.base.loss;
  CHECK(l != l0);
  auto loss_with = [&](const reference::linear_inputs<double, int64_t, int64_t>& a) {
    reference::linear_outputs out;
    REQUIRE(reference::fused_linear_with_loss(a, opt, lc, out) == status::success);
    return out.base.loss;
  };
  check_input_gradient(in, &lin_in::hidden, p.H, g.gh, loss_with);
  check_input_gradient(in, &lin_in::weight, p.W, g.gw, loss_with);
}
