// The per-token statistics of the CPU reference (reference::token_logps's
// log_sum_sq_probs, mean_logits and is_top1 outputs, and token_logps_grad's
// entropy upstream): the values against formulas written here from the
// softmax of the transformed logits, the top-1 tie rule on constructed rows,
// and the gradient of Σ_t g_t ℓ_t + e_t H_t against finite differences in
// double, with and without a logit transform; from hidden states, the same
// statistics as on Z = H·Wᵀ + b and the gradient with respect to H and W.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

constexpr int64_t kIgnore = -100;

using test::make_transform;

/// z' written out here (docs/math.md §2.1), not the library's helper.
double transformed(const logit_transform& tr, double z) {
  const double x = tr.scale * z;
  return (tr.softcap > 0.0 ? tr.softcap * std::tanh(x / tr.softcap) : x) / tr.temperature;
}

/// Rows with both upstreams, g_t of ℓ_t and e_t of H_t.
test::token_problem stats_problem(int64_t rows, int64_t vocab, int64_t pad, uint64_t seed,
                                  logit_transform tr = {}) {
  return test::token_problem(rows, vocab, pad, seed, true, tr);
}

struct stats {
  std::vector<double> logp, lse, ent, lssp, mean;
  std::vector<uint8_t> top1;
};

/// Every output of n rows, poisoned, filled by `entry(out)` (token_logps or
/// linear_token_logps), which must succeed.
template <class Entry>
stats run_outputs(int64_t n_rows, Entry&& entry) {
  const auto n = static_cast<size_t>(n_rows);
  stats s;
  s.logp.assign(n, -7.0);
  s.lse = s.ent = s.lssp = s.mean = s.logp;
  s.top1.assign(n, 7);
  reference::token_outputs out;
  out.token_logps = s.logp.data();
  out.lse = s.lse.data();
  out.entropy = s.ent.data();
  out.log_sum_sq_probs = s.lssp.data();
  out.mean_logits = s.mean.data();
  out.is_top1 = s.top1.data();
  REQUIRE(entry(out) == status::success);
  return s;
}

stats run(const reference::token_rows<double, int64_t>& in) {
  return run_outputs(in.n_rows, [&](reference::token_outputs& out) {
    return reference::token_logps(in, out);
  });
}

/// Σ_t g_t ℓ_t + e_t H_t over the scored rows.
double objective_value(const test::token_problem& p, const std::vector<double>& logits) {
  const stats s = run(p.rows(logits));
  double acc = 0.0;
  for (int64_t r = 0; r < p.n; ++r) acc += p.g[r] * s.logp[r] + p.e[r] * s.ent[r];
  return acc;
}

}  // namespace

TEST_CASE("token statistics: log Σp², the mean logit and top-1 against the softmax written out",
          "[token][stats]") {
  const logit_transform transforms[] = {logit_transform{}, make_transform(1.7, 0.0, 0.8),
                                        make_transform(1.3, 3.0, 0.7)};
  for (const logit_transform& tr : transforms) {
    for (const int64_t vocab : {int64_t{1}, int64_t{2}, int64_t{11}}) {
      const test::token_problem p = stats_problem(9, vocab, 3, 1701 + static_cast<uint64_t>(vocab), tr);
      const stats s = run(p.rows(p.z));
      for (int64_t r = 0; r < p.n; ++r) {
        INFO("V " << vocab << ", softcap " << tr.softcap << ", row " << r);
        if (p.labels[r] == kIgnore) {
          CHECK(s.lssp[r] == 0.0);
          CHECK(s.mean[r] == 0.0);
          CHECK(s.top1[r] == 0);
          continue;
        }
        std::vector<double> x;
        for (int64_t c = 0; c < vocab; ++c) x.push_back(transformed(tr, p.z[r * p.ld + c]));
        const double m = *std::max_element(x.begin(), x.end());
        double sum = 0.0, mean = 0.0;
        for (const double xc : x) sum += std::exp(xc - m), mean += xc;
        double sq = 0.0;
        for (const double xc : x) sq += (std::exp(xc - m) / sum) * (std::exp(xc - m) / sum);
        // Relative 1e-12: a handful of double exp/log/tanh per term, V ≤ 11.
        CHECK(s.lssp[r] == Approx(std::log(sq)).epsilon(1e-12).margin(1e-14));
        CHECK(s.mean[r] == Approx(mean / static_cast<double>(vocab)).epsilon(1e-12).margin(1e-14));
        const auto first_max = std::max_element(x.begin(), x.end()) - x.begin();
        CHECK(s.top1[r] == (first_max == p.labels[r] ? 1 : 0));
        // Σp² lies in [1/V, 1]: the log in [−log V, 0].
        CHECK(s.lssp[r] <= 1e-15);
        CHECK(s.lssp[r] >= -std::log(static_cast<double>(vocab)) - 1e-12);
        if (vocab == 1) CHECK(s.top1[r] == 1);
      }
    }
  }
}

