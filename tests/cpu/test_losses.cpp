// The margin losses on their own: derivatives against finite differences over
// margins −50..50, float and double evaluation without overflow, the
// identities docs/math.md §4 and §5 state (p̂ = 1, p̂ = 0.5, swapped pairs;
// cdpo and robust reducing to dpo, cdpo's minimum), runtime dispatch and
// parameter validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "geopref/losses.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "test_util.hpp"

using namespace geopref;

namespace {

const std::vector<double> MARGINS = {-50, -20, -7.5, -3, -1.1, -0.3, -0.01, 0,
                                     0.02, 0.4, 0.9,  2.2, 6,  13,  31,    50};
const std::vector<double> SOFT = {0.0, 0.1, 0.25, 0.5, 0.7, 0.93, 1.0};
const std::vector<double> BETAS = {0.1, 1.0, 5.0};

std::vector<loss_type> all_losses() {
  std::vector<loss_type> v;
  for (int i = 0; i < LOSS_TYPE_COUNT; ++i) v.push_back(static_cast<loss_type>(i));
  return v;
}

// The scale on which the loss changes, in units of h: 1/β, and τ/β for
// discopop's modulation. The finite-difference step follows it (see
// gradcheck.hpp for the error model).
double sharpness(const loss_config& c) {
  return std::fmax(1.0, c.type == loss_type::discopop ? c.beta / std::fmin(c.tau, 1.0) : c.beta);
}

}  // namespace

TEST_CASE("every loss's derivative matches finite differences over margins -50..50", "[losses]") {
  for (loss_type t : all_losses())
    for (double beta : BETAS)
      for (double tau : {0.05, 1.0}) {
        loss_config c = test::config_for(t, beta);
        c.tau = tau;
        if (t != loss_type::discopop && tau != 1.0) continue;
        REQUIRE(validate(c) == status::success);
        gradcheck::settings cfg;
        cfg.step = 1e-3 / sharpness(c);
        // Round-off in the stencil is ~1.5e-16·|f|/δ ≤ 1e-11 here (|f| ≤ ~1e4
        // at |h| = 50 for ipo); a floor of 1e-5 keeps that below 1e-6 where
        // the derivative vanishes (cdpo's and cipo's minima, p̂ = 0.5).
        cfg.floor = 1e-5;
        std::vector<double> hs = MARGINS;
        if (t == loss_type::hinge) {  // keep 4δ away from the kink at βh = 1
          std::vector<double> keep;
          for (double h : hs)
            if (std::fabs(beta * h - 1.0) > 4.0 * cfg.step * std::fmax(1.0, std::fabs(h)) * beta)
              keep.push_back(h);
          hs = keep;
        }
        const auto r = gradcheck::check_margin_loss(any_loss<double>(c), hs, SOFT, cfg);
        INFO(loss_name(t) << " beta=" << beta << " tau=" << tau << ": worst " << r.worst_rel_error
                          << " at h=" << r.h << " p=" << r.p << " analytic=" << r.analytic
                          << " numeric=" << r.numeric);
        // Error model (gradcheck.hpp): ~1e-12 relative from round-off and the
        // δ⁴ term with the step matched to the loss's scale, ≤ 1e-6 at
        // vanishing derivatives (floor above); any wrong factor, sign or term
        // is an O(1) error.
        CHECK(r.passed(1e-6));
        CHECK(r.checked == static_cast<int64_t>(hs.size() * SOFT.size()));
      }
}

