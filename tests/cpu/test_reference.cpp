// The CPU reference end to end: token log-probs against a brute-force
// evaluation, the whole chain logits → loss against finite differences for
// every loss in every layout, logit / label / offset types, masking, strides,
// empty sequences, reductions, upstream gradients, −∞ logits, determinism.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "test_util.hpp"  // the reference, the gradient checker, seeded problems

using namespace geopref;
using namespace geopref::test;

namespace {

const double INF = std::numeric_limits<double>::infinity();

template <class Logit, class Label, class Offset>
status run(const typed<Logit, Label, Offset>& t, const options& opt, output_set& o) {
  return reference::compute(t.in, opt, o.out);
}

output_set make_outputs(const problem& pb) { return output_set(pb.N, pb.S, pb.P, pb.ld); }

/// A problem with `pad` padding columns (NaN: never to be read), `trailing`
/// rows after offsets[S] and a share `mask_prob` of masked labels: every
/// kind of row and column a gradient must leave at zero or untouched.
problem ragged_problem(int64_t pad, int64_t trailing, double mask_prob, uint64_t seed) {
  spec sp;
  sp.pad = pad;
  sp.trailing_rows = trailing;
  sp.mask_prob = mask_prob;
  return test::make_problem(sp, seed);
}

/// Every output of two runs is bitwise identical.
void require_same_outputs(const output_set& a, const output_set& b) {
  CHECK(test::bitwise_equal(a.token_logps, b.token_logps));
  CHECK(test::bitwise_equal(a.lse, b.lse));
  CHECK(test::bitwise_equal(a.seq_logps, b.seq_logps));
  CHECK(a.seq_counts == b.seq_counts);
  CHECK(test::bitwise_equal(a.pair_losses, b.pair_losses));
  CHECK(test::bitwise_equal(a.margins, b.margins));
  CHECK(test::bitwise_equal(a.grad_seq, b.grad_seq));
  CHECK(test::bitwise_equal(a.grad_logits, b.grad_logits));
  CHECK(test::bitwise_equal({a.out.loss}, {b.out.loss}));
  const metrics &x = a.out.stats, &y = b.out.stats;
  CHECK(test::bitwise_equal({x.rewards_chosen, x.rewards_rejected, x.rewards_accuracies,
                             x.rewards_margins, x.logps_chosen, x.logps_rejected,
                             x.calibration_error},
                            {y.rewards_chosen, y.rewards_rejected, y.rewards_accuracies,
                             y.rewards_margins, y.logps_chosen, y.logps_rejected,
                             y.calibration_error}));
}

/// The scenarios every loss is gradient-checked in.
struct scenario {
  const char* name;
  spec sp;
  reduction reduce = reduction::mean;
  double normalizer = 0.0;
  bool average = false;
  double grad_loss = 1.0;
  bool per_pair_upstream = false;
};

std::vector<scenario> scenarios() {
  std::vector<scenario> v;
  scenario s;
  s = {};
  s.name = "packed, soft labels, reference, masks";
  v.push_back(s);
  s = {};
  s.name = "padded [S,T], stride V+3, average_logps";
  s.sp.padded = true;
  s.sp.pad = 3;
  s.average = true;
  v.push_back(s);
  s = {};
  s.name = "explicit pairs, weights, sum, grad_loss 1.7";
  s.sp.explicit_pairs = true;
  s.sp.weights = true;
  s.sp.pairs = 3;
  s.reduce = reduction::sum;
  s.grad_loss = 1.7;
  v.push_back(s);
  s = {};
  s.name = "none with per-pair upstream, trailing rows";
  s.sp.trailing_rows = 2;
  s.reduce = reduction::none;
  s.per_pair_upstream = true;
  s.grad_loss = -0.6;
  v.push_back(s);
  s = {};
  s.name = "normalizer 3.5, binary, reference-free, many masks, average";
  s.sp.soft = false;
  s.sp.ref = false;
  s.sp.mask_prob = 0.5;
  s.reduce = reduction::normalizer;
  s.normalizer = 3.5;
  s.average = true;
  v.push_back(s);
  s = {};
  s.name = "one pair, V=1, long sequences";
  s.sp.pairs = 1;
  s.sp.vocab = 1;
  s.sp.max_len = 6;
  v.push_back(s);
  return v;
}

}  // namespace

