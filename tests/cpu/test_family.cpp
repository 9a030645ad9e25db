// The loss family beyond the margin (docs/math.md §5, "Terms beyond the
// margin"): two-sided terms, orpo, the batch-coupled terms (sft, aot,
// aot_unpaired), margin transforms, the geometric form of every margin loss,
// weighted combinations and per-token weights, each checked against formulas
// written here from the sources (TRL v0.28.0 trl/trainer/dpo_trainer.py and
// trl/experimental/orpo/orpo_trainer.py), in long double and without the
// library's functors:
//   * the loss and per-pair losses, from the reference's token log-probs;
//   * g_s = ∂Loss/∂L_s against central differences of those formulas;
//   * the whole chain down to the logits against finite differences
//     (gradcheck), for the combinations, transforms and token weights.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "geopref/losses.hpp"
#include "geopref/reference/gradcheck.hpp"
#include "test_util.hpp"

using namespace geopref;
using test::problem;
using test::typed;

namespace {

using ld = long double;

ld softplus(ld x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
ld sig(ld x) { return 1.0L / (1.0L + std::exp(-x)); }
ld logsig(ld x) { return -softplus(-x); }

/// What the test computes independently: the problem's per-sequence sums
/// are the variables.
struct setup {
  const problem* pb;
  options opt;
  std::vector<double> token_weights;  // [N] or empty
  std::vector<ld> tok;                // ℓ_t from the reference (0 for unscored rows)
};

/// The margin losses by their textbook formulas, z = βh.
ld margin_value(loss_type t, const loss_config& c, ld h, ld p) {
  const ld b = c.beta, z = b * h;
  switch (t) {
    case loss_type::dpo: return -logsig(z);
    case loss_type::cdpo: return -p * logsig(z) - (1 - p) * logsig(-z);
    case loss_type::ipo: return (h - 1 / (2 * b)) * (h - 1 / (2 * b));
    case loss_type::cipo:
      return p * (h - 1 / (2 * b)) * (h - 1 / (2 * b)) + (1 - p) * (h + 1 / (2 * b)) * (h + 1 / (2 * b));
    case loss_type::ropo: return c.alpha * sig(-z) - c.gamma * logsig(z);
    case loss_type::hinge: return std::max<ld>(0, 1 - z);
    case loss_type::robust:
      return (-(1 - c.epsilon) * logsig(z) + c.epsilon * logsig(-z)) / (1 - 2 * c.epsilon);
    case loss_type::exo_pair:
      return sig(z) * (logsig(z) - std::log1p(-(ld)c.epsilon)) +
             sig(-z) * (logsig(-z) - std::log((ld)c.epsilon));
    case loss_type::discopop: {
      const ld m = sig(z / c.tau);
      return (1 - m) * -logsig(z) + m * std::exp(-z);
    }
    case loss_type::simpo: return -logsig(z - c.gamma);
    case loss_type::gdpo: return margin_value(loss_type::dpo, c, (2 * p - 1) * h, p);
    case loss_type::gipo: return margin_value(loss_type::ipo, c, (2 * p - 1) * h, p);
    case loss_type::gropo: return margin_value(loss_type::ropo, c, (2 * p - 1) * h, p);
    default: return NAN;
  }
}

/// φ of TRL's f-divergences, written from their definitions: JS's
/// log(2u/(1+u)) without the constant, α's (1 − u^{−α})/α without it.
ld phi(const loss_config& c, ld r) {
  switch (c.transform) {
    case margin_transform::js: return r - std::log1p(std::exp(r));
    case margin_transform::alpha: return -std::pow(std::exp(r), -(ld)c.f_alpha) / c.f_alpha;
    default: return r;
  }
}

/// The whole loss (reduced as the options say) and the per-pair losses, as
/// a function of the per-sequence sums L.
ld family_loss(const setup& su, const std::vector<ld>& L, std::vector<ld>* per_pair = nullptr) {
  const problem& pb = *su.pb;
  const options& o = su.opt;
  const loss_config& c = o.loss;
  const int64_t P = pb.P;
  std::vector<int64_t> cnt(static_cast<size_t>(pb.S), 0);
  for (int64_t s = 0; s < pb.S; ++s)
    for (int64_t t = pb.offsets[s]; t < pb.offsets[s + 1]; ++t) cnt[s] += pb.labels[t] != -100;
  auto A = [&](int64_t i) { return pb.pairs.empty() ? i : pb.pairs[2 * i]; };
  auto B = [&](int64_t i) { return pb.pairs.empty() ? P + i : pb.pairs[2 * i + 1]; };
  auto x = [&](int64_t s, bool av) { return av ? (cnt[s] > 0 ? L[s] / (ld)cnt[s] : 0.0L) : L[s]; };
  auto R = [&](int64_t s) { return pb.ref.empty() ? 0.0L : (ld)pb.ref[s]; };
  auto w = [&](int64_t i) { return pb.weights.empty() ? 1.0L : (ld)pb.weights[i]; };
  auto p = [&](int64_t i) { return pb.soft.empty() ? 1.0L : (ld)pb.soft[i]; };
  std::vector<ld> loss(static_cast<size_t>(P), 0.0L);
  const int K = c.n_terms > 0 ? c.n_terms : 1;
  for (int k = 0; k < K; ++k) {
    const loss_type t = c.n_terms > 0 ? c.terms[k] : c.type;
    const ld lam = c.n_terms > 0 ? c.term_weights[k] : 1.0L;
    const bool av = o.average_logps || t == loss_type::simpo || t == loss_type::orpo;
    const bool free = t == loss_type::simpo || t == loss_type::orpo;
    const ld b = c.beta;
    std::vector<int64_t> live;
    for (int64_t i = 0; i < P; ++i)
      if (w(i) != 0) live.push_back(i);
    if (t == loss_type::sft) {
      ld sum = 0, n = 0;
      for (int64_t i : live) sum += L[A(i)], n += cnt[A(i)];
      const ld nll = n > 0 ? -sum / n : 0;
      for (int64_t i : live) loss[i] += lam * w(i) * nll;
      continue;
    }
    if (t == loss_type::aot || t == loss_type::aot_unpaired) {
      std::vector<std::pair<ld, int64_t>> xs, ys;
      for (int64_t i : live) {
        const ld xa = x(A(i), av), xb = x(B(i), av);
        if (t == loss_type::aot) xs.push_back({xa - xb, i}), ys.push_back({R(A(i)) - R(B(i)), i});
        else xs.push_back({xa - R(A(i)), i}), ys.push_back({xb - R(B(i)), i});
      }
      std::sort(xs.begin(), xs.end());
      std::sort(ys.begin(), ys.end());
      for (size_t q = 0; q < live.size(); ++q) {
        const int64_t j = live[q];
        const ld d = xs[q].first - ys[q].first;
        loss[j] += lam * w(j) * (-p(j) * logsig(b * d) - (1 - p(j)) * logsig(-b * d));
      }
      continue;
    }
    for (int64_t i : live) {
      const ld xa = x(A(i), av), xb = x(B(i), av);
      const ld rw = xa - (free ? 0 : R(A(i))), rl = xb - (free ? 0 : R(B(i)));
      ld v = 0;
      switch (t) {
        case loss_type::nca_pair: v = -logsig(b * rw) - 0.5L * logsig(-b * rw) - 0.5L * logsig(-b * rl); break;
        case loss_type::bco_pair: v = -logsig(b * rw - c.bco_delta) - logsig(-(b * rl - c.bco_delta)); break;
        case loss_type::sppo_hard: v = (rw - 0.5L / b) * (rw - 0.5L / b) + (rl + 0.5L / b) * (rl + 0.5L / b); break;
        case loss_type::apo_zero: v = (1 - sig(b * rw)) + sig(b * rl); break;
        case loss_type::apo_down: v = sig(b * rw) + (1 - sig(b * (rw - rl))); break;
        case loss_type::orpo: {
          const ld lo = (xa - xb) - (std::log1p(-std::exp(xa)) - std::log1p(-std::exp(xb)));
          v = -b * logsig(lo);
          break;
        }
        default: {
          const ld h = phi(c, rw) - phi(c, rl);
          const ld g = c.geometric ? 2 * p(i) - 1 : 1;
          v = margin_value(t, c, g * h, p(i));
        }
      }
      loss[i] += lam * w(i) * v;
    }
  }
  ld total = 0;
  for (ld v : loss) total += v;
  if (per_pair) *per_pair = loss;
  const ld div = o.reduce == reduction::mean ? (P > 0 ? (ld)P : 1)
                 : o.reduce == reduction::normalizer ? o.normalizer
                                                      : 1;
  return o.reduce == reduction::none ? total : total / div;
}

/// Runs the reference and checks loss, pair losses and g_s against the
/// formulas above (g_s by central differences in long double).
void check_against_formulas(const problem& pb, const options& opt,
                            const std::vector<double>& token_weights, const std::string& what) {
  INFO(what);
  typed<double, int64_t, int64_t> t(pb);
  if (!token_weights.empty()) t.in.token_weights = token_weights.data();
  test::output_set o(pb.N, pb.S, pb.P, pb.V);
  REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
  setup su{&pb, opt, token_weights, {}};
  std::vector<ld> L(static_cast<size_t>(pb.S), 0.0L);
  for (int64_t s = 0; s < pb.S; ++s)
    for (int64_t r = pb.offsets[s]; r < pb.offsets[s + 1]; ++r)
      if (pb.labels[r] != -100)
        L[s] += (token_weights.empty() ? 1.0L : (ld)token_weights[r]) * (ld)o.token_logps[r];
  std::vector<ld> per_pair;
  const ld want = family_loss(su, L, &per_pair);
  // Double arithmetic through a few dozen operations against long double:
  // ~1e-15 relative; 1e-12 catches any wrong term, factor or sign.
  CHECK(o.out.loss == Approx((double)want).epsilon(1e-12).margin(1e-13));
  for (int64_t i = 0; i < pb.P; ++i) {
    INFO("pair " << i);
    CHECK(o.pair_losses[i] == Approx((double)per_pair[i]).epsilon(1e-12).margin(1e-13));
  }
  // With reduction none the coefficient of pair i's loss is the upstream
  // gradient; the formulas give Σ_i up_i loss_i.
  std::vector<ld> up(static_cast<size_t>(pb.P), (ld)pb.grad_loss);
  for (int64_t i = 0; i < pb.P && opt.reduce == reduction::none && !pb.grad_pair_losses.empty(); ++i)
    up[i] *= pb.grad_pair_losses[i];
  auto objective = [&](const std::vector<ld>& l) {
    std::vector<ld> pp;
    const ld v = family_loss(su, l, &pp);
    if (opt.reduce != reduction::none) return (ld)pb.grad_loss * v;
    ld s = 0;
    for (int64_t i = 0; i < pb.P; ++i) s += up[i] * pp[i];
    return s;
  };
  for (int64_t s = 0; s < pb.S; ++s) {
    // Central difference, step 1e-6 in long double (64-bit mantissa):
    // truncation ~1e-12·|f'''|, round-off ~1e-19/1e-6 = 1e-13.
    const ld hstep = 1e-6L;
    std::vector<ld> lp = L, lm = L;
    lp[s] += hstep;
    lm[s] -= hstep;
    const ld fd = (objective(lp) - objective(lm)) / (2 * hstep);
    INFO("sequence " << s << " analytic " << o.grad_seq[s] << " numeric " << (double)fd);
    CHECK(o.grad_seq[s] == Approx((double)fd).epsilon(1e-6).margin(1e-8));
  }
}

loss_config config_of(loss_type t) {
  loss_config c = test::config_for(t, 0.7);
  c.bco_delta = 0.13;
  return c;
}

std::vector<loss_type> every_loss() {
  std::vector<loss_type> v;
  for (int i = 0; i < LOSS_TYPE_COUNT; ++i) v.push_back(static_cast<loss_type>(i));
  return v;
}

/// orpo's odds are singular at probability 1, and an empty sequence's
/// average log-prob is 0: problems for it have a scored row in every
/// sequence ([S, T] layout, the first row of each kept).
bool needs_nonempty(const loss_config& c) {
  for (int k = 0; k < term_count(c); ++k)
    if (term_type(c, k) == loss_type::orpo) return true;
  return false;
}
void make_nonempty(problem& pb) {
  for (int64_t s = 0; s < pb.S; ++s) {
    REQUIRE(pb.offsets[s + 1] > pb.offsets[s]);
    if (pb.labels[pb.offsets[s]] == -100) pb.labels[pb.offsets[s]] = s % pb.V;
  }
}

test::spec base_spec() {
  test::spec sp;
  sp.pairs = 5;
  sp.vocab = 7;
  sp.max_len = 5;
  sp.logit_scale = 1.5;
  return sp;
}

}  // namespace

TEST_CASE("every loss against its formula: values, pair losses and g_s", "[family]") {
  uint64_t seed = 900;
  for (loss_type lt : every_loss())
    for (int layout = 0; layout < 4; ++layout) {
      test::spec sp = base_spec();
      options opt;
      opt.loss = config_of(lt);
      if (layout == 1) sp.weights = true, sp.explicit_pairs = true, opt.reduce = reduction::sum;
      if (layout == 2) opt.average_logps = true, opt.reduce = reduction::none;
      if (layout == 3) sp.soft = false, opt.reduce = reduction::normalizer, opt.normalizer = 2.5;
      if (needs_nonempty(opt.loss)) sp.padded = true;
      problem pb = test::make_problem(sp, ++seed);
      if (needs_nonempty(opt.loss)) make_nonempty(pb);
      if (all_terms_reference_free(opt.loss)) pb.ref.clear();
      pb.grad_loss = 0.8;
      if (opt.reduce == reduction::none)
        for (int64_t i = 0; i < pb.P; ++i) pb.grad_pair_losses.push_back(0.3 + 0.4 * (double)i);
      check_against_formulas(pb, opt, {}, std::string(loss_name(lt)) + " layout " + std::to_string(layout));
    }
}

TEST_CASE("margin transforms and the geometric form of every margin loss", "[family]") {
  uint64_t seed = 1900;
  for (loss_type lt : every_loss()) {
    if (kind_of(lt) != loss_kind::margin) continue;
    for (margin_transform tr : {margin_transform::reverse_kl, margin_transform::js, margin_transform::alpha})
      for (bool geo : {false, true}) {
        if (geo && is_geometric(lt)) continue;
        options opt;
        opt.loss = config_of(lt);
        opt.loss.transform = tr;
        opt.loss.f_alpha = 0.6;
        opt.loss.geometric = geo;
        problem pb = test::make_problem(base_spec(), ++seed);
        if (is_reference_free(lt)) pb.ref.clear();
        check_against_formulas(pb, opt, {},
                               std::string(loss_name(lt)) + " " + transform_name(tr) + (geo ? " geometric" : ""));
      }
  }
}

TEST_CASE("weighted combinations and per-token weights", "[family]") {
  struct combo {
    std::vector<loss_type> terms;
    std::vector<double> weights;
  };
  const std::vector<combo> combos = {
      {{loss_type::dpo, loss_type::sft}, {1.0, 0.5}},                       // RPO
      {{loss_type::orpo, loss_type::sft}, {1.0, 1.0}},                      // ORPO
      {{loss_type::dpo, loss_type::bco_pair, loss_type::sft}, {0.8, 0.2, 1.0}},  // MPO-like
      {{loss_type::apo_zero, loss_type::aot, loss_type::nca_pair}, {0.5, 1.5, -0.25}},
      {{loss_type::aot_unpaired, loss_type::sppo_hard, loss_type::ipo}, {1.0, 0.1, 0.3}},
  };
  uint64_t seed = 2900;
  for (const combo& cb : combos)
    for (int variant = 0; variant < 3; ++variant) {
      options opt;
      opt.loss = config_of(loss_type::dpo);
      opt.loss.n_terms = static_cast<int>(cb.terms.size());
      for (size_t k = 0; k < cb.terms.size(); ++k)
        opt.loss.terms[k] = cb.terms[k], opt.loss.term_weights[k] = cb.weights[k];
      test::spec sp = base_spec();
      if (variant == 1) sp.weights = true, sp.explicit_pairs = true;
      if (variant == 2) opt.average_logps = true, opt.loss.transform = margin_transform::js;
      if (needs_nonempty(opt.loss)) sp.padded = true;
      problem pb = test::make_problem(sp, ++seed);
      if (needs_nonempty(opt.loss)) make_nonempty(pb);
      if (all_terms_reference_free(opt.loss)) pb.ref.clear();
      std::vector<double> tw;
      if (variant != 0)
        for (int64_t r = 0; r < pb.N; ++r) tw.push_back(r % 3 == 0 ? 0.4 : 1.0 + 0.1 * (double)(r % 5));
      std::string name;
      for (loss_type t : cb.terms) name += std::string(loss_name(t)) + "+";
      check_against_formulas(pb, opt, tw, name + " variant " + std::to_string(variant));
    }
}

TEST_CASE("the whole chain to the logits: combinations, transforms, token weights", "[family][gradcheck]") {
  uint64_t seed = 3900;
  for (int c = 0; c < 6; ++c) {
    options opt;
    opt.loss = config_of(loss_type::dpo);
    test::spec sp = base_spec();
    sp.pairs = 3;
    sp.weights = c % 2 == 1;
    switch (c) {
      case 0: opt.loss.n_terms = 3, opt.loss.terms[0] = loss_type::dpo, opt.loss.terms[1] = loss_type::sft,
              opt.loss.terms[2] = loss_type::cipo, opt.loss.term_weights[0] = 1.0,
              opt.loss.term_weights[1] = 0.7, opt.loss.term_weights[2] = 0.3; break;
      case 1: opt.loss.type = loss_type::orpo; break;
      case 2: opt.loss.transform = margin_transform::alpha, opt.loss.f_alpha = 0.5; break;
      case 3: opt.loss.type = loss_type::cipo, opt.loss.geometric = true, opt.loss.transform = margin_transform::js; break;
      case 4: opt.loss.type = loss_type::aot; break;
      case 5: opt.loss.n_terms = 3, opt.loss.terms[0] = loss_type::apo_down, opt.loss.terms[1] = loss_type::aot_unpaired,
              opt.loss.terms[2] = loss_type::bco_pair, opt.loss.term_weights[0] = 1.0,
              opt.loss.term_weights[1] = 0.5, opt.loss.term_weights[2] = 2.0; break;
    }
    if (needs_nonempty(opt.loss)) sp.padded = true;
    problem pb = test::make_problem(sp, ++seed);
    if (needs_nonempty(opt.loss)) make_nonempty(pb);
    if (all_terms_reference_free(opt.loss)) pb.ref.clear();
    typed<double, int64_t, int64_t> t(pb);
    std::vector<double> tw;
    for (int64_t r = 0; r < pb.N; ++r) tw.push_back(0.5 + 0.25 * (double)(r % 4));
    if (c >= 2) t.in.token_weights = tw.data();
    gradcheck::logits_result r;
    REQUIRE(gradcheck::check_logits_gradient(t.in, opt, r) == status::success);
    INFO("case " << c << " worst " << r.worst_rel_error << " at row " << r.row << " col " << r.col
                 << " analytic " << r.analytic << " numeric " << r.numeric);
    // As in test_reference's whole-chain check: Φ is O(1), the five-point
    // stencil with δ = 1e-3 gives ~1e-12 absolute error; 1e-5 still catches
    // any wrong factor, sign or term.
    CHECK(r.passed(1e-5));
    CHECK(r.checked == pb.N * pb.V);
  }
}

TEST_CASE("sorted terms: ties keep pair order, and the gradient follows the permutation", "[family]") {
  // Three pairs with equal chosen log-ratios: stable order means position k
  // is pair k, so the result equals the unsorted computation.
  problem pb = test::make_problem(base_spec(), 77);
  typed<double, int64_t, int64_t> t(pb);
  options opt;
  opt.loss = config_of(loss_type::aot_unpaired);
  test::output_set o(pb.N, pb.S, pb.P, pb.V);
  REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
  // The same problem with the pairs listed in reverse order (explicit
  // pairs): sorting makes the loss under mean reduction invariant.
  problem rev = pb;
  rev.pairs.clear();
  for (int64_t i = pb.P - 1; i >= 0; --i) rev.pairs.push_back(i), rev.pairs.push_back(pb.P + i);
  std::reverse(rev.soft.begin(), rev.soft.end());
  typed<double, int64_t, int64_t> tr(rev);
  test::output_set o2(pb.N, pb.S, pb.P, pb.V);
  REQUIRE(reference::compute(tr.in, opt, o2.out) == status::success);
  // Position k's soft label is pair k's: reversing the list reverses which
  // label meets which sorted position, so use binary labels for invariance.
  problem bin = pb;
  bin.soft.clear();
  problem binrev = rev;
  binrev.soft.clear();
  typed<double, int64_t, int64_t> tb(bin), tbr(binrev);
  test::output_set ob(pb.N, pb.S, pb.P, pb.V), obr(pb.N, pb.S, pb.P, pb.V);
  REQUIRE(reference::compute(tb.in, opt, ob.out) == status::success);
  REQUIRE(reference::compute(tbr.in, opt, obr.out) == status::success);
  CHECK(ob.out.loss == Approx(obr.out.loss).epsilon(1e-14));
  for (int64_t s = 0; s < pb.S; ++s) CHECK(ob.grad_seq[s] == Approx(obr.grad_seq[s]).epsilon(1e-12).margin(1e-15));
}

TEST_CASE("empty sequences, NaN and bad options with the new losses", "[family][validation]") {
  for (loss_type lt : every_loss()) {
    INFO(loss_name(lt));
    test::spec sp = base_spec();
    sp.padded = true;
    problem pb = test::make_problem(sp, 4242);
    make_nonempty(pb);
    // Sequence 0 (a chosen) is all masked: n = 0, L = 0.
    for (int64_t r = pb.offsets[0]; r < pb.offsets[1]; ++r) pb.labels[r] = -100;
    if (is_reference_free(lt)) pb.ref.clear();
    typed<double, int64_t, int64_t> t(pb);
    options opt;
    opt.loss = config_of(lt);
    opt.average_logps = true;
    test::output_set o(pb.N, pb.S, pb.P, pb.V);
    REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
    // An empty sequence's averaged log-prob is 0 and gets gradient 0 (sft
    // reads the summed log-prob: its g_s is −1/Σn, harmless with no rows);
    // orpo's odds at probability 1 are infinite, its loss for an empty
    // chosen response 0.
    if (lt != loss_type::sft) CHECK(o.grad_seq[0] == 0.0);
    for (int64_t r = pb.offsets[0]; r < pb.offsets[1]; ++r)
      for (int64_t v = 0; v < pb.V; ++v) CHECK(o.grad_logits[r * pb.V + v] == 0.0);
    CHECK(std::isfinite(o.out.loss));
    for (double g : o.grad_seq) CHECK(std::isfinite(g));
  }
  // A NaN logit in a chosen sequence poisons that pair's loss (NaN), as with
  // the margin losses, never an out-of-bounds write.
  for (loss_type lt : {loss_type::nca_pair, loss_type::orpo, loss_type::aot, loss_type::sft}) {
    INFO(loss_name(lt));
    test::spec sp = base_spec();
    sp.padded = true;
    problem pb = test::make_problem(sp, 4343);
    make_nonempty(pb);
    if (is_reference_free(lt)) pb.ref.clear();
    int64_t row = pb.offsets[1];
    while (row < pb.N && pb.labels[row] == -100) ++row;
    REQUIRE(row < pb.offsets[pb.S]);
    pb.logits[row * pb.ld] = NAN;
    typed<double, int64_t, int64_t> t(pb);
    options opt;
    opt.loss = config_of(lt);
    test::output_set o(pb.N, pb.S, pb.P, pb.V);
    REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
    CHECK(std::isnan(o.out.loss));
  }
  // Bad options.
  options opt;
  auto st = [&](const options& o) { return validate(o); };
  opt.loss.geometric = true;
  opt.loss.type = loss_type::nca_pair;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.type = loss_type::gdpo;
  CHECK(st(opt) == status::invalid_loss_option);  // already geometric
  opt.loss.type = loss_type::dpo;
  CHECK(st(opt) == status::success);
  opt.loss.geometric = false;
  opt.loss.transform = margin_transform::alpha;
  opt.loss.f_alpha = 0.0;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.f_alpha = NAN;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.f_alpha = 0.5;
  CHECK(st(opt) == status::success);
  opt.loss.transform = static_cast<margin_transform>(7);
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.transform = margin_transform::reverse_kl;
  opt.loss.type = loss_type::bco_pair;
  opt.loss.bco_delta = INFINITY;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.bco_delta = 0;
  opt.loss.n_terms = MAX_LOSS_TERMS + 1;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.n_terms = 2;
  opt.loss.terms[0] = loss_type::dpo;
  opt.loss.terms[1] = static_cast<loss_type>(LOSS_TYPE_COUNT);
  opt.loss.term_weights[0] = opt.loss.term_weights[1] = 1.0;
  CHECK(st(opt) == status::invalid_loss);
  opt.loss.terms[1] = loss_type::sft;
  opt.loss.term_weights[1] = NAN;
  CHECK(st(opt) == status::invalid_loss_option);
  opt.loss.term_weights[1] = 1.0;
  CHECK(st(opt) == status::success);

  // A reference with only reference-free terms is an error; with one term
  // that reads it, it is used by that term and ignored by the others.
  problem pb = test::make_problem(base_spec(), 5);
  typed<double, int64_t, int64_t> t(pb);
  test::output_set o(pb.N, pb.S, pb.P, pb.V);
  options both;
  both.loss.n_terms = 2;
  both.loss.terms[0] = loss_type::orpo;
  both.loss.terms[1] = loss_type::sft;
  both.loss.term_weights[0] = both.loss.term_weights[1] = 1.0;
  CHECK(reference::compute(t.in, both, o.out) == status::reference_not_allowed);
  CHECK(o.untouched());
  both.loss.terms[1] = loss_type::dpo;
  CHECK(reference::compute(t.in, both, o.out) == status::success);

  // Per-token weights: a NaN on a scored row is an error, on an unscored row
  // it is never read.
  std::vector<double> tw(static_cast<size_t>(pb.N), 1.0);
  int64_t scored = 0;
  while (pb.labels[scored] == -100) ++scored;
  tw[scored] = NAN;
  t.in.token_weights = tw.data();
  test::output_set o3(pb.N, pb.S, pb.P, pb.V);
  options plain;
  CHECK(reference::compute(t.in, plain, o3.out) == status::invalid_weight);
  CHECK(o3.untouched());
  tw[scored] = 1.0;
  for (int64_t r = 0; r < pb.N; ++r)
    if (pb.labels[r] == -100) tw[r] = NAN;
  CHECK(reference::compute(t.in, plain, o3.out) == status::success);
  CHECK(std::isfinite(o3.out.loss));
}

TEST_CASE("token weights: all ones is bitwise no weights; LD-DPO's public/verbose split", "[family]") {
  problem pb = test::make_problem(base_spec(), 6);
  typed<double, int64_t, int64_t> t(pb);
  options opt;
  test::output_set a(pb.N, pb.S, pb.P, pb.V), b(pb.N, pb.S, pb.P, pb.V);
  REQUIRE(reference::compute(t.in, opt, a.out) == status::success);
  std::vector<double> ones(static_cast<size_t>(pb.N), 1.0);
  t.in.token_weights = ones.data();
  REQUIRE(reference::compute(t.in, opt, b.out) == status::success);
  CHECK(test::bitwise_equal(a.grad_logits, b.grad_logits));
  CHECK(a.out.loss == b.out.loss);
  CHECK(test::bitwise_equal(a.seq_logps, b.seq_logps));
}

// train_step<Loss> is enabled only for the margin-loss shape, so a null
// stream written `nullptr` still picks the stream overload.
static_assert(is_margin_loss_v<dpo_loss<double>>);
static_assert(is_margin_loss_v<geometric<ipo_loss<double>>>);
static_assert(is_margin_loss_v<any_loss<double>>);
static_assert(!is_margin_loss_v<std::nullptr_t>);
static_assert(!is_margin_loss_v<int>);
static_assert(!is_margin_loss_v<nca_pair_loss<double>>);
