// The CPU reference of the per-token primitive from hidden states
// (reference::linear_token_logps / linear_token_logps_grad in
// reference/fused_linear.hpp): its gradients with respect to H, W and b
// checked by central differences of Σ_t g_t ℓ_t in double, ignore_index
// rows, accumulate vs overwrite, strides, and bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "geopref/reference/fused_linear.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

struct tok_problem : test::linear_weights {
  std::vector<double> g;        // [N]
  std::vector<int64_t> labels;  // every third row ignore_index
};

tok_problem make_tok(int64_t N, int64_t Hd, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  tok_problem p;
  static_cast<test::linear_weights&>(p) = test::linear_weights(N, Hd, V, rng);
  for (int64_t t = 0; t < N; ++t) {
    p.labels.push_back(t % 3 == 2 ? -100 : static_cast<int64_t>(rng() % static_cast<uint64_t>(V)));
    p.g.push_back(u(rng));
  }
  return p;
}

reference::linear_token_rows<double, int64_t> rows_of(const tok_problem& p, bool bias) {
  reference::linear_token_rows<double, int64_t> r;
  p.set(r, bias);
  r.labels = p.labels.data();
  return r;
}

/// Σ_t g_t ℓ_t and the forward's lse.
double objective(const tok_problem& p, bool bias, std::vector<double>* lse = nullptr) {
  std::vector<double> lp(static_cast<size_t>(p.N)), l(static_cast<size_t>(p.N));
  reference::token_outputs o;
  o.token_logps = lp.data();
  o.lse = l.data();
  REQUIRE(reference::linear_token_logps(rows_of(p, bias), o) == status::success);
  double s = 0;
  for (int64_t t = 0; t < p.N; ++t) s += p.g[t] * lp[t];
  if (lse != nullptr) *lse = l;
  return s;
}

void check_fd(tok_problem p, bool bias) {
  std::vector<double> lse;
  objective(p, bias, &lse);
  std::vector<double> gh(static_cast<size_t>(p.N * p.Hd), -7.0), gw(static_cast<size_t>(p.V * p.Hd)),
      gb(static_cast<size_t>(p.V));
  reference::linear_token_grads out;
  out.grad_hidden = gh.data();
  out.grad_weight = gw.data();
  out.grad_bias = bias ? gb.data() : nullptr;
  REQUIRE(reference::linear_token_logps_grad(rows_of(p, bias), lse.data(), p.g.data(), out) ==
          status::success);
  // Central differences: truncation O(h²·|f'''|), rounding O(ε·|f|/h); with
  // h = 1e-5 and O(1) values both are below 1e-8.
  const double h = 1e-5, tol = 1e-7;
  auto fd = [&](std::vector<double>& x, size_t i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = objective(p, bias);
    x[i] = x0 - h;
    const double fm = objective(p, bias);
    x[i] = x0;
    return (fp - fm) / (2 * h);
  };
  for (size_t i = 0; i < p.H.size(); ++i) {
    INFO("grad_hidden[" << i << "]");
    CHECK(std::fabs(fd(p.H, i) - gh[i]) <= tol);
  }
  for (size_t i = 0; i < p.W.size(); ++i) {
    INFO("grad_weight[" << i << "]");
    CHECK(std::fabs(fd(p.W, i) - gw[i]) <= tol);
  }
  if (bias)
    for (size_t i = 0; i < p.b.size(); ++i) {
      INFO("grad_bias[" << i << "]");
      CHECK(std::fabs(fd(p.b, i) - gb[i]) <= tol);
    }
  // An ignore_index row's hidden state does not move the objective.
  for (int64_t t = 0; t < p.N; ++t)
    if (p.labels[t] == -100)
      for (int64_t k = 0; k < p.Hd; ++k) CHECK(gh[t * p.Hd + k] == 0.0);
}

}  // namespace

TEST_CASE("linear_token_logps_grad equals central differences of Σ g_t ℓ_t", "[linear_token]") {
  check_fd(make_tok(7, 5, 11, 1), true);
  check_fd(make_tok(7, 5, 11, 2), false);
  check_fd(make_tok(4, 1, 3, 3), true);  // Hd = 1
  check_fd(make_tok(3, 4, 1, 4), true);  // V = 1: ℓ_t = 0, every gradient 0
}