TEST_CASE("token log-probs of a hand-computed case", "[reference]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double ln2 = std::log(2.0), ln3 = std::log(3.0);
  problem pb;
  pb.N = 4, pb.V = 3, pb.ld = 4, pb.S = 2, pb.P = 1;
  pb.logits = {0.0, ln2, ln3, nan,   // ℓ(2) = ln3 − ln6 = −ln2
               5.0, 5.0, 5.0, nan,   // ℓ(0) = −ln3
               7.0, 1.0, 2.0, nan,   // masked
               -INF, 0.0, 0.0, nan}; // ℓ(1) = −ln2: a −∞ logit adds nothing
  pb.labels = {2, 0, -100, 1};
  pb.offsets = {0, 4, 4};  // the second sequence is empty
  typed<double, int64_t, int64_t> t(pb);
  options opt;
  output_set o = make_outputs(pb);
  REQUIRE(run(t, opt, o) == status::success);
  CHECK(o.token_logps[0] == Approx(-ln2).epsilon(1e-15));
  CHECK(o.token_logps[1] == Approx(-ln3).epsilon(1e-15));
  CHECK(o.token_logps[2] == 0.0);
  CHECK(o.token_logps[3] == Approx(-ln2).epsilon(1e-15));
  CHECK(o.lse[0] == Approx(std::log(6.0)).epsilon(1e-15));
  CHECK(o.lse[1] == Approx(5.0 + ln3).epsilon(1e-15));
  CHECK(o.lse[2] == 0.0);
  CHECK(o.lse[3] == Approx(ln2).epsilon(1e-15));
  CHECK(o.seq_counts == std::vector<int64_t>{3, 0});
  CHECK(o.seq_logps[0] == Approx(-2 * ln2 - ln3).epsilon(1e-15));
  CHECK(o.seq_logps[1] == 0.0);
  CHECK(o.margins[0] == Approx(-2 * ln2 - ln3).epsilon(1e-15));
  // dpo, β = 0.1: f = softplus(−βh); f' = −β σ(−βh); one pair, mean.
  const double h = -2 * ln2 - ln3, beta = 0.1;
  const double fp = -beta / (1.0 + std::exp(beta * h));
  CHECK(o.out.loss == Approx(std::log1p(std::exp(-beta * h))).epsilon(1e-15));
  CHECK(o.grad_seq[0] == Approx(fp).epsilon(1e-15));
  CHECK(o.grad_seq[1] == Approx(-fp).epsilon(1e-15));
  // grad row 0: fp·(𝟙[v = 2] − softmax) with softmax = (1, 2, 3)/6.
  CHECK(o.grad_logits[0] == Approx(fp * (0 - 1.0 / 6)).epsilon(1e-15));
  CHECK(o.grad_logits[1] == Approx(fp * (0 - 2.0 / 6)).epsilon(1e-15));
  CHECK(o.grad_logits[2] == Approx(fp * (1 - 3.0 / 6)).epsilon(1e-15));
  for (int v = 0; v < 3; ++v) CHECK(o.grad_logits[8 + v] == 0.0);  // masked row
  CHECK(o.grad_logits[12] == 0.0);  // the −∞ logit: exactly no gradient
  for (int r = 0; r < 4; ++r) CHECK(o.grad_logits[4 * r + 3] == output_set::POISON);  // padding
}