TEST_CASE("token statistics: TRL's top-1 tie rule, NaN and −∞", "[token][stats]") {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Rows of V = 4; each with the label and the expected is_top1.
  struct row {
    std::vector<double> z;
    int64_t label;
    uint8_t top1;
  };
  const std::vector<row> cases = {
      {{3, 5, 5, 1}, 1, 1},     // tie with a later column: the first arg-max
      {{3, 5, 5, 1}, 2, 0},     // tie with an earlier column: not top-1
      {{5, 3, 5, 1}, 0, 1},     //
      {{1, 2, 3, 4}, 3, 1},     // the maximum last
      {{1, 2, 3, 4}, 2, 0},     //
      {{-inf, 0, -inf, -1}, 1, 1},  // −∞ elsewhere
      {{-inf, -inf, -inf, 0}, 3, 1},
      {{0, nan, 0, -1}, 0, 0},  // a NaN anywhere: not top-1
      {{nan, 0, 0, 0}, 0, 0},
  };
  test::token_problem p = stats_problem(static_cast<int64_t>(cases.size()), 4, 0, 1711);
  for (size_t i = 0; i < cases.size(); ++i) {
    std::copy(cases[i].z.begin(), cases[i].z.end(), p.z.begin() + static_cast<int64_t>(i) * 4);
    p.labels[i] = cases[i].label;
  }
  const stats s = run(p.rows(p.z));
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("case " << i);
    CHECK(s.top1[i] == cases[i].top1);
  }
  // −∞ logits: Σp² and the entropy stay finite, the mean is −∞.
  CHECK(std::isfinite(s.lssp[5]));
  CHECK(std::isfinite(s.ent[5]));
  CHECK(s.mean[5] == -inf);
  // One finite logit: p = (0, 0, 0, 1), so log Σp² = 0 and H = 0.
  CHECK(s.lssp[6] == 0.0);
  CHECK(s.ent[6] == 0.0);

  // A saturated soft-cap: tanh(20) and tanh(30) are both 1 in double, yet
  // the arg-max is decided on z, where 30 is the only maximum.
  test::token_problem sat = stats_problem(2, 4, 0, 1712, make_transform(1.0, 1.0, 1.0));
  sat.z = {30, 20, 0, 0, 20, 30, 0, 0};
  sat.labels = {0, 0};  // row 1: z′ ties at column 0 first, z does not
  REQUIRE(std::tanh(20.0) == std::tanh(30.0));
  const stats t = run(sat.rows(sat.z));
  CHECK(t.top1[0] == 1);
  CHECK(t.top1[1] == 0);
}

