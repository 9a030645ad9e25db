// The CPU reference's per-token primitive (reference::token_logps,
// token_logps_grad): its values against compute()'s and an independent
// entropy formula, its gradient against finite differences of Σ_t g_t ℓ_t,
// logits_grad as a use of it, and its validation (nothing written on error).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

using test::token_problem;

/// The rows for the sequence API, over sequences [offsets[s], offsets[s + 1]).
reference::inputs<double, int64_t, int64_t> sequences(const token_problem& p,
                                                      const std::vector<int64_t>& offsets) {
  reference::inputs<double, int64_t, int64_t> in;
  test::set_rows(in, p.z.data(), p.n, p.v, p.ld, p.labels.data());
  in.offsets = offsets.data();
  in.n_seqs = static_cast<int64_t>(offsets.size()) - 1;
  return in;
}

struct fwd {
  std::vector<double> logp, lse, ent;
};

fwd forward(const reference::token_rows<double, int64_t>& in) {
  fwd f;
  f.logp.assign(static_cast<size_t>(in.n_rows), -7.0);
  f.lse = f.logp;
  f.ent = f.logp;
  reference::token_outputs out;
  out.token_logps = f.logp.data();
  out.lse = f.lse.data();
  out.entropy = f.ent.data();
  REQUIRE(reference::token_logps(in, out) == status::success);
  return f;
}

}  // namespace

TEST_CASE("token_logps: compute()'s log-probs and lse, an independent entropy", "[token]") {
  const token_problem p(13, 9, 3, 1601);
  const auto in = p.rows(p.z);
  const fwd f = forward(in);
  // The sequence API over one sequence holding every row: the same ℓ_t and lse_t.
  const std::vector<int64_t> offsets = {0, p.n};
  reference::inputs<double, int64_t, int64_t> seq = sequences(p, offsets);
  const int64_t no_pair[2] = {0, 0};
  seq.pairs = no_pair;
  std::vector<double> logp(static_cast<size_t>(p.n)), lse(logp.size());
  reference::outputs out;
  out.token_logps = logp.data();
  out.lse = lse.data();
  REQUIRE(reference::compute(seq, options{}, out) == status::success);
  CHECK(f.logp == logp);
  CHECK(f.lse == lse);
  for (int64_t t = 0; t < p.n; ++t) {
    INFO("row " << t);
    if (p.labels[t] == -100) {
      CHECK(f.logp[t] == 0.0);
      CHECK(f.lse[t] == 0.0);
      CHECK(f.ent[t] == 0.0);
      continue;
    }
    double h = 0.0;  // −Σ p log p, p from a softmax with its own maximum
    double m = -1e300, s = 0.0;
    for (int64_t c = 0; c < p.v; ++c) m = std::fmax(m, p.z[t * p.ld + c]);
    for (int64_t c = 0; c < p.v; ++c) s += std::exp(p.z[t * p.ld + c] - m);
    for (int64_t c = 0; c < p.v; ++c) {
      const double q = std::exp(p.z[t * p.ld + c] - m) / s;
      h -= q * std::log(q);
    }
    CHECK(f.ent[t] == Approx(h).epsilon(1e-12));
    CHECK(f.ent[t] >= 0.0);
    CHECK(f.ent[t] <= std::log(static_cast<double>(p.v)) + 1e-12);
  }
}

TEST_CASE("token_logps: −∞ logits add nothing, the entropy stays finite", "[token]") {
  token_problem p(3, 6, 0, 1602);
  p.labels = {0, 1, 2};
  for (int64_t t = 0; t < 3; ++t) p.z[t * 6 + 5] = -std::numeric_limits<double>::infinity();
  const fwd f = forward(p.rows(p.z));
  for (int64_t t = 0; t < 3; ++t) {
    CHECK(std::isfinite(f.ent[t]));
    CHECK(std::isfinite(f.logp[t]));
  }
}

