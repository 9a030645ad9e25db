// The logit transform z' = c·tanh(s·z/c)/T (c = 0: s·z/T) in the CPU
// reference: its derivative through the tanh against finite differences in
// double, every entry against the same entry run without a transform on
// logits transformed by hand, the identity bit for bit, and its validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"
#include "geopref/reference/vocab_parallel.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

/// Token rows over [n, ld] logits (the per-token entries' input).
reference::token_rows<double, int64_t> token_rows_of(const double* logits, int64_t n, int64_t v,
                                                     int64_t ld, const int64_t* labels,
                                                     const logit_transform& tr) {
  reference::token_rows<double, int64_t> r;
  test::set_rows(r, logits, n, v, ld, labels);
  r.logit_transform = tr;
  return r;
}

using test::make_transform;

// The transforms every test runs: a soft-cap (Gemma's 30 is too gentle for
// logits of size ~4; 3 bends them hard), a scale with a temperature, and all
// three at once.
const std::vector<logit_transform>& transforms() {
  static const std::vector<logit_transform> all = {
      make_transform(1.0, 3.0, 1.0), make_transform(0.5, 0.0, 0.7),
      make_transform(1.7, 2.5, 1.3)};
  return all;
}

// Four pairs in TRL's layout over N = 19 rows with an ignored label, a row
// outside every sequence and an empty sequence; V = 6 with a padded stride.
struct problem {
  int64_t n = 19, v = 6, ld = 8, s = 8;
  std::vector<double> z;
  std::vector<int64_t> labels, offsets = {0, 2, 5, 5, 8, 10, 13, 15, 18};
  std::vector<double> soft = {1.0, 0.8, 0.3, 0.6};
  std::vector<double> ref = {-9.0, -8.5, 0.0, -7.0, -9.5, -8.0, -6.0, -7.5};

  explicit problem(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 2.5);
    for (int64_t i = 0; i < n * ld; ++i) z.push_back(normal(rng));
    for (int64_t t = 0; t < n; ++t)
      labels.push_back(t == 6 ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(v)));
  }
  reference::inputs<double, int64_t, int64_t> inputs(const std::vector<double>& logits,
                                                     const logit_transform& tr) const {
    reference::inputs<double, int64_t, int64_t> in;
    test::set_rows(in, logits.data(), n, v, ld, labels.data());
    in.logit_transform = tr;
    test::set_sequences(in, offsets.data(), s, s / 2, soft.data(), ref.data());
    return in;
  }
  // z' = apply(tr, z) over the used columns; the padding is kept.
  std::vector<double> transformed(const logit_transform& tr) const {
    std::vector<double> out = z;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < v; ++c) out[t * ld + c] = apply(tr, z[t * ld + c]);
    return out;
  }
};

options gdpo() {
  options o;
  o.loss.type = loss_type::gdpo;
  o.loss.beta = 0.5;
  return o;
}

struct run_result {
  double loss = 0;
  metrics stats;
  std::vector<double> seq, tok, lse, grad;

  /// Outputs into tok, lse [N] and grad [N, V] (dense, 7 until written),
  /// and seq [S] when n_seqs > 0.
  reference::outputs point(int64_t n_rows, int64_t vocab, int64_t n_seqs) {
    seq.resize(static_cast<size_t>(n_seqs));
    tok.resize(static_cast<size_t>(n_rows));
    lse.resize(static_cast<size_t>(n_rows));
    grad.assign(static_cast<size_t>(n_rows * vocab), 7.0);
    reference::outputs out;
    if (n_seqs > 0) out.seq_logps = seq.data();
    out.token_logps = tok.data();
    out.lse = lse.data();
    out.grad_logits = grad.data();
    out.grad_ld = vocab;
    return out;
  }
};

run_result run(const reference::inputs<double, int64_t, int64_t>& in, const options& opt) {
  run_result r;
  reference::outputs out = r.point(in.n_rows, in.vocab, in.n_seqs);
  REQUIRE(reference::compute(in, opt, out) == status::success);
  r.loss = out.loss;
  r.stats = out.stats;
  return r;
}

}  // namespace

