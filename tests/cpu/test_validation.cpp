// Every bad input returns its status and writes nothing: outputs are
// poisoned before the call and must hold the poison afterwards.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "geopref/c_options.hpp"
#include "test_util.hpp"  // the reference, the gradient checker, seeded problems

using namespace geopref;
using namespace geopref::test;

namespace {

const double NAN_ = std::numeric_limits<double>::quiet_NaN();
const double INF = std::numeric_limits<double>::infinity();

/// A bad-input case: a change to the problem, the options or the outputs.
struct bad_case {
  const char* name;
  status want;
  std::function<void(problem&, options&)> edit;
  std::function<void(reference::inputs<double, int64_t, int32_t>&, output_set&)> edit_view = {};
};

problem base_problem() {
  spec sp;
  sp.pairs = 3;
  sp.pad = 2;
  sp.weights = true;
  sp.trailing_rows = 1;
  sp.mask_prob = 0.0;
  return test::make_problem(sp, 77);
}

std::vector<bad_case> cases() {
  using s = status;
  std::vector<bad_case> v;
  auto loss = [](loss_type t) { return test::config_for(t); };
  // options
  v.push_back({"unknown loss", s::invalid_loss, [](problem&, options& o) { o.loss.type = static_cast<loss_type>(99); }});
  v.push_back({"beta 0", s::invalid_beta, [](problem&, options& o) { o.loss.beta = 0; }});
  v.push_back({"beta NaN", s::invalid_beta, [](problem&, options& o) { o.loss.beta = NAN_; }});
  v.push_back({"beta inf", s::invalid_beta, [](problem&, options& o) { o.loss.beta = INF; }});
  v.push_back({"robust eps 0.5", s::invalid_epsilon, [=](problem&, options& o) { o.loss = loss(loss_type::robust); o.loss.epsilon = 0.5; }});
  v.push_back({"exo eps 0", s::invalid_epsilon, [=](problem&, options& o) { o.loss = loss(loss_type::exo_pair); o.loss.epsilon = 0; }});
  v.push_back({"ropo alpha < 0", s::invalid_alpha_gamma, [=](problem&, options& o) { o.loss = loss(loss_type::ropo); o.loss.alpha = -1; }});
  v.push_back({"gropo gamma NaN", s::invalid_alpha_gamma, [=](problem&, options& o) { o.loss = loss(loss_type::gropo); o.loss.gamma = NAN_; }});
  v.push_back({"simpo gamma < 0", s::invalid_alpha_gamma, [=](problem& p, options& o) { o.loss = loss(loss_type::simpo); o.loss.gamma = -1; p.ref.clear(); }});
  v.push_back({"discopop tau 0", s::invalid_tau, [=](problem&, options& o) { o.loss = loss(loss_type::discopop); o.loss.tau = 0; }});
  v.push_back({"unknown reduction", s::invalid_reduction, [](problem&, options& o) { o.reduce = static_cast<reduction>(17); }});
  v.push_back({"normalizer 0", s::invalid_reduction, [](problem&, options& o) { o.reduce = reduction::normalizer; o.normalizer = 0; }});
  v.push_back({"normalizer NaN", s::invalid_reduction, [](problem&, options& o) { o.reduce = reduction::normalizer; o.normalizer = NAN_; }});
  v.push_back({"simpo with a reference", s::reference_not_allowed, [=](problem&, options& o) { o.loss = loss(loss_type::simpo); }});
  // the loss family beyond the margin
  v.push_back({"orpo with a reference", s::reference_not_allowed, [=](problem&, options& o) { o.loss = loss(loss_type::orpo); }});
  v.push_back({"orpo + sft with a reference", s::reference_not_allowed, [=](problem&, options& o) {
                 o.loss.n_terms = 2; o.loss.terms[0] = loss_type::orpo; o.loss.terms[1] = loss_type::sft;
                 o.loss.term_weights[0] = o.loss.term_weights[1] = 1; }});
  v.push_back({"geometric nca_pair", s::invalid_loss_option, [=](problem&, options& o) { o.loss = loss(loss_type::nca_pair); o.loss.geometric = true; }});
  v.push_back({"geometric aot in a combination", s::invalid_loss_option, [=](problem&, options& o) {
                 o.loss.geometric = true; o.loss.n_terms = 2; o.loss.terms[0] = loss_type::dpo; o.loss.terms[1] = loss_type::aot;
                 o.loss.term_weights[0] = o.loss.term_weights[1] = 1; }});
  v.push_back({"term weight inf", s::invalid_loss_option, [=](problem&, options& o) {
                 o.loss.n_terms = 1; o.loss.terms[0] = loss_type::dpo; o.loss.term_weights[0] = INF; }});
  v.push_back({"unknown term", s::invalid_loss, [=](problem&, options& o) {
                 o.loss.n_terms = 1; o.loss.terms[0] = static_cast<loss_type>(-1); o.loss.term_weights[0] = 1; }});
  v.push_back({"9 terms", s::invalid_loss_option, [=](problem&, options& o) { o.loss.n_terms = MAX_LOSS_TERMS + 1; }});
  v.push_back({"bco delta NaN", s::invalid_loss_option, [=](problem&, options& o) { o.loss = loss(loss_type::bco_pair); o.loss.bco_delta = NAN_; }});
  v.push_back({"alpha transform, f_alpha 0", s::invalid_loss_option, [=](problem&, options& o) {
                 o.loss.transform = margin_transform::alpha; o.loss.f_alpha = 0; }});
  v.push_back({"unknown transform", s::invalid_loss_option, [=](problem&, options& o) { o.loss.transform = static_cast<margin_transform>(3); }});
  v.push_back({"token weight NaN on a scored row", s::invalid_weight, {}, [](auto& in, output_set&) {
                 static double tw[64];
                 for (double& w : tw) w = 1.0;
                 int64_t t = 0;
                 while (in.labels[t] == -100) ++t;
                 tw[t] = NAN_;
                 in.token_weights = tw; }});
  // shapes and strides
  v.push_back({"N < 0", s::invalid_shape, {}, [](auto& in, output_set&) { in.n_rows = -1; }});
  v.push_back({"V < 0", s::invalid_shape, {}, [](auto& in, output_set&) { in.vocab = -2; }});
  v.push_back({"V = 0 with rows", s::invalid_shape, {}, [](auto& in, output_set&) { in.vocab = 0; }});
  v.push_back({"S < 0", s::invalid_shape, {}, [](auto& in, output_set&) { in.n_seqs = -1; }});
  v.push_back({"P < 0", s::invalid_shape, {}, [](auto& in, output_set&) { in.n_pairs = -1; }});
  v.push_back({"ld < V", s::invalid_stride, {}, [](auto& in, output_set&) { in.ld = in.vocab - 1; }});
  v.push_back({"grad_ld < V", s::invalid_stride, {}, [](auto& in, output_set& o) { o.out.grad_ld = in.vocab - 1; }});
  v.push_back({"grad_ld < 0", s::invalid_stride, {}, [](auto&, output_set& o) { o.out.grad_ld = -5; }});
  // Sizes no buffer can have: rejected before any index arithmetic overflows.
  v.push_back({"2P overflows", s::invalid_shape, {}, [](auto& in, output_set&) { in.n_pairs = (int64_t(1) << 62) + 1; }});
  v.push_back({"N * ld overflows", s::invalid_shape, {}, [](auto& in, output_set&) { in.n_rows = int64_t(1) << 40; in.ld = int64_t(1) << 40; }});
  v.push_back({"N * grad_ld overflows", s::invalid_shape, {}, [](auto& in, output_set& o) { in.n_rows = int64_t(1) << 30; o.out.grad_ld = int64_t(1) << 40; }});
  // null pointers
  v.push_back({"logits null", s::null_pointer, {}, [](auto& in, output_set&) { in.logits = nullptr; }});
  v.push_back({"labels null", s::null_pointer, {}, [](auto& in, output_set&) { in.labels = nullptr; }});
  v.push_back({"offsets null", s::null_pointer, {}, [](auto& in, output_set&) { in.offsets = nullptr; }});
  // offsets
  v.push_back({"offsets[0] != 0", s::invalid_offsets, [](problem& p, options&) { p.offsets[0] = 1; p.offsets[1] = std::max<int64_t>(p.offsets[1], 1); }});
  v.push_back({"offsets decreasing", s::invalid_offsets, [](problem& p, options&) { p.offsets[2] = p.offsets[1] - 1; }});
  v.push_back({"offsets past N", s::invalid_offsets, [](problem& p, options&) { p.offsets.back() = p.N + 1; }});
  // labels (the last row lies outside every sequence: it is still validated)
  v.push_back({"label = V", s::label_out_of_range, [](problem& p, options&) { p.labels[0] = p.V; }});
  v.push_back({"label = -1", s::label_out_of_range, [](problem& p, options&) { p.labels[1] = -1; }});
  v.push_back({"label outside sequences", s::label_out_of_range, [](problem& p, options&) { p.labels.back() = p.V + 3; }});
  v.push_back({"-100 without ignore_index -100", s::label_out_of_range, [](problem& p, options& o) { p.labels[2] = -100; o.ignore_index = -1; }});
  // pairs
  v.push_back({"S != 2P", s::pair_count_mismatch, {}, [](auto& in, output_set&) { in.n_pairs = 2; }});
  v.push_back({"pair index -1", s::pair_index_out_of_range, [](problem& p, options&) { p.pairs = {0, 1, 2, 3, 4, -1}; }});
  v.push_back({"pair index S", s::pair_index_out_of_range, [](problem& p, options&) { p.pairs = {0, p.S, 2, 3, 4, 5}; }});
  // per-pair values
  v.push_back({"p < 0", s::soft_label_out_of_range, [](problem& p, options&) { p.soft[1] = -0.01; }});
  v.push_back({"p > 1", s::soft_label_out_of_range, [](problem& p, options&) { p.soft[2] = 1.0000001; }});
  v.push_back({"p NaN", s::soft_label_out_of_range, [](problem& p, options&) { p.soft[0] = NAN_; }});
  v.push_back({"weight < 0", s::invalid_weight, [](problem& p, options&) { p.weights[1] = -1e-9; }});
  v.push_back({"weight NaN", s::invalid_weight, [](problem& p, options&) { p.weights[2] = NAN_; }});
  v.push_back({"weight inf", s::invalid_weight, [](problem& p, options&) { p.weights[0] = INF; }});
  v.push_back({"reference NaN", s::invalid_reference, [](problem& p, options&) { p.ref[3] = NAN_; }});
  v.push_back({"reference +inf", s::invalid_reference, [](problem& p, options&) { p.ref[0] = INF; }});
  // upstream gradients
  v.push_back({"grad_loss NaN", s::invalid_upstream_grad, [](problem& p, options&) { p.grad_loss = NAN_; }});
  v.push_back({"grad_loss inf", s::invalid_upstream_grad, [](problem& p, options&) { p.grad_loss = -INF; }});
  v.push_back({"grad_pair_losses inf (none)", s::invalid_upstream_grad, [](problem& p, options& o) { o.reduce = reduction::none; p.grad_pair_losses = {1, INF, 1}; }});
  return v;
}

}  // namespace