TEST_CASE("float and double functors stay finite and agree for |beta h| <= 50", "[losses]") {
  for (loss_type t : all_losses())
    for (double beta : BETAS) {
      const loss_config c = test::config_for(t, beta);
      const any_loss<double> ld(c);
      const any_loss<float> lf(c);
      for (double z = -50.0; z <= 50.0; z += 0.37)
        for (double p : SOFT) {
          const double h = z / beta;
          const float hf = static_cast<float>(h), pf = static_cast<float>(p);
          const double vd = ld.value(static_cast<double>(hf), p), dd = ld.derivative(static_cast<double>(hf), p);
          const float vf = lf.value(hf, pf), df = lf.derivative(hf, pf);
          INFO(loss_name(t) << " beta=" << beta << " h=" << h << " p=" << p);
          REQUIRE(std::isfinite(vd));
          REQUIRE(std::isfinite(dd));
          REQUIRE(std::isfinite(vf));
          REQUIRE(std::isfinite(df));
          // float carries ~6e-8 relative per operation; arguments up to |z| =
          // 50 (and z/τ) amplify the absolute error of softplus-like terms to
          // ~|z|·6e-8. 2e-5 relative to max(1, |value|) bounds that with room.
          CHECK(std::fabs(vf - vd) <= 2e-5 * std::fmax(1.0, std::fabs(vd)));
          CHECK(std::fabs(df - dd) <= 2e-5 * std::fmax(beta, std::fabs(dd)));
        }
    }
}

TEST_CASE("geometric dpo at p=1 is dpo, at p=0.5 is log 2 with zero gradient", "[losses][identity]") {
  for (double beta : BETAS) {
    const dpo_loss<double> d{beta};
    const gdpo_loss<double> g{d};
    for (double h : MARGINS) {
      CHECK(g.value(h, 1.0) == d.value(h, 1.0));
      CHECK(g.derivative(h, 1.0) == d.derivative(h, 1.0));
      CHECK(g.value(h, 0.5) == std::log(2.0));
      CHECK(g.derivative(h, 0.5) == 0.0);
      // p̂ < 0.5 flips the preference: p̂ = 0 is dpo on −h.
      CHECK(g.value(h, 0.0) == d.value(-h, 0.0));
    }
  }
  // Any loss with a finite derivative at 0 gets an exactly zero gradient at p̂ = 0.5.
  for (double h : MARGINS) {
    CHECK(gipo_loss<double>{ipo_loss<double>{0.3}}.derivative(h, 0.5) == 0.0);
    CHECK(gropo_loss<double>{ropo_loss<double>{0.3, 2.0, 0.5}}.derivative(h, 0.5) == 0.0);
    CHECK(make_geometric(hinge_loss<double>{0.3}).derivative(h, 0.5) == 0.0);
  }
}

TEST_CASE("cdpo at p=1 and robust at eps=0 are dpo, bit for bit", "[losses][identity]") {
  for (double beta : BETAS)
    for (double h : MARGINS) {
      const dpo_loss<double> d{beta};
      const cdpo_loss<double> c{beta};
      const robust_loss<double> r{beta, 0.0};
      CHECK(c.value(h, 1.0) == d.value(h, 1.0));
      CHECK(c.derivative(h, 1.0) == d.derivative(h, 1.0));
      CHECK(r.value(h, 1.0) == d.value(h, 1.0));
      CHECK(r.derivative(h, 1.0) == d.derivative(h, 1.0));
      // Also in float, where the naive β(σ(βh) − 1) would lose every digit.
      const float hf = static_cast<float>(h), bf = static_cast<float>(beta);
      CHECK(cdpo_loss<float>{bf}.derivative(hf, 1.0f) == dpo_loss<float>{bf}.derivative(hf, 1.0f));
    }
}

TEST_CASE("cdpo is minimised where sigma(beta h) = p", "[losses][identity]") {
  for (double beta : BETAS)
    for (double p : {0.05, 0.3, 0.5, 0.8, 0.99}) {
      const cdpo_loss<double> c{beta};
      const double h_star = std::log(p / (1.0 - p)) / beta;
      INFO("beta=" << beta << " p=" << p);
      // f'(h*) = β(σ(βh*) − p̂) vanishes up to round-off in σ.
      CHECK(std::fabs(c.derivative(h_star, p)) <= 4e-16 * beta);
      const double d = 1e-3 / beta;
      CHECK(c.derivative(h_star - d, p) < 0.0);
      CHECK(c.derivative(h_star + d, p) > 0.0);
      CHECK(c.value(h_star, p) < c.value(h_star - d, p));
      CHECK(c.value(h_star, p) < c.value(h_star + d, p));
    }
}