TEST_CASE("linear_token_logps equals token_logps on Z = H·Wᵀ + b", "[linear_token]") {
  const tok_problem p = make_tok(6, 3, 9, 5);
  std::vector<double> Z = test::linear_logits(p.H.data(), p.W.data(), p.b.data(), p.N, p.Hd, p.V);
  reference::token_rows<double, int64_t> r;
  r.logits = Z.data();
  r.n_rows = p.N;
  r.vocab = p.V;
  r.ld = p.V;
  r.labels = p.labels.data();
  std::vector<double> a(6), la(6), ea(6), b(6), lb(6), eb(6);
  reference::token_outputs oa{a.data(), la.data(), ea.data()}, ob{b.data(), lb.data(), eb.data()};
  REQUIRE(reference::token_logps(r, oa) == status::success);
  REQUIRE(reference::linear_token_logps(rows_of(p, true), ob) == status::success);
  for (int t = 0; t < 6; ++t) {
    CHECK(std::fabs(a[t] - b[t]) <= 1e-13);
    CHECK(std::fabs(la[t] - lb[t]) <= 1e-13);
    CHECK(std::fabs(ea[t] - eb[t]) <= 1e-13);
  }
}

TEST_CASE("linear_token_logps_grad: accumulate adds, strides, bad input", "[linear_token]") {
  const tok_problem p = make_tok(5, 3, 7, 6);
  std::vector<double> lse;
  objective(p, true, &lse);
  const auto r = rows_of(p, true);
  std::vector<double> gw(21), gb(7);
  reference::linear_token_grads o;
  o.grad_weight = gw.data();
  o.grad_bias = gb.data();
  REQUIRE(reference::linear_token_logps_grad(r, lse.data(), p.g.data(), o) == status::success);
  std::vector<double> gw2(21, 0.5), gb2(7, 0.5);
  o.grad_weight = gw2.data();
  o.grad_bias = gb2.data();
  o.accumulate = true;
  REQUIRE(reference::linear_token_logps_grad(r, lse.data(), p.g.data(), o) == status::success);
  for (int i = 0; i < 21; ++i) CHECK(gw2[i] == gw[i] + 0.5);
  for (int i = 0; i < 7; ++i) CHECK(gb2[i] == gb[i] + 0.5);
  // A padded grad_hidden: the padding is left alone.
  std::vector<double> gh(5 * 4, -3.0), dense(15);
  reference::linear_token_grads oh;
  oh.grad_hidden = gh.data();
  oh.ld_grad_hidden = 4;
  REQUIRE(reference::linear_token_logps_grad(r, lse.data(), p.g.data(), oh) == status::success);
  oh.grad_hidden = dense.data();
  oh.ld_grad_hidden = 0;
  REQUIRE(reference::linear_token_logps_grad(r, lse.data(), p.g.data(), oh) == status::success);
  for (int t = 0; t < 5; ++t) {
    for (int k = 0; k < 3; ++k) CHECK(gh[t * 4 + k] == dense[t * 3 + k]);
    CHECK(gh[t * 4 + 3] == -3.0);
  }
  // Bad input.
  auto bad = r;
  bad.ld_hidden = 2;
  CHECK(reference::linear_token_logps_grad(bad, lse.data(), p.g.data(), oh) ==
        status::invalid_stride);
  bad = r;
  bad.bias = nullptr;
  reference::linear_token_grads ob;
  ob.grad_bias = gb.data();
  CHECK(reference::linear_token_logps_grad(bad, lse.data(), p.g.data(), ob) == status::null_pointer);
  std::vector<int64_t> labels = p.labels;
  labels[0] = 7;  // = V
  bad = r;
  bad.labels = labels.data();
  reference::token_outputs to;
  std::vector<double> lp(5);
  to.token_logps = lp.data();
  CHECK(reference::linear_token_logps(bad, to) == status::label_out_of_range);
  std::vector<double> g = p.g;
  g[0] = NAN;  // row 0 is scored
  CHECK(reference::linear_token_logps_grad(r, lse.data(), g.data(), oh) ==
        status::invalid_upstream_grad);
  bad = r;
  bad.vocab = 0;
  CHECK(reference::linear_token_logps(bad, to) == status::invalid_shape);
}