TEST_CASE("every bad input returns its status and writes nothing", "[validation]") {
  for (const bad_case& c : cases()) {
    problem pb = base_problem();
    options opt;
    opt.loss = test::config_for(loss_type::gdpo);
    if (c.edit) c.edit(pb, opt);
    typed<double, int64_t, int32_t> t(pb);
    output_set o(pb.N, pb.S, pb.P, pb.ld);
    auto in = t.in;
    if (c.edit_view) c.edit_view(in, o);
    INFO(c.name);
    CHECK(reference::compute(in, opt, o.out) == c.want);
    CHECK(o.untouched());
    // The same through compute_with_loss with a library functor.
    output_set o2(pb.N, pb.S, pb.P, pb.ld);
    if (c.edit_view) c.edit_view(in, o2);
    CHECK(reference::compute_with_loss(in, opt, dpo_loss<double>{0.5}, o2.out) == c.want);
    CHECK(o2.untouched());
    // And the gradient check reports the reference's status, leaving its result alone.
    gradcheck::logits_result r;
    r.worst_rel_error = 42;
    if (!c.edit_view) {
      CHECK(gradcheck::check_logits_gradient(in, opt, r) == c.want);
      CHECK(r.worst_rel_error == 42);
    }
  }
}

TEST_CASE("the valid base problem and valid edge values are accepted", "[validation]") {
  problem pb = base_problem();
  options opt;
  opt.loss = test::config_for(loss_type::gdpo);
  SECTION("as is") {}
  SECTION("p exactly 0 and 1, weight 0, reference -inf") {
    pb.soft = {0.0, 1.0, 0.5};
    pb.weights = {0.0, 1.0, 3.0};
    pb.ref[1] = -INF;
  }
  SECTION("grad_pair_losses non-finite but unused by mean") { pb.grad_pair_losses = {NAN_, 1, 1}; }
  SECTION("no rows, no sequences, no pairs") {
    pb = problem{};
    pb.offsets = {0};
  }
  SECTION("labels equal to a custom ignore_index") {
    opt.ignore_index = 3;
    pb.labels[0] = 3;
  }
  typed<double, int64_t, int32_t> t(pb);
  output_set o(pb.N, pb.S, pb.P, pb.ld > 0 ? pb.ld : 1);
  REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
  CHECK(std::isfinite(o.out.loss));
}