TEST_CASE("swapping a pair's responses with p -> 1-p leaves the symmetric losses unchanged",
          "[losses][identity]") {
  for (double beta : BETAS)
    for (double h : MARGINS)
      for (double p : {0.0, 0.25, 0.5, 0.75, 1.0}) {  // 1 − p exact for these
        for (loss_type t : {loss_type::gdpo, loss_type::gipo, loss_type::gropo, loss_type::cdpo,
                            loss_type::cipo}) {
          const any_loss<double> f(test::config_for(t, beta));
          INFO(loss_name(t) << " beta=" << beta << " h=" << h << " p=" << p);
          CHECK(f.value(-h, 1.0 - p) == f.value(h, p));
          CHECK(f.derivative(-h, 1.0 - p) == Approx(-f.derivative(h, p)).margin(1e-300));
        }
      }
}

TEST_CASE("hand values of each loss", "[losses]") {
  // Values computed on paper from the formulas of docs/math.md §5 (β = 1 unless said).
  const double ln2 = std::log(2.0);
  CHECK(dpo_loss<double>{1.0}.value(0.0, 1.0) == Approx(ln2).epsilon(1e-15));
  CHECK(dpo_loss<double>{2.0}.value(std::log(3.0) / 2.0, 1.0) == Approx(std::log(4.0 / 3.0)).epsilon(1e-15));
  CHECK(cdpo_loss<double>{1.0}.value(0.0, 0.3) == Approx(ln2).epsilon(1e-15));
  CHECK(ipo_loss<double>{0.25}.value(3.0, 1.0) == Approx(1.0).epsilon(1e-15));        // (3 − 2)²
  CHECK(cipo_loss<double>{0.25}.value(3.0, 0.75) == Approx(0.75 * 1 + 0.25 * 25).epsilon(1e-15));
  CHECK(ropo_loss<double>{1.0, 2.0, 3.0}.value(0.0, 1.0) == Approx(2 * 0.5 + 3 * ln2).epsilon(1e-15));
  CHECK(hinge_loss<double>{0.5}.value(1.0, 1.0) == 0.5);
  CHECK(hinge_loss<double>{0.5}.value(4.0, 1.0) == 0.0);
  CHECK(robust_loss<double>{1.0, 0.25}.value(0.0, 1.0) == Approx((0.75 * ln2 - 0.25 * ln2) / 0.5).epsilon(1e-15));
  // exo_pair at h = 0: s = 1/2: ½(−ln2 − ln(1−ε)) + ½(−ln2 − ln ε).
  CHECK(exo_pair_loss<double>{1.0, 0.1}.value(0.0, 1.0) ==
        Approx(0.5 * (-ln2 - std::log(0.9)) + 0.5 * (-ln2 - std::log(0.1))).epsilon(1e-15));
  // discopop at h = 0: m = ½: ½ ln2 + ½.
  CHECK(discopop_loss<double>{1.0, 0.05}.value(0.0, 1.0) == Approx(0.5 * ln2 + 0.5).epsilon(1e-15));
  // simpo: −log σ(βh − γ) at βh = γ is ln 2.
  CHECK(simpo_loss<double>{2.0, 0.5}.value(0.25, 1.0) == Approx(ln2).epsilon(1e-15));
  CHECK(gipo_loss<double>{ipo_loss<double>{0.25}}.value(3.0, 0.75) == Approx(0.25).epsilon(1e-15));  // (1.5 − 2)²
}

