// Vocab-parallel and data-parallel, on the CPU reference:
// - K simulated vocab ranks (reference/vocab_parallel.hpp) give every output
//   of the unsharded compute(), to a double-rounding tolerance, bitwise the
//   same run after run and whatever slot each rank's records land in;
// - K simulated data ranks, each with its share of the pairs and the global
//   normalisers (options::normalizer, nll_tokens, nll_weight), give
//   gradients and losses whose sums over ranks are the one-process ones.
#include <catch2/catch.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "geopref/reference/vocab_parallel.hpp"
#include "test_util.hpp"

using namespace geopref;
using namespace geopref::test;

namespace {

std::vector<int64_t> even_bounds(int64_t v, int k) {
  std::vector<int64_t> b;
  for (int r = 0; r < k; ++r) b.push_back(v / k * r);
  b.push_back(v);
  return b;
}

// Sharding changes only how lse_t's sum is grouped: Σ_r s_r e^{m_r − M}
// instead of one Σ_v e^{z_v − M}. Both are double sums of V positive terms
// with relative error ≤ V·2⁻⁵³ each, whatever the logits' dtype (the
// reference widens the same rounded inputs to double for both), so lse and
// ℓ agree to ~V·2⁻⁵² |lse|; everything downstream is the same code on
// values that close. 1e-12 relative (plus 1e-12 absolute near 0) leaves
// three orders of magnitude of room for V ≤ 100 and fails on any real
// mistake (a dropped column moves lse by ~1/V).
constexpr double TOL = 1e-12;

bool close(double got, double want) {
  if (got == want) return true;
  return std::fabs(got - want) <= TOL * (1.0 + std::fabs(want));
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(what << "[" << i << "]: got " << got[i] << ", want " << want[i]);
    CHECK(close(got[i], want[i]));
  }
}

template <class Logit>
void check_sharded(const problem& pb, const options& opt, const std::vector<int64_t>& bounds) {
  const int k = static_cast<int>(bounds.size()) - 1;
  INFO("ranks " << k << " V " << pb.V);
  typed<Logit, int64_t, int64_t> tp(pb);
  output_set want(pb.N, pb.S, pb.P, pb.ld);
  REQUIRE(reference::compute(tp.in, opt, want.out) == status::success);
  output_set got(pb.N, pb.S, pb.P, pb.ld);
  std::vector<int> slot(static_cast<size_t>(k));
  std::iota(slot.begin(), slot.end(), 0);
  REQUIRE(reference::compute_vocab_parallel(tp.in, opt, bounds.data(), k, slot.data(), got.out) ==
          status::success);
  check_close(got.lse, want.lse, "lse");
  check_close(got.token_logps, want.token_logps, "token_logps");
  check_close(got.seq_logps, want.seq_logps, "seq_logps");
  CHECK(got.seq_counts == want.seq_counts);
  check_close(got.pair_losses, want.pair_losses, "pair_losses");
  check_close(got.grad_seq, want.grad_seq, "grad_seq");
  check_close(got.grad_logits, want.grad_logits, "grad_logits");  // padding: both poisoned
  CHECK(close(got.out.loss, want.out.loss));
  CHECK(close(got.out.stats.rewards_margins, want.out.stats.rewards_margins));

  // Any other slot order: the same bits.
  std::reverse(slot.begin(), slot.end());
  if (k > 2) std::rotate(slot.begin(), slot.begin() + 1, slot.end());
  output_set again(pb.N, pb.S, pb.P, pb.ld);
  REQUIRE(reference::compute_vocab_parallel(tp.in, opt, bounds.data(), k, slot.data(), again.out) ==
          status::success);
  CHECK(bitwise_equal(again.lse, got.lse));
  CHECK(bitwise_equal(again.token_logps, got.token_logps));
  CHECK(bitwise_equal(again.grad_seq, got.grad_seq));
  CHECK(bitwise_equal(again.grad_logits, got.grad_logits));
  CHECK(std::memcmp(&again.out.loss, &got.out.loss, sizeof(double)) == 0);
}

problem vp_problem(uint64_t seed, int64_t vocab) {
  spec sp;
  sp.pairs = 3;
  sp.vocab = vocab;
  sp.pad = 2;
  sp.max_len = 5;
  sp.weights = true;
  sp.trailing_rows = 2;
  problem pb = make_problem(sp, seed);
  // Labels in the last column (the last slice's last column).
  int planted = 0;
  for (int64_t t = 0; t < pb.offsets.back() && planted < 3; t += 3)
    if (pb.labels[t] != -100) pb.labels[t] = pb.V - 1, ++planted;
  return pb;
}

}  // namespace

TEST_CASE("vocab-parallel reference: K = 1, 2, 3, 8 ranks in every logit type") {
  uint64_t seed = 100;
  options opt;
  opt.loss = config_for(loss_type::gdpo, 0.5);
  for (int k : {1, 2, 3, 8}) {
    const problem pb = vp_problem(++seed, 29);
    check_sharded<double>(pb, opt, even_bounds(pb.V, k));
    check_sharded<float>(pb, opt, even_bounds(pb.V, k));
    check_sharded<Eigen::half>(pb, opt, even_bounds(pb.V, k));
    check_sharded<Eigen::bfloat16>(pb, opt, even_bounds(pb.V, k));
  }
}

