// Identities of the loss family checked through the whole reference (logits
// in, gradients out), the metrics against hand-computed values, and user
// losses through compute_with_loss.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "test_util.hpp"  // the reference, the gradient checker, seeded problems

using namespace geopref;
using namespace geopref::test;

namespace {

void require_same(const output_set& a, const output_set& b) {
  CHECK(test::bitwise_equal(a.pair_losses, b.pair_losses));
  CHECK(test::bitwise_equal(a.grad_seq, b.grad_seq));
  CHECK(test::bitwise_equal(a.grad_logits, b.grad_logits));
  CHECK(a.out.loss == b.out.loss);
  CHECK(a.out.stats.calibration_error == b.out.stats.calibration_error);
}

std::unique_ptr<output_set> run(const problem& pb, const options& opt) {
  typed<double, int64_t, int64_t> t(pb);
  auto o = std::make_unique<output_set>(pb.N, pb.S, pb.P, pb.ld);
  REQUIRE(reference::compute(t.in, opt, o->out) == status::success);
  return o;
}

options with(loss_type t, double beta = 0.7) {
  options o;
  o.loss = test::config_for(t, beta);
  return o;
}

spec base_spec() {
  spec sp;
  sp.pairs = 4;
  sp.vocab = 9;
  sp.pad = 1;
  sp.max_len = 5;
  sp.weights = true;
  return sp;
}

}  // namespace

TEST_CASE("gdpo at p=1, cdpo at p=1 and robust at eps=0 are dpo through the reference",
          "[identity][reference]") {
  for (bool average : {false, true}) {
    problem pb = test::make_problem(base_spec(), 3);
    pb.soft.assign(static_cast<size_t>(pb.P), 1.0);
    options dpo = with(loss_type::dpo), gdpo = with(loss_type::gdpo), cdpo = with(loss_type::cdpo),
            robust = with(loss_type::robust);
    robust.loss.epsilon = 0.0;
    for (options* o : {&dpo, &gdpo, &cdpo, &robust}) o->average_logps = average;
    const auto a = run(pb, dpo);
    INFO("average " << average);
    require_same(*a, *run(pb, gdpo));
    require_same(*a, *run(pb, cdpo));
    require_same(*a, *run(pb, robust));
  }
}

TEST_CASE("gdpo at p=0.5: loss log 2 and exactly zero gradient down to the logits",
          "[identity][reference]") {
  problem pb = test::make_problem(base_spec(), 5);
  pb.weights.clear();
  pb.soft.assign(static_cast<size_t>(pb.P), 0.5);
  for (loss_type lt : {loss_type::gdpo, loss_type::gipo, loss_type::gropo}) {
    const auto o = run(pb, with(lt));
    INFO(loss_name(lt));
    const any_loss<double> f(test::config_for(lt));
    CHECK(o->out.loss == Approx(f.value(0.0, 0.5)).epsilon(1e-15));
    if (lt == loss_type::gdpo) CHECK(o->out.loss == Approx(std::log(2.0)).epsilon(1e-15));
    for (double g : o->grad_seq) CHECK(g == 0.0);
    for (int64_t r = 0; r < pb.N; ++r)
      for (int64_t v = 0; v < pb.V; ++v) CHECK(o->grad_logits[r * pb.ld + v] == 0.0);
  }
}

TEST_CASE("swapping a pair's responses with p -> 1-p leaves the symmetric losses unchanged",
          "[identity][reference]") {
  spec sp = base_spec();
  sp.explicit_pairs = true;
  const problem pb = test::make_problem(sp, 9);
  problem swapped = pb;
  for (int64_t i = 0; i < pb.P; ++i) {
    std::swap(swapped.pairs[2 * i], swapped.pairs[2 * i + 1]);
    swapped.soft[i] = 1.0 - pb.soft[i];
  }
  for (bool average : {false, true})
    for (loss_type lt : {loss_type::gdpo, loss_type::gipo, loss_type::gropo, loss_type::cdpo,
                         loss_type::cipo}) {
      options opt = with(lt);
      opt.average_logps = average;
      const auto a = run(pb, opt), b = run(swapped, opt);
      INFO(loss_name(lt) << " average " << average);
      // 1 − p̂ rounds, so the two are equal to a few ulps, not bitwise.
      CHECK(b->out.loss == Approx(a->out.loss).epsilon(1e-14));
      for (int64_t i = 0; i < pb.P; ++i) {
        CHECK(b->pair_losses[i] == Approx(a->pair_losses[i]).epsilon(1e-14));
        CHECK(b->margins[i] == Approx(-a->margins[i]).epsilon(1e-14));
      }
      for (size_t k = 0; k < a->grad_logits.size(); ++k)
        CHECK(b->grad_logits[k] == Approx(a->grad_logits[k]).epsilon(1e-12).margin(1e-15));
    }
}