TEST_CASE("any_loss dispatches to the concrete functor", "[losses]") {
  const double beta = 0.8, h = 1.3, p = 0.35;
  auto same = [&](loss_type t, auto concrete) {
    const any_loss<double> a(test::config_for(t, beta));
    INFO(loss_name(t));
    CHECK(a.value(h, p) == concrete.value(h, p));
    CHECK(a.derivative(h, p) == concrete.derivative(h, p));
  };
  const loss_config c = test::config_for(loss_type::dpo, beta);
  same(loss_type::dpo, dpo_loss<double>{beta});
  same(loss_type::cdpo, cdpo_loss<double>{beta});
  same(loss_type::ipo, ipo_loss<double>{beta});
  same(loss_type::cipo, cipo_loss<double>{beta});
  same(loss_type::ropo, ropo_loss<double>{beta, c.alpha, c.gamma});
  same(loss_type::hinge, hinge_loss<double>{beta});
  same(loss_type::robust, robust_loss<double>{beta, test::config_for(loss_type::robust).epsilon});
  same(loss_type::exo_pair, exo_pair_loss<double>{beta, c.epsilon});
  same(loss_type::discopop, discopop_loss<double>{beta, c.tau});
  same(loss_type::simpo, simpo_loss<double>{beta, c.gamma});
  same(loss_type::gdpo, gdpo_loss<double>{dpo_loss<double>{beta}});
  same(loss_type::gipo, gipo_loss<double>{ipo_loss<double>{beta}});
  same(loss_type::gropo, gropo_loss<double>{ropo_loss<double>{beta, c.alpha, c.gamma}});
  // Default-constructed: loss_config's defaults (dpo, β = 0.1), not indeterminate.
  const any_loss<double> d;
  CHECK(d.type == loss_type::dpo);
  CHECK(d.value(h, p) == dpo_loss<double>{loss_config{}.beta}.value(h, p));
}

TEST_CASE("loss names round-trip and unknown names are rejected", "[losses]") {
  for (loss_type t : all_losses()) {
    loss_type back = loss_type::dpo;
    REQUIRE(parse_loss_type(loss_name(t), &back));
    CHECK(back == t);
  }
  loss_type out = loss_type::gipo;
  CHECK_FALSE(parse_loss_type("dp", &out));
  CHECK_FALSE(parse_loss_type("dpox", &out));
  CHECK_FALSE(parse_loss_type("", &out));
  CHECK_FALSE(parse_loss_type(nullptr, &out));
  CHECK(out == loss_type::gipo);
}

TEST_CASE("loss parameter validation", "[losses][validation]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto check = [](loss_config c, status want) {
    INFO(loss_name(c.type));
    CHECK(validate(c) == want);
  };
  loss_config c;
  for (loss_type t : all_losses()) check(test::config_for(t), status::success);
  c = test::config_for(loss_type::dpo);
  c.type = static_cast<loss_type>(LOSS_TYPE_COUNT);
  CHECK(validate(c) == status::invalid_loss);
  c.type = static_cast<loss_type>(-1);
  CHECK(validate(c) == status::invalid_loss);
  for (double b : {0.0, -1.0, nan, inf}) {
    c = test::config_for(loss_type::gdpo);
    c.beta = b;
    check(c, status::invalid_beta);
  }
  for (double e : {0.5, -0.01, nan}) {
    c = test::config_for(loss_type::robust);
    c.epsilon = e;
    check(c, status::invalid_epsilon);
  }
  for (double e : {0.0, 1.0, nan}) {
    c = test::config_for(loss_type::exo_pair);
    c.epsilon = e;
    check(c, status::invalid_epsilon);
  }
  for (loss_type t : {loss_type::ropo, loss_type::gropo}) {
    c = test::config_for(t);
    c.alpha = -1;
    check(c, status::invalid_alpha_gamma);
    c = test::config_for(t);
    c.gamma = nan;
    check(c, status::invalid_alpha_gamma);
  }
  c = test::config_for(loss_type::simpo);
  c.gamma = -0.1;
  check(c, status::invalid_alpha_gamma);
  for (double tau : {0.0, nan, inf}) {
    c = test::config_for(loss_type::discopop);
    c.tau = tau;
    check(c, status::invalid_tau);
  }
  // Parameters a loss does not use are not checked.
  c = test::config_for(loss_type::dpo);
  c.epsilon = nan;
  c.tau = -1;
  c.alpha = -1;
  check(c, status::success);
}