TEST_CASE("token log-probs match a brute-force long double evaluation", "[reference]") {
  for (uint64_t seed : {1u, 2u, 3u}) {
    spec sp;
    sp.vocab = 37;
    sp.pad = 5;
    sp.pairs = 3;
    sp.max_len = 7;
    sp.logit_scale = 8.0;
    const problem pb = test::make_problem(sp, seed);
    typed<double, int32_t, int64_t> t(pb);
    output_set o = make_outputs(pb);
    REQUIRE(run(t, options{}, o) == status::success);
    for (int64_t r = 0; r < pb.N; ++r) {
      INFO("seed " << seed << " row " << r);
      if (pb.labels[r] == -100) {
        CHECK(o.token_logps[r] == 0.0);
        continue;
      }
      long double sum = 0;
      for (int64_t v = 0; v < pb.V; ++v) sum += std::exp(static_cast<long double>(pb.logits[r * pb.ld + v]));
      const long double want =
          std::log(std::exp(static_cast<long double>(pb.logits[r * pb.ld + pb.labels[r]])) / sum);
      // Double accumulation over 37 terms of magnitude ≤ e⁸: a few ulps.
      CHECK(o.token_logps[r] == Approx(static_cast<double>(want)).epsilon(1e-14));
    }
  }
}

TEST_CASE("the whole chain logits -> loss matches finite differences, every loss and layout",
          "[reference][gradcheck]") {
  uint64_t seed = 100;
  for (const scenario& sc : scenarios())
    for (int li = 0; li < LOSS_TYPE_COUNT; ++li) {
      const loss_type lt = static_cast<loss_type>(li);
      problem pb = test::make_problem(sc.sp, ++seed);
      // orpo's odds are singular at probability 1 (L̄ = 0): with V = 1 every
      // token has it, and the loss is NaN by definition (TRL's too).
      if (lt == loss_type::orpo && pb.V == 1) continue;
      if (is_reference_free(lt)) pb.ref.clear();
      pb.grad_loss = sc.grad_loss;
      if (sc.per_pair_upstream)
        for (int64_t i = 0; i < pb.P; ++i) pb.grad_pair_losses.push_back(0.5 + 0.75 * static_cast<double>(i));
      options opt = test::options_for(lt);
      opt.reduce = sc.reduce;
      opt.normalizer = sc.normalizer;
      opt.average_logps = sc.average;
      typed<double, int64_t, int32_t> t(pb);
      INFO(sc.name << " / " << loss_name(lt) << " / seed " << seed);

      output_set o = make_outputs(pb);
      REQUIRE(run(t, opt, o) == status::success);
      if (lt == loss_type::hinge)  // finite differences need the margins off the kink
        for (double h : o.margins) REQUIRE(std::fabs(opt.loss.beta * h - 1.0) > 1e-2);

      gradcheck::logits_result r;
      REQUIRE(gradcheck::check_logits_gradient(t.in, opt, r) == status::success);
      INFO("worst " << r.worst_rel_error << " at row " << r.row << " col " << r.col
                    << " analytic " << r.analytic << " numeric " << r.numeric);
      // Φ is O(1) and evaluated with ~1e-15 absolute round-off; the five-point
      // stencil with δ = 1e-3 turns that into ~1e-12 absolute, i.e. ≤ 1e-6
      // relative to the floor 1e-6. 1e-5 leaves room and still catches any
      // wrong factor, sign or missing term (those are O(1) errors).
      CHECK(r.passed(1e-5));
      CHECK(r.checked == pb.N * pb.V);
    }
}