TEST_CASE("logit transform: the derivative through the tanh against finite differences",
          "[transform]") {
  // The transform alone: Σ_v a_v z'(z_v) has gradient a_v · slope(z_v).
  for (const auto& tr : transforms()) {
    std::vector<double> x = {-40.0, -3.0, -0.4, 0.0, 0.25, 2.0, 5.5, 60.0};
    std::vector<double> a = {0.3, -1.2, 0.7, 2.0, -0.5, 1.1, -0.9, 0.4};
    std::vector<double> g;
    for (size_t i = 0; i < x.size(); ++i) g.push_back(a[i] * slope(tr, x[i]));
    auto f = [&](const std::vector<double>& y) {
      double s = 0.0;
      for (size_t i = 0; i < y.size(); ++i) s += a[i] * apply(tr, y[i]);
      return s;
    };
    // The five-point stencil's error is ~1e-13 relative for functions that
    // vary on the scale 1 (gradcheck.hpp); tanh(s·z/c) varies on c/s ≥ 1.5
    // here, so 1e-8 leaves a wide margin while a slope without the (1 − t²)
    // factor or with s/T swapped is wrong by O(1).
    const auto r = gradcheck::check_gradient(f, x, g);
    INFO("s " << tr.scale << " c " << tr.softcap << " T " << tr.temperature << " worst "
              << r.worst_rel_error << " at " << r.worst_index);
    CHECK(r.passed(1e-8));
  }
}

TEST_CASE("logit transform: the whole chain, logits to loss, against finite differences",
          "[transform]") {
  const problem p(2411);
  for (const auto& tr : transforms()) {
    const auto in = p.inputs(p.z, tr);
    gradcheck::logits_result r;
    REQUIRE(gradcheck::check_logits_gradient(in, gdpo(), r) == status::success);
    INFO("s " << tr.scale << " c " << tr.softcap << " T " << tr.temperature << " worst "
              << r.worst_rel_error << " at row " << r.row << " col " << r.col);
    // As test_gradcheck: 1e-6 relative above the 1e-6 floor; a missing
    // slope factor is off by more than 10 % on most logits.
    CHECK(r.passed(1e-6));
  }
}

TEST_CASE("logit transform: compute() equals compute() on z' formed by hand", "[transform]") {
  const problem p(2417);
  for (const auto& tr : transforms()) {
    const run_result with = run(p.inputs(p.z, tr), gdpo());
    const std::vector<double> zt = p.transformed(tr);
    const run_result plain = run(p.inputs(zt, logit_transform{}), gdpo());
    // The forward reads apply(tr, z) exactly as formed above, so every value
    // is the same double; the gradient is the plain one times the slope,
    // one rounding each.
    CHECK(with.loss == plain.loss);
    CHECK(with.stats.rewards_margins == plain.stats.rewards_margins);
    CHECK(with.seq == plain.seq);
    CHECK(with.tok == plain.tok);
    CHECK(with.lse == plain.lse);
    for (int64_t t = 0; t < p.n; ++t)
      for (int64_t c = 0; c < p.v; ++c)
        CHECK(with.grad[t * p.v + c] == plain.grad[t * p.v + c] * slope(tr, p.z[t * p.ld + c]));
    // The transform changes the numbers (a test that cannot fail otherwise).
    const run_result none = run(p.inputs(p.z, logit_transform{}), gdpo());
    CHECK(none.loss != with.loss);
  }
}

TEST_CASE("logit transform: the identity is the untransformed computation bit for bit",
          "[transform]") {
  const problem p(2423);
  auto in = p.inputs(p.z, logit_transform{});
  const run_result a = run(in, gdpo());
  in.logit_transform = make_transform(1.0, 0.0, 1.0);  // spelled out
  const run_result b = run(in, gdpo());
  CHECK(a.loss == b.loss);
  CHECK(a.grad == b.grad);
  CHECK(is_identity(logit_transform{}));
  CHECK_FALSE(is_identity(make_transform(1.0, 30.0, 1.0)));
  CHECK_FALSE(is_identity(make_transform(1.0, 0.0, 0.9)));
  CHECK_FALSE(is_identity(make_transform(2.0, 0.0, 1.0)));
}

TEST_CASE("logit transform: a soft-cap bounds ±∞ logits; a scale keeps their NaN", "[transform]") {
  // One row, V = 3, label 0. With a cap, +∞ becomes c/T and −∞ becomes −c/T.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> z = {1.0, inf, -inf};
  std::vector<int64_t> y = {0};
  auto rows = token_rows_of(z.data(), 1, 3, 3, y.data(), make_transform(1.0, 2.0, 1.0));
  double logp = 0, lse = 0;
  reference::token_outputs out;
  out.token_logps = &logp;
  out.lse = &lse;
  REQUIRE(reference::token_logps(rows, out) == status::success);
  const double z0 = 2.0 * std::tanh(0.5);
  const double expect_lse = std::log(std::exp(z0) + std::exp(2.0) + std::exp(-2.0));
  CHECK(lse == Approx(expect_lse).epsilon(1e-15));
  CHECK(logp == Approx(z0 - expect_lse).epsilon(1e-15));
  rows.logit_transform = make_transform(2.0, 0.0, 1.0);
  REQUIRE(reference::token_logps(rows, out) == status::success);
  CHECK(std::isnan(lse));  // +∞ scaled is +∞: NaN, as without a transform
}