TEST_CASE("vocab-parallel reference: uneven slices, width 1, every loss type") {
  uint64_t seed = 200;
  const problem pb = vp_problem(++seed, 17);
  options opt;
  check_sharded<float>(pb, opt, {0, 1, 2, 9, 16, 17});
  check_sharded<double>(pb, opt, {0, 16, 17});
  for (int li = 0; li < LOSS_TYPE_COUNT; ++li) {
    const auto t = static_cast<loss_type>(li);
    problem q = vp_problem(++seed, 13);
    options o;
    o.loss = config_for(t);
    if (all_terms_reference_free(o.loss)) q.ref.clear();
    INFO(loss_name(t));
    check_sharded<double>(q, o, even_bounds(q.V, 3));
  }
}

TEST_CASE("vocab-parallel reference: bad tilings and gathered records are errors") {
  const problem pb = vp_problem(300, 11);
  typed<double, int64_t, int64_t> tp(pb);
  options opt;
  output_set o(pb.N, pb.S, pb.P, pb.ld);
  const int64_t good[] = {0, 4, 11};
  const int dup[] = {1, 1};
  CHECK(reference::compute_vocab_parallel(tp.in, opt, good, 2, dup, o.out) ==
        status::invalid_vocab_records);
  const int64_t short_tiling[] = {0, 4, 10};
  CHECK(reference::compute_vocab_parallel(tp.in, opt, short_tiling, 2, nullptr, o.out) ==
        status::invalid_vocab_records);
  const int64_t empty_slice[] = {0, 4, 4, 11};
  CHECK(reference::compute_vocab_parallel(tp.in, opt, empty_slice, 3, nullptr, o.out) ==
        status::invalid_vocab_records);
  // Records with a label owned twice: overlapping slices built by hand.
  std::vector<bool> scored(static_cast<size_t>(pb.N), true);
  std::vector<reference::vocab_record> rec(2);
  rec[0].rank = 0, rec[0].owns = true, rec[0].m = 0, rec[0].s = 1;
  rec[1].rank = 1, rec[1].owns = true, rec[1].m = 0, rec[1].s = 1;
  double l = 0, tl = 0;
  std::vector<bool> one(1, true);
  CHECK(reference::vocab_combine(rec.data(), 2, 1, one, &l, &tl) == status::invalid_vocab_records);
  rec[1].owns = false;
  CHECK(reference::vocab_combine(rec.data(), 2, 1, one, &l, &tl) == status::success);
  CHECK(close(l, std::log(2.0)));
}