TEMPLATE_TEST_CASE("narrow logit types: the reference reads exactly the rounded values",
                   "[reference][dtype]", float, Eigen::half, Eigen::bfloat16) {
  spec sp;
  sp.pad = 2;
  sp.pairs = 3;
  sp.vocab = 11;
  const problem pb = test::make_problem(sp, 7);
  problem rounded = pb;
  rounded.logits = test::rounded_through<TestType>(pb.logits);
  for (loss_type lt : {loss_type::gdpo, loss_type::cipo, loss_type::discopop}) {
    options opt = test::options_for(lt);
    typed<TestType, int32_t, int32_t> narrow(pb);
    typed<double, int32_t, int32_t> wide(rounded);
    output_set a = make_outputs(pb), b = make_outputs(pb);
    REQUIRE(run(narrow, opt, a) == status::success);
    REQUIRE(run(wide, opt, b) == status::success);
    INFO(loss_name(lt));
    require_same_outputs(a, b);
    // And the double path on those rounded values is gradient-correct.
    gradcheck::logits_result r;
    REQUIRE(gradcheck::check_logits_gradient(wide.in, opt, r) == status::success);
    CHECK(r.passed(1e-5));
  }
}

TEST_CASE("label and offset index types give identical results", "[reference][dtype]") {
  spec sp;
  sp.explicit_pairs = true;
  sp.pairs = 4;
  const problem pb = test::make_problem(sp, 11);
  options opt = test::options_for(loss_type::gropo);
  typed<double, int64_t, int64_t> a(pb);
  typed<double, int32_t, int64_t> b(pb);
  typed<double, int64_t, int32_t> c(pb);
  typed<double, int32_t, int32_t> d(pb);
  output_set oa = make_outputs(pb), ob = make_outputs(pb), oc = make_outputs(pb), od = make_outputs(pb);
  REQUIRE(run(a, opt, oa) == status::success);
  REQUIRE(run(b, opt, ob) == status::success);
  REQUIRE(run(c, opt, oc) == status::success);
  REQUIRE(run(d, opt, od) == status::success);
  require_same_outputs(oa, ob);
  require_same_outputs(oa, oc);
  require_same_outputs(oa, od);
}

TEST_CASE("padding columns, unscored rows and rows outside every sequence", "[reference]") {
  const problem pb = ragged_problem(4, 3, 0.4, 21);
  typed<double, int64_t, int64_t> t(pb);
  options opt = test::options_for(loss_type::gdpo);
  SECTION("grad_ld = ld") {
    output_set o = make_outputs(pb);
    REQUIRE(run(t, opt, o) == status::success);
    for (int64_t r = 0; r < pb.N; ++r) {
      const bool scored = r < pb.offsets[pb.S] && pb.labels[r] != -100;
      INFO("row " << r);
      for (int64_t v = 0; v < pb.V; ++v) {
        const double g = o.grad_logits[r * pb.ld + v];
        if (!scored) CHECK(g == 0.0);
        else CHECK(std::isfinite(g));
      }
      for (int64_t v = pb.V; v < pb.ld; ++v) CHECK(o.grad_logits[r * pb.ld + v] == output_set::POISON);
      if (!scored) {
        CHECK(o.token_logps[r] == 0.0);
        CHECK(o.lse[r] == 0.0);
      } else {
        CHECK(o.token_logps[r] < 0.0);
      }
    }
    // Each scored row's gradient sums to zero over the vocabulary (Σ_v ∂/∂z of a log-softmax).
    for (int64_t r = 0; r < pb.N; ++r) {
      double sum = 0, mag = 0;
      for (int64_t v = 0; v < pb.V; ++v) sum += o.grad_logits[r * pb.ld + v], mag += std::fabs(o.grad_logits[r * pb.ld + v]);
      CHECK(std::fabs(sum) <= 1e-15 * (1 + mag));
    }
  }
  SECTION("a separate, wider gradient stride") {
    const int64_t gld = pb.V + 9;
    output_set o(pb.N, pb.S, pb.P, gld);
    output_set ref = make_outputs(pb);
    REQUIRE(run(t, opt, o) == status::success);
    REQUIRE(run(t, opt, ref) == status::success);
    for (int64_t r = 0; r < pb.N; ++r) {
      for (int64_t v = 0; v < pb.V; ++v) CHECK(o.grad_logits[r * gld + v] == ref.grad_logits[r * pb.ld + v]);
      for (int64_t v = pb.V; v < gld; ++v) CHECK(o.grad_logits[r * gld + v] == output_set::POISON);
    }
  }
}