TEST_CASE("no pairs: loss and metrics are 0, not NaN", "[validation]") {
  problem pb;
  pb.N = 2, pb.V = 3, pb.ld = 3;
  pb.logits = {0, 1, 2, 3, 4, 5};
  pb.labels = {0, 1};
  pb.offsets = {0};
  for (reduction red : {reduction::mean, reduction::sum, reduction::none}) {
    options opt;
    opt.reduce = red;
    typed<double, int64_t, int64_t> t(pb);
    output_set o(pb.N, 0, 0, pb.ld);
    REQUIRE(reference::compute(t.in, opt, o.out) == status::success);
    CHECK(o.out.loss == 0.0);
    CHECK(o.out.stats.rewards_accuracies == 0.0);
    CHECK(o.out.stats.calibration_error == 0.0);
    for (double g : o.grad_logits) CHECK(g == 0.0);  // rows outside every sequence
  }
}

TEST_CASE("status strings are distinct and non-empty", "[validation]") {
  std::vector<std::string> seen;
  for (int i = 0; i <= static_cast<int>(status::internal_error); ++i) {
    const std::string m = status_string(static_cast<status>(i));
    CHECK(!m.empty());
    CHECK(std::find(seen.begin(), seen.end(), m) == seen.end());
    seen.push_back(m);
  }
}