TEST_CASE("cdpo's minimiser through the reference: zero gradient where sigma(beta h) = p",
          "[identity][reference]") {
  // One pair of one-row sequences, V = 2, label 0, reference-free:
  // L = −softplus(c) for logits (0, c). Choose c_b = 5 (L_b = −softplus(5))
  // and c_a so that h = L_a − L_b = logit(p̂)/β.
  const double beta = 0.5, p = 0.8;
  const double h_star = std::log(p / (1 - p)) / beta;
  const double la = h_star - math::softplus(5.0);  // target L_a (< 0)
  const double ca = std::log(std::expm1(-la));     // −softplus(c_a) = la
  problem pb;
  pb.N = 2, pb.V = 2, pb.ld = 2, pb.S = 2, pb.P = 1;
  pb.logits = {0.0, ca, 0.0, 5.0};
  pb.labels = {0, 0};
  pb.offsets = {0, 1, 2};
  pb.soft = {p};
  const auto o = run(pb, with(loss_type::cdpo, beta));
  CHECK(o->margins[0] == Approx(h_star).epsilon(1e-14));
  for (double g : o->grad_logits) CHECK(std::fabs(g) <= 1e-15);
  CHECK(o->out.stats.calibration_error <= 1e-15);
}

TEST_CASE("metrics against hand-computed values", "[metrics][reference]") {
  // Four one-row sequences, V = 2, label 0, logits (0, c_s): L_s = −ln(1 + e^{c_s}).
  // c = (0, ln 3, ln 7, 0) → L = (−ln 2, −ln 4, −ln 8, −ln 2).
  // ref = (−ln 4, 0, −ln 2, −ln 2); pairs (0, 2), (1, 3); β = 0.5; p̂ = (1, 0.25).
  const double ln2 = std::log(2.0);
  problem pb;
  pb.N = 4, pb.V = 2, pb.ld = 2, pb.S = 4, pb.P = 2;
  pb.logits = {0, 0, 0, std::log(3.0), 0, std::log(7.0), 0, 0};
  pb.labels = {0, 0, 0, 0};
  pb.offsets = {0, 1, 2, 3, 4};
  pb.ref = {-2 * ln2, 0, -ln2, -ln2};
  pb.soft = {1.0, 0.25};
  // Pair 0: chosen reward β(−ln2 + 2ln2) = ½ ln2, rejected β(−3ln2 + ln2) = −ln2, h = 3 ln2.
  // Pair 1: chosen β(−2ln2 − 0) = −ln2, rejected β(−ln2 + ln2) = 0, h = −2 ln2.
  const double eps = 1e-15;
  for (loss_type lt : {loss_type::dpo, loss_type::gdpo}) {
    const auto o = run(pb, with(lt, 0.5));
    const metrics& m = o->out.stats;
    INFO(loss_name(lt));
    CHECK(o->margins[0] == Approx(3 * ln2).epsilon(eps));
    CHECK(o->margins[1] == Approx(-2 * ln2).epsilon(eps));
    CHECK(m.rewards_chosen == Approx((0.5 * ln2 - ln2) / 2).epsilon(eps));
    CHECK(m.rewards_rejected == Approx((-ln2 + 0) / 2).epsilon(eps));
    CHECK(m.rewards_accuracies == 0.5);
    CHECK(m.rewards_margins == Approx((1.5 * ln2 + -ln2) / 2).epsilon(eps));
    CHECK(m.logps_chosen == Approx((-ln2 - 2 * ln2) / 2).epsilon(eps));
    CHECK(m.logps_rejected == Approx((-3 * ln2 - ln2) / 2).epsilon(eps));
    // |σ(1.5 ln2) − 1| = 1/(1 + 2√2); |σ(−ln2) − ¼| = 1/3 − 1/4.
    CHECK(m.calibration_error ==
          Approx((1 / (1 + 2 * std::sqrt(2.0)) + 1.0 / 12) / 2).epsilon(eps));
    // dpo: mean of −log σ(1.5 ln2) = ln(1 + 2^−1.5) and −log σ(−ln2) = ln 3.
    // gdpo: pair 1's margin becomes (2·¼ − 1)(−2 ln2) = ln2: ln(1 + 2^−0.5).
    const double f1 = lt == loss_type::dpo ? std::log(3.0) : std::log1p(std::pow(2.0, -0.5));
    CHECK(o->out.loss == Approx((std::log1p(std::pow(2.0, -1.5)) + f1) / 2).epsilon(eps));
  }
  SECTION("average_logps with two-row sequences halves the log-probs") {
    problem q;
    q.N = 8, q.V = 2, q.ld = 2, q.S = 4, q.P = 2;
    for (int s = 0; s < 4; ++s)
      for (int k = 0; k < 2; ++k) {
        q.logits.push_back(pb.logits[2 * s]);
        q.logits.push_back(pb.logits[2 * s + 1]);
        q.labels.push_back(0);
      }
    q.offsets = {0, 2, 4, 6, 8};
    q.ref = pb.ref;  // already in the averaged form
    options opt = with(loss_type::dpo, 0.5);
    opt.average_logps = true;
    const auto a = run(pb, with(loss_type::dpo, 0.5));
    const auto b = run(q, opt);
    CHECK(b->out.stats.logps_chosen == Approx(a->out.stats.logps_chosen).epsilon(eps));
    CHECK(b->out.stats.rewards_margins == Approx(a->out.stats.rewards_margins).epsilon(eps));
    CHECK(b->out.loss == Approx(a->out.loss).epsilon(eps));
    CHECK(b->seq_counts == std::vector<int64_t>{2, 2, 2, 2});
    // Each of the two rows carries half of the single row's gradient.
    for (int s = 0; s < 4; ++s) CHECK(b->grad_seq[s] == Approx(a->grad_seq[s] / 2).epsilon(eps));
  }
}