TEST_CASE("grad_ld = 0 means the logits' stride, and an in-place backward over double logits",
          "[reference]") {
  const problem pb = ragged_problem(3, 2, 0.3, 23);
  options opt = test::options_for(loss_type::gipo);
  typed<double, int64_t, int64_t> t(pb);
  output_set ref = make_outputs(pb);
  REQUIRE(run(t, opt, ref) == status::success);

  output_set o = make_outputs(pb);
  o.out.grad_ld = 0;
  REQUIRE(run(t, opt, o) == status::success);
  CHECK(test::bitwise_equal(o.grad_logits, ref.grad_logits));

  // In place: the gradient overwrites columns [0, V) of the logits buffer.
  typed<double, int64_t, int64_t> inplace(pb);
  reference::outputs io;
  io.grad_logits = inplace.z.data();
  io.grad_ld = pb.ld;
  REQUIRE(reference::compute(inplace.in, opt, io) == status::success);
  for (int64_t r = 0; r < pb.N; ++r) {
    for (int64_t v = 0; v < pb.V; ++v) CHECK(inplace.z[r * pb.ld + v] == ref.grad_logits[r * pb.ld + v]);
    for (int64_t v = pb.V; v < pb.ld; ++v) CHECK(std::isnan(inplace.z[r * pb.ld + v]));  // padding untouched
  }
  CHECK(io.loss == ref.out.loss);
}

TEST_CASE("logits_grad alone: bitwise compute()'s gradient, linear in g_s, validated",
          "[reference]") {
  const problem pb = ragged_problem(2, 2, 0.3, 29);
  options opt = test::options_for(loss_type::gdpo);
  typed<float, int32_t, int64_t> t(pb);
  output_set ref = make_outputs(pb);
  REQUIRE(reference::compute(t.in, opt, ref.out) == status::success);

  // Padding columns keep their poison: logits_grad never writes [V, ld).
  const double P0 = output_set::POISON;
  std::vector<double> g(static_cast<size_t>(pb.N * pb.ld), P0);
  REQUIRE(reference::logits_grad(t.in, opt, ref.lse.data(), ref.grad_seq.data(), g.data(),
                                 pb.ld) == status::success);
  CHECK(test::bitwise_equal(g, ref.grad_logits));

  // Scaling g_s by 2 (exact in binary) scales every element exactly.
  std::vector<double> g2s(ref.grad_seq), g2(g.size(), P0);
  for (double& x : g2s) x *= 2.0;
  REQUIRE(reference::logits_grad(t.in, opt, ref.lse.data(), g2s.data(), g2.data(), pb.ld) ==
          status::success);
  for (int64_t r = 0; r < pb.N; ++r)
    for (int64_t v = 0; v < pb.V; ++v) CHECK(g2[r * pb.ld + v] == 2.0 * g[r * pb.ld + v]);

  // Bad inputs: a status, nothing written.
  std::vector<double> untouched(g.size(), P0);
  std::vector<int32_t> bad_labels(t.y);
  bad_labels[0] = static_cast<int32_t>(pb.V);
  auto bad = t.in;
  bad.labels = bad_labels.data();
  CHECK(reference::logits_grad(bad, opt, ref.lse.data(), ref.grad_seq.data(), untouched.data(),
                               pb.ld) == status::label_out_of_range);
  CHECK(reference::logits_grad(t.in, opt, nullptr, ref.grad_seq.data(), untouched.data(),
                               pb.ld) == status::null_pointer);
  CHECK(reference::logits_grad(t.in, opt, ref.lse.data(), ref.grad_seq.data(), untouched.data(),
                               pb.V - 1) == status::invalid_stride);
  CHECK(std::all_of(untouched.begin(), untouched.end(), [&](double x) { return x == P0; }));
}