TEST_CASE("logit transform: per-token entries and their gradient", "[transform]") {
  const problem p(2437);
  for (const auto& tr : transforms()) {
    const auto rows = token_rows_of(p.z.data(), p.n, p.v, p.ld, p.labels.data(), tr);
    const size_t n = static_cast<size_t>(p.n);
    std::vector<double> logp(n), lse(n), ent(n), logp2(n), lse2(n), ent2(n);
    reference::token_outputs out{logp.data(), lse.data(), ent.data()};
    REQUIRE(reference::token_logps(rows, out) == status::success);
    const std::vector<double> zt = p.transformed(tr);
    auto plain = rows;
    plain.logits = zt.data();
    plain.logit_transform = logit_transform{};
    reference::token_outputs out2{logp2.data(), lse2.data(), ent2.data()};
    REQUIRE(reference::token_logps(plain, out2) == status::success);
    CHECK(logp == logp2);
    CHECK(lse == lse2);
    CHECK(ent == ent2);  // the entropy of softmax(z')

    // Σ_t g_t ℓ_t against finite differences over every used logit.
    std::vector<double> g(n);
    for (size_t t = 0; t < n; ++t) g[t] = 0.3 + 0.1 * static_cast<double>(t % 5);
    std::vector<double> grad(static_cast<size_t>(p.n * p.v));
    REQUIRE(reference::token_logps_grad(rows, lse.data(), g.data(), grad.data(), p.v) ==
            status::success);
    const std::vector<double> x = test::packed_columns(p.z, p.n, p.v, p.ld);
    auto f = [&](const std::vector<double>& xs) {
      const std::vector<double> zz = test::with_columns(p.z, xs, p.n, p.v, p.ld);
      auto r = rows;
      r.logits = zz.data();
      std::vector<double> lp(n);
      reference::token_outputs o;
      o.token_logps = lp.data();
      (void)reference::token_logps(r, o);
      double s = 0.0;
      for (size_t t = 0; t < n; ++t) s += g[t] * lp[t];
      return s;
    };
    // Round-off of the stencil ~1.5 ε |f| / δ ≈ 1e-11 absolute here (|f| ≈
    // 30, δ ≥ 1e-3), up to 1e-5 relative to the 1e-6 floor of the small
    // components (saturated tanh: slopes near 0), as test_token.cpp; a
    // gradient without the slope is off by O(1) relative.
    const auto r = gradcheck::check_gradient(f, x, grad);
    INFO("worst " << r.worst_rel_error << " at " << r.worst_index);
    CHECK(r.passed(1e-5));
  }
}

TEST_CASE("logit transform: from hidden states, fused_linear and linear_token_logps",
          "[transform]") {
  // N = 6 rows, Hd = 3, V = 5, one pair of three-row sequences.
  const int64_t N = 6, Hd = 3, V = 5;
  std::mt19937_64 rng(2441);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::vector<double> h(N * Hd), w(V * Hd), b(V);
  for (auto& x : h) x = normal(rng);
  for (auto& x : w) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  std::vector<int64_t> labels = {1, 4, 0, 2, -100, 3}, offsets = {0, 3, 6};
  const logit_transform tr = make_transform(1.3, 2.0, 0.8);

  // The logits Z = H·Wᵀ + b, transformed by hand, through compute().
  std::vector<double> zt = test::linear_logits(h.data(), w.data(), b.data(), N, Hd, V);
  for (double& x : zt) x = apply(tr, x);
  reference::inputs<double, int64_t, int64_t> plain;
  test::set_rows(plain, zt.data(), N, V, V, labels.data());
  test::set_sequences(plain, offsets.data(), 2, 1);
  reference::outputs po;
  REQUIRE(reference::compute(plain, gdpo(), po) == status::success);

  reference::linear_inputs<double, int64_t, int64_t> li;
  test::set_linear_head(li, h.data(), w.data(), b.data(), N, Hd, V);
  li.logit_transform = tr;
  li.labels = labels.data();
  test::set_sequences(li, offsets.data(), 2, 1);
  reference::linear_outputs lo;
  std::vector<double> gh(N * Hd);
  lo.grad_hidden = gh.data();
  REQUIRE(reference::fused_linear(li, gdpo(), lo) == status::success);
  // Z is formed in a different order (an Eigen product): one rounding apart.
  CHECK(lo.base.loss == Approx(po.loss).epsilon(1e-13));

  // grad_hidden against finite differences of the loss over H.
  auto loss_of = [&](const std::vector<double>& hs) {
    auto l2 = li;
    l2.hidden = hs.data();
    reference::linear_outputs o;
    (void)reference::fused_linear(l2, gdpo(), o);
    return o.base.loss;
  };
  const auto r = gradcheck::check_gradient(loss_of, h, gh);
  INFO("worst " << r.worst_rel_error << " at " << r.worst_index);
  CHECK(r.passed(1e-6));

  reference::linear_token_rows<double, int64_t> lt;
  test::set_linear_head(lt, h.data(), w.data(), b.data(), N, Hd, V);
  lt.labels = labels.data();
  lt.logit_transform = tr;
  std::vector<double> lp(N), lp_plain(N);
  reference::token_outputs to;
  to.token_logps = lp.data();
  REQUIRE(reference::linear_token_logps(lt, to) == status::success);
  const auto rows = token_rows_of(zt.data(), N, V, V, labels.data(), logit_transform{});
  reference::token_outputs tp;
  tp.token_logps = lp_plain.data();
  REQUIRE(reference::token_logps(rows, tp) == status::success);
  for (int64_t t = 0; t < N; ++t) CHECK(lp[t] == Approx(lp_plain[t]).epsilon(1e-13));
}