TEST_CASE("token_logps_grad with an entropy upstream: finite differences of Σ g ℓ + e H",
          "[token][stats]") {
  const logit_transform transforms[] = {logit_transform{}, make_transform(1.3, 3.0, 0.7)};
  for (const logit_transform& tr : transforms) {
    for (const int64_t pad : {int64_t{0}, int64_t{2}}) {
      INFO("softcap " << tr.softcap << ", pad " << pad);
      const test::token_problem p = stats_problem(7, 5, pad, 1721 + static_cast<uint64_t>(pad), tr);
      const auto in = p.rows(p.z);
      const stats s = run(in);
      std::vector<double> grad(static_cast<size_t>(p.n * p.v), 99.0);
      REQUIRE(reference::token_logps_grad(in, s.lse.data(), p.g.data(), grad.data(), p.v,
                                          p.e.data()) == status::success);
      // Over the used columns; dropping the entropy term moves components by
      // O(e_t p (E − z′)) ≈ 1e-1, and a wrong e_t is caught.
      const auto objective = [&](const std::vector<double>& y) {
        return objective_value(p, p.unpacked(y));
      };
      p.check_gradient(objective, grad, p.e, [&](const std::vector<double>& wrong) {
        std::vector<double> bad(grad.size());
        REQUIRE(reference::token_logps_grad(in, s.lse.data(), p.g.data(), bad.data(), p.v,
                                            wrong.data()) == status::success);
        return bad;
      });

      // The two upstreams add: entropy alone + log-prob alone = both, and a
      // zero entropy upstream is bitwise the log-prob-only gradient.
      std::vector<double> only_g(grad.size()), only_e(grad.size()), zero_e(grad.size());
      const std::vector<double> zeros(static_cast<size_t>(p.n), 0.0);
      REQUIRE(reference::token_logps_grad(in, s.lse.data(), p.g.data(), only_g.data(), p.v) ==
              status::success);
      REQUIRE(reference::token_logps_grad(in, s.lse.data(), nullptr, only_e.data(), p.v,
                                          p.e.data()) == status::success);
      REQUIRE(reference::token_logps_grad(in, s.lse.data(), p.g.data(), zero_e.data(), p.v,
                                          zeros.data()) == status::success);
      CHECK(zero_e == only_g);
      for (size_t i = 0; i < grad.size(); ++i)
        CHECK(grad[i] == Approx(only_g[i] + only_e[i]).epsilon(1e-12).margin(1e-15));
      // Ignored rows: zeros.
      for (int64_t c = 0; c < p.v; ++c) CHECK(only_e[3 * p.v + c] == 0.0);
    }
  }
}

TEST_CASE("token_logps_grad: the entropy upstream's validation", "[token][stats]") {
  const test::token_problem p = stats_problem(5, 4, 0, 1731);
  const auto in = p.rows(p.z);
  const stats s = run(in);
  std::vector<double> grad(static_cast<size_t>(p.n * p.v), 42.0);
  // Neither upstream: null_pointer, nothing written.
  CHECK(reference::token_logps_grad(in, s.lse.data(), nullptr, grad.data(), 0, nullptr) ==
        status::null_pointer);
  // A non-finite e_t on a scored row (row 0): invalid_upstream_grad.
  std::vector<double> e = p.e;
  e[0] = std::numeric_limits<double>::infinity();
  CHECK(reference::token_logps_grad(in, s.lse.data(), p.g.data(), grad.data(), 0, e.data()) ==
        status::invalid_upstream_grad);
  e[0] = std::numeric_limits<double>::quiet_NaN();
  CHECK(reference::token_logps_grad(in, s.lse.data(), nullptr, grad.data(), 0, e.data()) ==
        status::invalid_upstream_grad);
  for (const double x : grad) CHECK(x == 42.0);
  // On an ignored row (row 3) it is never read.
  e = p.e;
  e[3] = std::numeric_limits<double>::quiet_NaN();
  CHECK(reference::token_logps_grad(in, s.lse.data(), p.g.data(), grad.data(), 0, e.data()) ==
        status::success);
}