TEST_CASE("simpo always uses length-normalised log-probs", "[reference]") {
  spec sp;
  sp.ref = false;
  sp.max_len = 6;
  const problem pb = test::make_problem(sp, 29);
  typed<double, int64_t, int64_t> t(pb);
  options plain, averaged;
  plain.loss = averaged.loss = test::config_for(loss_type::simpo);
  averaged.average_logps = true;
  output_set a = make_outputs(pb), b = make_outputs(pb), sums = make_outputs(pb);
  REQUIRE(run(t, plain, a) == status::success);
  REQUIRE(run(t, averaged, b) == status::success);
  require_same_outputs(a, b);
  REQUIRE(run(t, options{}, sums) == status::success);  // dpo: summed
  for (int64_t s = 0; s < pb.S; ++s)
    CHECK(a.seq_logps[s] == (sums.seq_counts[s] > 0 ? sums.seq_logps[s] / static_cast<double>(sums.seq_counts[s]) : 0.0));
}

TEST_CASE("empty sequences: L = 0, n = 0, average 0, zero gradient, never NaN", "[reference]") {
  problem pb;
  pb.N = 3, pb.V = 4, pb.ld = 4, pb.S = 4, pb.P = 2;
  pb.logits = {0.3, -1.0, 2.0, 0.5, 1.0, 1.0, -2.0, 0.0, 0.1, 0.2, 0.3, 0.4};
  pb.labels = {1, -100, 3};
  pb.offsets = {0, 0, 2, 2, 3};  // seq 0 empty, seq 1 = rows 0-1 (one masked), seq 2 empty, seq 3 = row 2
  pb.soft = {0.9, 0.3};
  for (bool average : {false, true})
    for (loss_type lt : {loss_type::gdpo, loss_type::ipo, loss_type::simpo}) {
      options opt = test::options_for(lt);
      opt.average_logps = average;
      typed<double, int64_t, int64_t> t(pb);
      output_set o = make_outputs(pb);
      REQUIRE(run(t, opt, o) == status::success);
      INFO(loss_name(lt) << " average " << average);
      CHECK(o.seq_counts == std::vector<int64_t>{0, 1, 0, 1});
      CHECK(o.seq_logps[0] == 0.0);
      CHECK(o.seq_logps[2] == 0.0);
      for (double g : o.grad_seq) CHECK(std::isfinite(g));
      CHECK(std::isfinite(o.out.loss));
      for (double g : o.grad_logits) CHECK(std::isfinite(g));
      // An empty sequence has no rows, so its L_s-gradient reaches no logit;
      // the reported value is finite (0 when averaged: 1/n_s with n_s = 0 is taken as 0).
      if (uses_average_logps(opt)) {
        CHECK(o.grad_seq[0] == 0.0);
        CHECK(o.grad_seq[2] == 0.0);
      }
      gradcheck::logits_result r;
      REQUIRE(gradcheck::check_logits_gradient(t.in, opt, r) == status::success);
      CHECK(r.passed(1e-5));
    }
}