TEST_CASE("token_logps_grad: finite differences of sum_t g_t logp_t, in place too", "[token]") {
  for (int64_t pad : {0, 2}) {
    const token_problem p(7, 5, pad, 1603 + static_cast<uint64_t>(pad));
    const auto in = p.rows(p.z);
    const fwd f = forward(in);
    std::vector<double> grad(static_cast<size_t>(p.n * p.v), 99.0);
    REQUIRE(reference::token_logps_grad(in, f.lse.data(), p.g.data(), grad.data(), p.v) ==
            status::success);
    // Over the used columns of the logits, every one perturbed. A wrong g_t
    // is off by O(1e-2).
    const auto objective = [&](const std::vector<double>& y) {
      const fwd q = forward(p.rows(p.unpacked(y)));
      double s = 0.0;
      for (int64_t t = 0; t < p.n; ++t) s += p.g[t] * q.logp[t];
      return s;
    };
    p.check_gradient(objective, grad, p.g, [&](const std::vector<double>& wrong) {
      std::vector<double> bad(grad.size());
      REQUIRE(reference::token_logps_grad(in, f.lse.data(), wrong.data(), bad.data(), p.v) ==
              status::success);
      return bad;
    });
    // In place over (double) logits: the same values, padding untouched.
    std::vector<double> z = p.z;
    REQUIRE(reference::token_logps_grad(p.rows(z), f.lse.data(), p.g.data(), z.data()) == status::success);
    for (int64_t t = 0; t < p.n; ++t) {
      for (int64_t c = 0; c < p.v; ++c) CHECK(z[t * p.ld + c] == grad[t * p.v + c]);
      for (int64_t c = p.v; c < p.ld; ++c) CHECK(z[t * p.ld + c] == p.z[t * p.ld + c]);
    }
  }
}

TEST_CASE("logits_grad is token_logps_grad with g_t = g_s w_t", "[token]") {
  const token_problem p(10, 7, 0, 1604);
  const std::vector<int64_t> offsets = {0, 4, 4, 9};  // an empty sequence; row 9 in none
  const std::vector<double> g_seq = {0.7, -1.5, 2.25};
  std::vector<double> tw;
  for (int64_t t = 0; t < p.n; ++t) tw.push_back(0.5 + 0.1 * static_cast<double>(t));
  reference::inputs<double, int64_t, int64_t> seq = sequences(p, offsets);
  seq.token_weights = tw.data();
  const auto in = p.rows(p.z);
  const fwd f = forward(in);
  std::vector<double> want(static_cast<size_t>(p.n * p.v)), got(want.size());
  REQUIRE(reference::logits_grad(seq, options{}, f.lse.data(), g_seq.data(), want.data()) == status::success);
  std::vector<double> g(static_cast<size_t>(p.n), 0.0);
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t t = offsets[s]; t < offsets[s + 1]; ++t) g[t] = g_seq[s] * tw[t];
  // Row 9 lies in no sequence: unscored for logits_grad, so ignored here.
  std::vector<int64_t> labels = p.labels;
  labels[9] = -100;
  auto rows = in;
  rows.labels = labels.data();
  REQUIRE(reference::token_logps_grad(rows, f.lse.data(), g.data(), got.data()) == status::success);
  CHECK(got == want);
}

TEST_CASE("token_logps: validation, nothing written on error", "[token]") {
  token_problem p(5, 4, 0, 1605);
  auto in = p.rows(p.z);
  std::vector<double> logp(5, 42.0), lse(5, 42.0), grad(20, 42.0);
  reference::token_outputs out;
  out.token_logps = logp.data();
  out.lse = lse.data();
  auto untouched = [&] {
    for (double x : logp) CHECK(x == 42.0);
    for (double x : grad) CHECK(x == 42.0);
  };
  {
    auto bad = in;
    std::vector<int64_t> labels = p.labels;
    labels[2] = 4;  // == V
    bad.labels = labels.data();
    CHECK(reference::token_logps(bad, out) == status::label_out_of_range);
    labels[2] = -1;  // neither ignore_index nor in range
    CHECK(reference::token_logps(bad, out) == status::label_out_of_range);
  }
  { auto bad = in; bad.ld = 3; CHECK(reference::token_logps(bad, out) == status::invalid_stride); }
  { auto bad = in; bad.vocab = 0; CHECK(reference::token_logps(bad, out) == status::invalid_shape); }
  { auto bad = in; bad.logits = nullptr; CHECK(reference::token_logps(bad, out) == status::null_pointer); }
  untouched();
  const std::vector<double> l(5, 1.0);
  std::vector<double> g = p.g;
  g[0] = std::nan("");  // row 0 is scored
  CHECK(reference::token_logps_grad(in, l.data(), g.data(), grad.data()) == status::invalid_upstream_grad);
  CHECK(reference::token_logps_grad(in, l.data(), p.g.data(), grad.data(), 3) == status::invalid_stride);
  CHECK(reference::token_logps_grad(in, nullptr, p.g.data(), grad.data()) == status::null_pointer);
  untouched();
  g[0] = p.g[0];
  g[3] = std::numeric_limits<double>::infinity();  // row 3 is ignored: never read
  CHECK(reference::token_logps_grad(in, l.data(), g.data(), grad.data()) == status::success);
  for (int64_t c = 0; c < 4; ++c) CHECK(grad[3 * 4 + c] == 0.0);
}