TEST_CASE("logit transform: vocab-parallel slices combine to the unsharded result",
          "[transform]") {
  const problem p(2447);
  const logit_transform tr = make_transform(1.1, 2.5, 0.9);
  const auto whole = p.inputs(p.z, tr);
  const run_result ref = run(whole, gdpo());
  // Three ranks of widths 2, 1, 3: each slice's records and gradient are of
  // its own columns of z', combined in rank order.
  const int64_t bounds[4] = {0, 2, 3, 6};
  run_result vp;
  reference::outputs out = vp.point(p.n, p.v, 0);
  REQUIRE(reference::compute_vocab_parallel(whole, gdpo(), bounds, 3, nullptr, out) ==
          status::success);
  // The sum over slices is in another order than the whole row's: a few
  // ulps of lse, and of everything downstream.
  CHECK(out.loss == Approx(ref.loss).epsilon(1e-13));
  for (int64_t t = 0; t < p.n; ++t) {
    CHECK(vp.lse[t] == Approx(ref.lse[t]).epsilon(1e-14));
    CHECK(vp.tok[t] == Approx(ref.tok[t]).epsilon(1e-13).margin(1e-14));
  }
  for (size_t i = 0; i < vp.grad.size(); ++i)
    CHECK(vp.grad[i] == Approx(ref.grad[i]).epsilon(1e-12).margin(1e-15));
}

TEST_CASE("logit transform: invalid values are rejected before anything is read or written",
          "[transform]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<logit_transform> bad = {
      make_transform(0.0, 0.0, 1.0),  make_transform(-1.0, 0.0, 1.0), make_transform(nan, 0.0, 1.0),
      make_transform(inf, 0.0, 1.0),  make_transform(1.0, -2.0, 1.0), make_transform(1.0, nan, 1.0),
      make_transform(1.0, inf, 1.0),  make_transform(1.0, 0.0, 0.0),  make_transform(1.0, 0.0, -1.0),
      make_transform(1.0, 0.0, nan),  make_transform(1.0, 0.0, inf)};
  const problem p(2459);
  for (const auto& tr : bad) {
    INFO("s " << tr.scale << " c " << tr.softcap << " T " << tr.temperature);
    CHECK(validate(tr) == status::invalid_logit_transform);
    auto in = p.inputs(p.z, tr);
    std::vector<double> grad(static_cast<size_t>(p.n * p.v), 7.0);
    reference::outputs out;
    out.grad_logits = grad.data();
    out.grad_ld = p.v;
    out.loss = 5.0;
    CHECK(reference::compute(in, gdpo(), out) == status::invalid_logit_transform);
    CHECK(out.loss == 5.0);
    for (double g : grad) CHECK(g == 7.0);
    std::vector<double> lse(static_cast<size_t>(p.n)), gs(static_cast<size_t>(p.s));
    CHECK(reference::logits_grad(in, gdpo(), lse.data(), gs.data(), grad.data(), p.v) ==
          status::invalid_logit_transform);
    const auto rows = token_rows_of(p.z.data(), p.n, p.v, p.ld, p.labels.data(), tr);
    std::vector<double> lp(static_cast<size_t>(p.n), 3.0);
    reference::token_outputs to;
    to.token_logps = lp.data();
    CHECK(reference::token_logps(rows, to) == status::invalid_logit_transform);
    for (double x : lp) CHECK(x == 3.0);
    CHECK(reference::token_logps_grad(rows, lse.data(), lp.data(), grad.data(), p.v) ==
          status::invalid_logit_transform);
    std::vector<reference::vocab_record> rec(static_cast<size_t>(p.n));
    CHECK(reference::vocab_stats(in, 0, p.v, 0, gdpo(), rec.data()) ==
          status::invalid_logit_transform);
  }
}