TEST_CASE("reductions and upstream gradients scale consistently", "[reference]") {
  spec sp;
  sp.pairs = 4;
  sp.weights = true;
  problem pb = test::make_problem(sp, 31);
  options opt = test::options_for(loss_type::gdpo);
  auto go = [&](reduction red, double norm, double grad_loss, std::vector<double> gpl) {
    problem q = pb;
    q.grad_loss = grad_loss;
    q.grad_pair_losses = std::move(gpl);
    options o2 = opt;
    o2.reduce = red;
    o2.normalizer = norm;
    typed<double, int64_t, int64_t> t(q);
    auto o = std::make_unique<output_set>(q.N, q.S, q.P, q.ld);
    REQUIRE(reference::compute(t.in, o2, o->out) == status::success);
    return o;
  };
  const auto mean = go(reduction::mean, 0, 1, {});
  const auto sum = go(reduction::sum, 0, 1, {});
  const auto normed = go(reduction::normalizer, 2.5, 1, {});
  const auto none = go(reduction::none, 0, 1, {});
  const auto scaled = go(reduction::mean, 0, -3.0, {});
  const auto none_pp = go(reduction::none, 0, 2.0, {0.0, 1.0, 0.0, 0.0});  // only pair 1, times 2

  double total = 0;
  for (int64_t i = 0; i < pb.P; ++i) total += sum->pair_losses[i];
  CHECK(pb.weights[0] == 0.0);
  CHECK(sum->pair_losses[0] == 0.0);  // a zero-weight pair contributes exactly nothing
  CHECK(sum->out.loss == Approx(total).epsilon(1e-15));
  CHECK(mean->out.loss == Approx(total / 4).epsilon(1e-15));
  CHECK(normed->out.loss == Approx(total / 2.5).epsilon(1e-15));
  CHECK(none->out.loss == Approx(total).epsilon(1e-15));  // none: the loss field is the sum
  CHECK(test::bitwise_equal(none->pair_losses, sum->pair_losses));
  for (size_t k = 0; k < mean->grad_logits.size(); ++k) {
    const double g = mean->grad_logits[k];
    CHECK(sum->grad_logits[k] == Approx(4 * g).epsilon(1e-13).margin(1e-300));
    CHECK(normed->grad_logits[k] == Approx(4 * g / 2.5).epsilon(1e-13).margin(1e-300));
    CHECK(none->grad_logits[k] == Approx(4 * g).epsilon(1e-13).margin(1e-300));
    CHECK(scaled->grad_logits[k] == Approx(-3 * g).epsilon(1e-13).margin(1e-300));
  }
  // Per-pair upstream: only pair 1's two sequences get gradient, 2 × its sum-gradient.
  for (int64_t s = 0; s < pb.S; ++s) {
    const bool in_pair1 = s == 1 || s == pb.P + 1;
    INFO("seq " << s);
    if (in_pair1) {
      const double own = 2.0 * sum->grad_seq[s];  // sequences 1 and P+1 are in no other pair
      CHECK(none_pp->grad_seq[s] == Approx(own).epsilon(1e-15));
    } else {
      CHECK(none_pp->grad_seq[s] == 0.0);
    }
  }
  // grad_pair_losses is ignored by the other reductions.
  const auto mean_with_gpl = go(reduction::mean, 0, 1, {9.0, 9.0, 9.0, 9.0});
  CHECK(test::bitwise_equal(mean_with_gpl->grad_logits, mean->grad_logits));
}