TEST_CASE("from hidden states: the statistics of Z = H·Wᵀ + b, the entropy's gradient in H and W",
          "[token][stats][linear_token]") {
  const int64_t n = 6, hd = 4, v = 7;
  std::mt19937_64 rng(1741);
  std::normal_distribution<double> normal(0.0, 0.7);
  std::vector<double> H(n * hd), W(v * hd), b(v), g(n), e(n);
  for (double& x : H) x = normal(rng);
  for (double& x : W) x = normal(rng);
  for (double& x : b) x = normal(rng);
  for (int64_t r = 0; r < n; ++r) g[r] = normal(rng), e[r] = normal(rng);
  const std::vector<int64_t> labels = {0, 6, kIgnore, 3, 3, 1};
  const logit_transform tr = make_transform(1.3, 3.0, 0.7);
  const auto rows_of = [&](const std::vector<double>& h, const std::vector<double>& w) {
    reference::linear_token_rows<double, int64_t> r;
    test::set_linear_head(r, h.data(), w.data(), b.data(), n, hd, v);
    r.labels = labels.data();
    r.logit_transform = tr;
    return r;
  };
  const auto forward = [&](const std::vector<double>& h, const std::vector<double>& w) {
    return run_outputs(n, [&](reference::token_outputs& out) {
      return reference::linear_token_logps(rows_of(h, w), out);
    });
  };
  const stats f = forward(H, W);
  // The same statistics as token_logps on Z written out here.
  const std::vector<double> Z = test::linear_logits(H.data(), W.data(), b.data(), n, hd, v);
  reference::token_rows<double, int64_t> zr;
  test::set_rows(zr, Z.data(), n, v, v, labels.data());
  zr.logit_transform = tr;
  const stats z = run(zr);
  for (int64_t r = 0; r < n; ++r) {
    INFO("row " << r);
    // Z is the same product in another summation order: 1e-12 relative.
    CHECK(f.lssp[r] == Approx(z.lssp[r]).epsilon(1e-12).margin(1e-14));
    CHECK(f.mean[r] == Approx(z.mean[r]).epsilon(1e-12).margin(1e-14));
    CHECK(f.ent[r] == Approx(z.ent[r]).epsilon(1e-12).margin(1e-14));
    CHECK(f.top1[r] == z.top1[r]);
  }
  // ∂/∂H and ∂/∂W of Σ g ℓ + e H against central differences.
  std::vector<double> gH(n * hd, 9.0), gW(v * hd, 9.0);
  reference::linear_token_grads grads;
  grads.grad_hidden = gH.data();
  grads.grad_weight = gW.data();
  REQUIRE(reference::linear_token_logps_grad(rows_of(H, W), f.lse.data(), g.data(), grads,
                                             e.data()) == status::success);
  std::vector<double> x = H, gx = gH;
  x.insert(x.end(), W.begin(), W.end());
  gx.insert(gx.end(), gW.begin(), gW.end());
  const auto objective = [&](const std::vector<double>& y) {
    const std::vector<double> h(y.begin(), y.begin() + n * hd), w(y.begin() + n * hd, y.end());
    const stats q = forward(h, w);
    double acc = 0.0;
    for (int64_t r = 0; r < n; ++r) acc += g[r] * q.logp[r] + e[r] * q.ent[r];
    return acc;
  };
  // As above: round-off ~1e-11 absolute, 1e-5 relative above the 1e-6 floor.
  const auto r = gradcheck::check_gradient(objective, x, gx);
  INFO("worst " << r.worst_rel_error << " at " << r.worst_index);
  CHECK(r.passed(1e-5));
  // Without the entropy's upstream the same H-gradient is wrong.
  std::vector<double> gH0(n * hd), gW0(v * hd);
  reference::linear_token_grads g0;
  g0.grad_hidden = gH0.data();
  g0.grad_weight = gW0.data();
  REQUIRE(reference::linear_token_logps_grad(rows_of(H, W), f.lse.data(), g.data(), g0) ==
          status::success);
  std::vector<double> bx = gH0;
  bx.insert(bx.end(), gW0.begin(), gW0.end());
  CHECK_FALSE(gradcheck::check_gradient(objective, x, bx).passed(1e-4));
}