TEST_CASE("rewards/accuracies counts strict wins only", "[metrics][reference]") {
  // Pair 0: identical sequences and references (a tie: not a win); pair 1: a clear win.
  problem pb;
  pb.N = 4, pb.V = 3, pb.ld = 3, pb.S = 4, pb.P = 2;
  pb.logits = {0.1, 0.2, 0.3, 0.0, 0.0, 5.0, 0.1, 0.2, 0.3, 0.0, 0.0, 5.0};
  pb.labels = {1, 2, 1, 0};
  pb.offsets = {0, 1, 2, 3, 4};
  const auto o = run(pb, with(loss_type::dpo));
  CHECK(o->margins[0] == 0.0);
  CHECK(o->margins[1] > 0.0);
  CHECK(o->out.stats.rewards_accuracies == 0.5);
}

namespace {
// A user's own margin loss: a smoothed squared hinge, f = softplus(1 − βh)².
struct user_loss {
  double beta;
  double value(double h, double) const {
    const double s = math::softplus(1 - beta * h);
    return s * s;
  }
  double derivative(double h, double) const {
    return -2 * beta * math::softplus(1 - beta * h) * math::sigmoid(1 - beta * h);
  }
};
}  // namespace

TEST_CASE("compute_with_loss: library functors and a user's loss with its geometric form",
          "[reference]") {
  const problem pb = test::make_problem(base_spec(), 13);
  typed<double, int64_t, int64_t> t(pb);
  options opt = with(loss_type::gdpo);
  output_set a(pb.N, pb.S, pb.P, pb.ld), b(pb.N, pb.S, pb.P, pb.ld);
  REQUIRE(reference::compute(t.in, opt, a.out) == status::success);
  REQUIRE(reference::compute_with_loss(t.in, opt, make_geometric(dpo_loss<double>{opt.loss.beta}),
                                       b.out) == status::success);
  require_same(a, b);

  const auto g = make_geometric(user_loss{0.9});
  const auto r = gradcheck::check_margin_loss(g, {-4, -0.5, 0.3, 2, 9}, {0, 0.3, 0.5, 1});
  INFO("worst " << r.worst_rel_error << " at h=" << r.h << " p=" << r.p);
  CHECK(r.passed(1e-6));
  gradcheck::logits_result lr;
  REQUIRE(gradcheck::check_logits_gradient_with_loss(t.in, opt, g, lr) == status::success);
  CHECK(lr.passed(1e-5));
}
