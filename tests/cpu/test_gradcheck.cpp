// The gradient-check utility itself: it passes correct gradients, fails wrong
// ones, and points at the component that is wrong.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "geopref/reference/gradcheck.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

// dpo with a derivative that forgot β: right only where β = 1.
struct forgot_beta {
  double beta;
  double value(double h, double) const { return math::softplus(-beta * h); }
  double derivative(double h, double) const { return -math::sigmoid(-beta * h); }
};

// A loss whose derivative is 1 % off: the logits check must see it.
struct off_by_one_percent {
  dpo_loss<double> base;
  double value(double h, double p) const { return base.value(h, p); }
  double derivative(double h, double p) const { return 1.01 * base.derivative(h, p); }
};

}  // namespace

TEST_CASE("relative_error: relative above the floor, absolute below, infinite for NaN",
          "[gradcheck]") {
  CHECK(gradcheck::relative_error(2.0, 1.0, 1e-6) == 0.5);
  CHECK(gradcheck::relative_error(-1.0, 1.0, 1e-6) == 2.0);
  CHECK(gradcheck::relative_error(0.0, 1e-12, 1e-6) == Approx(1e-6));
  CHECK(gradcheck::relative_error(0.0, 0.0, 1e-6) == 0.0);
  CHECK(std::isinf(gradcheck::relative_error(std::nan(""), 1.0, 1e-6)));
  CHECK(std::isinf(gradcheck::relative_error(1.0, std::numeric_limits<double>::infinity(), 1e-6)));
}

TEST_CASE("margin-loss check passes a correct loss and locates a wrong one", "[gradcheck]") {
  const std::vector<double> hs = {-3, -0.5, 0, 0.5, 2};
  const std::vector<double> ps = {0.2, 1.0};
  const auto good = gradcheck::check_margin_loss(dpo_loss<double>{2.0}, hs, ps);
  CHECK(good.passed(1e-9));
  CHECK(good.checked == 10);

  const auto bad = gradcheck::check_margin_loss(forgot_beta{2.0}, hs, ps);
  CHECK_FALSE(bad.passed(1e-3));
  // The analytic value is off by exactly the factor β = 2: relative error 0.5 everywhere.
  CHECK(bad.worst_rel_error == Approx(0.5).epsilon(1e-8));
  CHECK(bad.numeric == Approx(2.0 * bad.analytic).epsilon(1e-8));
  CHECK(bad.analytic == forgot_beta{2.0}.derivative(bad.h, bad.p));
  CHECK(bad.worst_index >= 0);
  CHECK(bad.h == hs[static_cast<size_t>(bad.worst_index) / ps.size()]);
  CHECK(bad.p == ps[static_cast<size_t>(bad.worst_index) % ps.size()]);

  // With β = 1 the same mistake is invisible, as it should be.
  CHECK(gradcheck::check_margin_loss(forgot_beta{1.0}, hs, ps).passed(1e-9));
  // Nothing checked is not a pass.
  CHECK_FALSE(gradcheck::check_margin_loss(dpo_loss<double>{1.0}, {}, ps).passed(1.0));
}

TEST_CASE("generic check: Rosenbrock, and a wrong component is found", "[gradcheck]") {
  auto f = [](const std::vector<double>& x) {
    double s = 0;
    for (size_t i = 0; i + 1 < x.size(); ++i)
      s += 100 * std::pow(x[i + 1] - x[i] * x[i], 2) + std::pow(1 - x[i], 2);
    return s;
  };
  const std::vector<double> x = {-1.2, 1.0, 0.3, 0.8, 2.0};
  std::vector<double> g(x.size(), 0.0);
  for (size_t i = 0; i + 1 < x.size(); ++i) {
    const double d = x[i + 1] - x[i] * x[i];
    g[i] += -400 * x[i] * d - 2 * (1 - x[i]);
    g[i + 1] += 200 * d;
  }
  const auto good = gradcheck::check_gradient(f, x, g);
  CHECK(good.passed(1e-9));
  CHECK(good.checked == 5);

  std::vector<double> wrong = g;
  wrong[3] *= 1.001;
  const auto bad = gradcheck::check_gradient(f, x, wrong);
  CHECK_FALSE(bad.passed(1e-6));
  CHECK(bad.worst_index == 3);
  CHECK(bad.analytic == wrong[3]);
  CHECK(bad.numeric == Approx(g[3]).epsilon(1e-9));

  // A gradient of the wrong length is reported, not read out of bounds.
  CHECK_FALSE(gradcheck::check_gradient(f, x, std::vector<double>(3, 0.0)).passed(1.0));
}

TEST_CASE("logits check sees a 1% error in a loss's derivative", "[gradcheck]") {
  test::spec sp;
  sp.pairs = 2;
  sp.vocab = 4;
  const test::problem pb = test::make_problem(sp, 5);
  test::typed<double, int64_t, int64_t> t(pb);
  options opt;
  opt.loss.beta = 0.5;
  gradcheck::logits_result good, bad;
  REQUIRE(gradcheck::check_logits_gradient_with_loss(t.in, opt, dpo_loss<double>{0.5}, good) == status::success);
  REQUIRE(gradcheck::check_logits_gradient_with_loss(t.in, opt, off_by_one_percent{{0.5}}, bad) == status::success);
  CHECK(good.passed(1e-6));
  CHECK(bad.worst_rel_error == Approx(0.01 / 1.01).epsilon(1e-4));
  CHECK(bad.row >= 0);
  CHECK(bad.col >= 0);
  CHECK(bad.worst_index == bad.row * pb.V + bad.col);
  CHECK(good.checked == pb.N * pb.V);
}

TEST_CASE("logits check validates before allocating: absurd sizes are a status, not a throw",
          "[gradcheck]") {
  // N·V = 2^62 doubles: sizes no buffer can have. The buffers are null, so the
  // reference reports null_pointer; nothing may be allocated from N·V first.
  reference::inputs<double, int64_t, int64_t> in;
  in.n_rows = int64_t(1) << 31;
  in.vocab = int64_t(1) << 31;
  in.ld = in.vocab;
  gradcheck::logits_result r;
  r.worst_rel_error = 42;
  CHECK(gradcheck::check_logits_gradient(in, options{}, r) == status::null_pointer);
  CHECK(r.worst_rel_error == 42);
}