TEST_CASE("minus-infinity logits and infinite losses", "[reference]") {
  // Two pairs of one-row sequences, V = 3.
  problem pb;
  pb.N = 4, pb.V = 3, pb.ld = 3, pb.S = 4, pb.P = 2;
  pb.logits = {0.5, -INF, 1.0,   // a masked-out vocabulary entry: fine
               -INF, 0.0, 2.0,   // label logit −∞: ℓ = −∞
               0.0, 0.0, 0.0,
               1.0, 2.0, -INF};
  pb.labels = {0, 0, 1, 2};
  pb.offsets = {0, 1, 2, 3, 4};
  options opt = test::options_for(loss_type::dpo);
  SECTION("finite results where the label logit is finite, exact zeros at -inf entries") {
    typed<double, int64_t, int64_t> t(pb);
    output_set o = make_outputs(pb);
    REQUIRE(run(t, opt, o) == status::success);
    CHECK(o.token_logps[0] == Approx(0.5 - std::log(std::exp(0.5) + std::exp(1.0))).epsilon(1e-15));
    CHECK(o.token_logps[1] == -INF);
    CHECK(o.token_logps[3] == -INF);
    CHECK(o.grad_logits[1] == 0.0);  // row 0's −∞ entry
    for (int v = 0; v < 3; ++v) CHECK(std::isfinite(o.grad_logits[v]));
    // Pair 1 = (seq 1, seq 3): h = −∞ − (−∞) = NaN, and IEEE arithmetic
    // carries the NaN on (documented); pair 0 = (seq 0, seq 2) stays finite.
    CHECK(std::isfinite(o.pair_losses[0]));
    CHECK(std::isnan(o.margins[1]));
    CHECK(std::isnan(o.pair_losses[1]));
  }
  SECTION("a zero-weight pair with an infinite loss contributes exactly nothing") {
    // Pairs (0, 2) and (1, 3). Seq 0's label logit is −∞: h_0 = −∞, dpo loss +∞.
    // Seq 3's label logit is −∞: h_1 = +∞, dpo loss 0.
    pb.labels = {0, 1, 1, 2};
    pb.logits[0] = -INF;
    pb.weights = {0.0, 1.0};
    typed<double, int64_t, int64_t> t(pb);
    output_set o = make_outputs(pb);
    REQUIRE(run(t, opt, o) == status::success);
    CHECK(o.margins[0] == -INF);
    CHECK(o.pair_losses[0] == 0.0);
    CHECK(o.margins[1] == INF);
    CHECK(o.pair_losses[1] == 0.0);  // dpo at h = +∞ is 0
    CHECK(o.out.loss == 0.0);
    for (double g : o.grad_logits) CHECK(std::isfinite(g));
    pb.weights = {1.0, 1.0};
    typed<double, int64_t, int64_t> t2(pb);
    output_set o2 = make_outputs(pb);
    REQUIRE(run(t2, opt, o2) == status::success);
    CHECK(o2.out.loss == INF);
  }
  SECTION("a scored row without a finite logit gives NaN (documented, not detected)") {
    for (int v = 0; v < 3; ++v) pb.logits[6 + v] = -INF;
    typed<double, int64_t, int64_t> t(pb);
    output_set o = make_outputs(pb);
    REQUIRE(run(t, opt, o) == status::success);
    CHECK(std::isnan(o.token_logps[2]));
  }
}

TEST_CASE("results are bitwise deterministic", "[reference]") {
  spec sp;
  sp.pairs = 5;
  sp.vocab = 50;
  sp.max_len = 9;
  sp.weights = true;
  const problem pb = test::make_problem(sp, 41);
  options opt = test::options_for(loss_type::gipo);
  opt.average_logps = true;
  typed<Eigen::bfloat16, int32_t, int64_t> t1(pb), t2(pb);
  output_set a = make_outputs(pb), b = make_outputs(pb), c = make_outputs(pb);
  REQUIRE(run(t1, opt, a) == status::success);
  REQUIRE(run(t2, opt, b) == status::success);
  REQUIRE(run(t1, opt, c) == status::success);
  require_same_outputs(a, b);
  require_same_outputs(a, c);
}

TEST_CASE("a subset of outputs gives the same values as a full run", "[reference]") {
  const problem pb = test::make_problem(spec{}, 51);
  typed<float, int64_t, int64_t> t(pb);
  options opt = test::options_for(loss_type::cdpo);
  output_set full = make_outputs(pb), part = make_outputs(pb);
  REQUIRE(run(t, opt, full) == status::success);
  reference::outputs only;
  only.pair_losses = part.pair_losses.data();
  only.grad_logits = part.grad_logits.data();
  REQUIRE(reference::compute(t.in, opt, only) == status::success);
  CHECK(test::bitwise_equal(part.pair_losses, full.pair_losses));
  CHECK(test::bitwise_equal(part.grad_logits, full.grad_logits));
  CHECK(only.loss == full.out.loss);
  CHECK(only.stats.calibration_error == full.out.stats.calibration_error);
  for (double x : part.token_logps) CHECK(x == output_set::POISON);
}