// ---------------------------------------------------------------------------
// Data parallel.
namespace {

/// Rank r's share of a default-paired problem: pairs [p0, p1), as a problem
/// of its own (its chosen sequences, then its rejected ones).
problem data_share(const problem& pb, int64_t p0, int64_t p1, std::vector<int64_t>* row_of) {
  problem q;
  q.P = p1 - p0;
  q.S = 2 * q.P;
  q.V = pb.V;
  q.ld = pb.ld;
  q.grad_loss = pb.grad_loss;
  q.offsets.assign(1, 0);
  std::vector<int64_t> seqs;
  for (int64_t i = p0; i < p1; ++i) seqs.push_back(i);
  for (int64_t i = p0; i < p1; ++i) seqs.push_back(pb.P + i);
  for (int64_t s : seqs) {
    for (int64_t t = pb.offsets[s]; t < pb.offsets[s + 1]; ++t) {
      q.logits.insert(q.logits.end(), pb.logits.begin() + t * pb.ld, pb.logits.begin() + (t + 1) * pb.ld);
      q.labels.push_back(pb.labels[t]);
      row_of->push_back(t);
    }
    q.offsets.push_back(static_cast<int64_t>(q.labels.size()));
    if (!pb.ref.empty()) q.ref.push_back(pb.ref[s]);
  }
  q.N = q.offsets.back();
  for (int64_t i = p0; i < p1; ++i) {
    if (!pb.soft.empty()) q.soft.push_back(pb.soft[i]);
    if (!pb.weights.empty()) q.weights.push_back(pb.weights[i]);
  }
  return q;
}

void check_data_parallel(const problem& pb, options opt, int k) {
  INFO("data ranks " << k << " loss " << loss_name(opt.loss.type) << " terms " << opt.loss.n_terms);
  typed<double, int64_t, int64_t> tp(pb);
  output_set one(pb.N, pb.S, pb.P, pb.ld);
  REQUIRE(reference::compute(tp.in, opt, one.out) == status::success);

  // The global normalisers a data-parallel caller all-reduces up front.
  options dp = opt;
  dp.reduce = reduction::normalizer;
  dp.normalizer = static_cast<double>(pb.P);  // the one-process mean's divisor
  double tokens = 0, weight = 0;
  for (int64_t i = 0; i < pb.P; ++i) {
    const double w = pb.weights.empty() ? 1.0 : pb.weights[i];
    if (w == 0.0) continue;
    tokens += static_cast<double>(one.seq_counts[i]);
    weight += w;
  }
  dp.nll_tokens = tokens;
  dp.nll_weight = weight;

  double loss = 0;
  metric_sums sums;
  std::vector<double> grad_seq(static_cast<size_t>(pb.S), 0.0);
  std::vector<double> grad(one.grad_logits.size(), output_set::POISON);
  for (int r = 0; r < k; ++r) {
    const int64_t p0 = pb.P * r / k, p1 = pb.P * (r + 1) / k;
    std::vector<int64_t> row_of;
    const problem q = data_share(pb, p0, p1, &row_of);
    typed<double, int64_t, int64_t> tq(q);
    output_set o(q.N, q.S, q.P, q.ld);
    REQUIRE(reference::compute(tq.in, dp, o.out) == status::success);
    loss += o.out.loss;
    sums.rewards_chosen += o.out.sums.rewards_chosen;
    sums.rewards_margins += o.out.sums.rewards_margins;
    sums.calibration_error += o.out.sums.calibration_error;
    sums.pairs += o.out.sums.pairs;
    for (int64_t j = 0; j < q.P; ++j) {
      grad_seq[static_cast<size_t>(p0 + j)] += o.grad_seq[static_cast<size_t>(j)];
      grad_seq[static_cast<size_t>(pb.P + p0 + j)] += o.grad_seq[static_cast<size_t>(q.P + j)];
    }
    for (size_t t = 0; t < row_of.size(); ++t)
      std::copy(o.grad_logits.begin() + static_cast<int64_t>(t) * q.ld,
                o.grad_logits.begin() + static_cast<int64_t>(t + 1) * q.ld,
                grad.begin() + row_of[t] * pb.ld);
  }
  // Rows outside every sequence: the one-process gradient writes zeros there.
  for (int64_t t = pb.offsets.back(); t < pb.N; ++t)
    for (int64_t v = 0; v < pb.V; ++v) grad[static_cast<size_t>(t * pb.ld + v)] = 0.0;
  INFO("loss " << loss << " one-process " << one.out.loss);
  CHECK(close(loss, one.out.loss));
  check_close(grad_seq, one.grad_seq, "grad_seq (summed over data ranks)");
  check_close(grad, one.grad_logits, "grad_logits (each row from its rank)");
  const metrics m = metrics_from_sums(sums);
  CHECK(close(m.rewards_chosen, one.out.stats.rewards_chosen));
  CHECK(close(m.rewards_margins, one.out.stats.rewards_margins));
  CHECK(close(m.calibration_error, one.out.stats.calibration_error));
}

}  // namespace

TEST_CASE("data parallel: summed gradients over K data ranks equal the one-process gradient") {
  uint64_t seed = 400;
  for (int k : {1, 2, 3}) {
    spec sp;
    sp.pairs = 6;
    sp.vocab = 7;
    sp.max_len = 4;
    sp.weights = true;  // one pair has weight 0
    const problem pb = make_problem(sp, ++seed);
    options opt;
    opt.loss = config_for(loss_type::gdpo, 0.5);
    check_data_parallel(pb, opt, k);
    opt.average_logps = true;
    check_data_parallel(pb, opt, k);
    // The batch-coupled NLL term: exact only with nll_tokens / nll_weight.
    options comb;
    comb.loss = config_for(loss_type::dpo, 0.5);
    comb.loss.n_terms = 2;
    comb.loss.terms[0] = loss_type::dpo;
    comb.loss.term_weights[0] = 1.0;
    comb.loss.terms[1] = loss_type::sft;
    comb.loss.term_weights[1] = 0.7;
    check_data_parallel(pb, comb, k);
    // orpo needs every sequence scored (an empty one has L̄ = 0, odds ∞).
    spec full = sp;
    full.mask_prob = 0.0;
    full.ref = false;
    problem free;
    uint64_t s2 = seed * 1000;
    auto has_empty = [](const problem& p) {
      for (size_t s = 0; s + 1 < p.offsets.size(); ++s)
        if (p.offsets[s + 1] == p.offsets[s]) return true;
      return false;
    };
    do free = make_problem(full, ++s2); while (has_empty(free));
    options orpo = comb;
    orpo.loss.terms[0] = loss_type::orpo;
    check_data_parallel(free, orpo, k);
  }
}

TEST_CASE("data parallel options are validated") {
  options o;
  o.nll_tokens = -1;
  CHECK(validate(o) == status::invalid_reduction);
  o.nll_tokens = NAN;
  CHECK(validate(o) == status::invalid_reduction);
  o.nll_tokens = 10;
  o.nll_weight = INFINITY;
  CHECK(validate(o) == status::invalid_reduction);
  o.nll_weight = 3;
  CHECK(validate(o) == status::success);
  o.reduce = reduction::none;  // one upstream gradient per pair: no global coefficient
  CHECK(validate(o) == status::invalid_reduction);
}