TEST_CASE("geopref_options <-> geopref::options: every field of the list crosses both ways",
          "[validation][c_options]") {
  // Defaults: the C struct of options{} converts back to options{}.
  options d{}, back{};
  back.loss.beta = 7.0;
  REQUIRE(from_c(to_c(d), &back) == status::success);
  CHECK(back.loss.beta == d.loss.beta);
  // A value other than the default in every field, through C and back.
  options o{};
  o.loss.type = loss_type::ipo;
  o.loss.beta = 0.3, o.loss.alpha = 0.4, o.loss.gamma = 0.5, o.loss.epsilon = 0.2;
  o.loss.tau = 0.7, o.loss.bco_delta = -0.25, o.loss.f_alpha = 0.6;
  o.loss.transform = margin_transform::alpha;
  o.loss.geometric = true;
  o.loss.n_terms = 2;
  o.loss.terms[0] = loss_type::dpo, o.loss.terms[1] = loss_type::sft;
  o.loss.term_weights[0] = 0.75, o.loss.term_weights[1] = -1.5;
  o.reduce = reduction::normalizer, o.normalizer = 12.0, o.average_logps = true;
  o.ignore_index = -7, o.nll_tokens = 33.0, o.nll_weight = 4.5;
  options r{};
  REQUIRE(from_c(to_c(o), &r) == status::success);
  CHECK(to_c(o).struct_size == sizeof(geopref_options));  // ABI 1.0: what the C entries read first
  int fields = 0;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc)                          \
  ++fields;                                                                            \
  CHECK(std::memcmp(&r.P name, &o.P name, sizeof(o.P name)) == 0);                     \
  CHECK(std::memcmp(&r.P name, &d.P name, sizeof(d.P name)) != 0);
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  CHECK(fields == 19);
  // Out-of-range values from C: the C++ API's status, never a cast.
  geopref_options c = to_c(options{});
  c.loss = LOSS_TYPE_COUNT;
  CHECK(from_c(c, &r) == status::invalid_loss);
  c = to_c(options{}), c.reduction = 4;
  CHECK(from_c(c, &r) == status::invalid_reduction);
  c = to_c(options{}), c.transform = -1;
  CHECK(from_c(c, &r) == status::invalid_loss_option);
  c = to_c(options{}), c.n_terms = MAX_LOSS_TERMS + 1;
  CHECK(from_c(c, &r) == status::invalid_loss_option);
  c = to_c(options{}), c.n_terms = 1, c.terms[0] = -3;
  CHECK(from_c(c, &r) == status::invalid_loss);
  c.n_terms = 0;  // terms past n_terms are never read
  CHECK(from_c(c, &r) == status::success);
}
