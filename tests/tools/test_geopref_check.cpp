// geopref-check end to end: the test writes .npy inputs itself, runs the
// tool, reads its outputs, and compares them with the CPU reference called
// directly on the same values. Both sides run the same code on the same
// doubles and the files carry doubles losslessly (metrics.json uses %.17g),
// so the comparison is exact. Then every kind of bad input must give a
// non-zero exit and exactly one line on stderr.
#include <catch2/catch.hpp>
#include <sys/wait.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "geopref/reference/reference.hpp"
#include "npy.hpp"
#include "npy_bytes.hpp"

using namespace geopref::test;
using geopref::tools::npy_array;

namespace {

const std::string TMP = std::string(GEOPREF_TEST_TMP);

std::string path(const std::string& name) { return TMP + "/" + name; }

struct run_result {
  int exit_code = -1;
  std::string err;  // stderr
};

run_result run_tool(const std::string& args) {
  const std::string err_file = path("stderr.txt");
  const std::string cmd =
      std::string("'") + GEOPREF_CHECK_EXE + "' " + args + " > /dev/null 2> '" + err_file + "'";
  const int st = std::system(cmd.c_str());
  run_result r;
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 1000;  // 1000: killed by a signal
  bytes b;
  if (read_file(err_file, &b)) r.err.assign(b.begin(), b.end());
  return r;
}

// Saves an array under TMP and returns the path.
template <class T>
std::string save(const std::string& name, const std::string& descr, const std::string& shape,
                 const std::vector<T>& v) {
  const std::string p = path(name);
  REQUIRE(write_file(p, npy_file(descr, shape, v)));
  return p;
}

std::vector<double> read_doubles(const std::string& p, std::vector<int64_t>* shape = nullptr) {
  npy_array a;
  std::string err;
  INFO(p << ": " << err);
  REQUIRE(geopref::tools::read_npy(p, &a, &err));
  REQUIRE(a.dtype == geopref::tools::npy_dtype::float64);
  if (shape != nullptr) *shape = a.shape;
  return a.f64;
}

std::vector<int32_t> read_ints(const std::string& p) {
  npy_array a;
  std::string err;
  INFO(p << ": " << err);
  REQUIRE(geopref::tools::read_npy(p, &a, &err));
  REQUIRE(a.dtype == geopref::tools::npy_dtype::int32);
  return a.i32;
}

// Reads "key": number from metrics.json; NaN when absent or null.
double json_value(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const std::size_t at = json.find(k);
  if (at == std::string::npos) return std::nan("");
  const char* s = json.c_str() + at + k.size();
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  return end == s ? std::nan("") : v;
}

std::string read_text(const std::string& p) {
  bytes b;
  REQUIRE(read_file(p, &b));
  return std::string(b.begin(), b.end());
}

// The reference's results for one problem, called directly.
struct direct {
  geopref::status st{};
  std::vector<double> pair_losses, seq_logps, grad;
  double loss = 0;
  geopref::metrics stats;
};

template <class Logit, class Label, class Offset>
direct call_reference(geopref::reference::inputs<Logit, Label, Offset> in,
                      const geopref::options& opt) {
  direct d;
  d.pair_losses.assign(static_cast<std::size_t>(in.n_pairs), 0.0);
  d.seq_logps.assign(static_cast<std::size_t>(in.n_seqs), 0.0);
  d.grad.assign(static_cast<std::size_t>(in.n_rows * in.vocab), 0.0);
  geopref::reference::outputs out;
  out.pair_losses = d.pair_losses.data();
  out.seq_logps = d.seq_logps.data();
  out.grad_logits = d.grad.data();
  out.grad_ld = in.vocab;
  d.st = geopref::reference::compute(in, opt, out);
  d.loss = out.loss;
  d.stats = out.stats;
  return d;
}

void check_outputs(const std::string& out_dir, const direct& d, bool reduction_none,
                   const std::vector<int64_t>& logits_shape) {
  REQUIRE(d.st == geopref::status::success);
  std::vector<int64_t> shape;
  const std::vector<double> loss = read_doubles(out_dir + "/loss.npy", &shape);
  if (reduction_none) {
    CHECK(shape == std::vector<int64_t>{static_cast<int64_t>(d.pair_losses.size())});
    CHECK(loss == d.pair_losses);
  } else {
    CHECK(shape.empty());
    REQUIRE(loss.size() == 1);
    CHECK(loss[0] == d.loss);
  }
  CHECK(read_doubles(out_dir + "/logps.npy", &shape) == d.seq_logps);
  CHECK(read_doubles(out_dir + "/grad_logits.npy", &shape) == d.grad);
  CHECK(shape == logits_shape);
  const std::string json = read_text(out_dir + "/metrics.json");
  INFO(json);
  // JSON has no infinity: a non-finite loss (orpo with an empty rejected
  // response, docs/math.md) is written as null, read back as NaN.
  if (std::isfinite(d.loss)) CHECK(json_value(json, "loss") == d.loss);
  else CHECK(std::isnan(json_value(json, "loss")));
  CHECK(json_value(json, "rewards/chosen") == d.stats.rewards_chosen);
  CHECK(json_value(json, "rewards/rejected") == d.stats.rewards_rejected);
  CHECK(json_value(json, "rewards/accuracies") == d.stats.rewards_accuracies);
  CHECK(json_value(json, "rewards/margins") == d.stats.rewards_margins);
  CHECK(json_value(json, "logps/chosen") == d.stats.logps_chosen);
  CHECK(json_value(json, "logps/rejected") == d.stats.logps_rejected);
  CHECK(json_value(json, "calibration_error") == d.stats.calibration_error);
}

// A problem with ragged sequences (one empty, one fully masked) in [N, V]
// float32 logits, int64 labels, int32 offsets, and float64 soft labels.
struct ragged {
  static constexpr int64_t N = 9, V = 5, S = 6, P = 3;
  std::vector<float> logits;
  std::vector<int64_t> labels;
  std::vector<int32_t> offsets = {0, 2, 2, 4, 5, 7, 9};  // sequence 1 empty
  std::vector<double> soft = {0.9, 0.5, 0.2};
  std::vector<double> ref = {-3.0, -1.5, 0.25, -2.0, -4.5, -0.5};

  explicit ragged(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> z(0.0f, 3.0f);
    std::uniform_int_distribution<int64_t> y(0, V - 1);
    for (int64_t i = 0; i < N * V; ++i) logits.push_back(z(rng));
    for (int64_t t = 0; t < N; ++t) labels.push_back(y(rng));
    labels[4] = -100;  // sequence 3 = row 4, fully masked
    labels[6] = -100;
  }
  geopref::reference::inputs<float, int64_t, int32_t> inputs() const {
    auto in = geopref::reference::make_inputs(logits.data(), N, V, labels.data(),
                                              offsets.data(), S, P);
    in.soft_labels = soft.data();
    return in;
  }
  std::string save_all() const {
    return "--logits " + save("r_logits.npy", "<f4", "(9, 5)", logits) + " --labels " +
           save("r_labels.npy", "<i8", "(9,)", labels) + " --offsets " +
           save("r_offsets.npy", "<i4", "(7,)", offsets) + " --soft-labels " +
           save("r_soft.npy", "<f8", "(3,)", soft);
  }
};

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// geopref-check `args` --out `out` on the ragged problem succeeds and writes
// the reference's outputs `d`.
void check_run(const std::string& args, const std::string& out, const direct& d) {
  const run_result rr = run_tool(args + " --out " + out);
  INFO("stderr: " << rr.err);
  REQUIRE(rr.exit_code == 0);
  check_outputs(out, d, false, {ragged::N, ragged::V});
}

// geopref-check `args` fails with exit code `exit_code` (any non-zero one
// when -1) and one line on stderr that holds `needle`.
void check_fails(const std::string& args, const std::string& needle, int exit_code = -1) {
  INFO("geopref-check " << args);
  const run_result rr = run_tool(args);
  INFO("stderr: " << rr.err);
  if (exit_code < 0)
    CHECK(rr.exit_code != 0);
  else
    CHECK(rr.exit_code == exit_code);
  CHECK(count_lines(rr.err) == 1);
  CHECK(rr.err.find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("geopref-check matches the reference for every loss", "[check]") {
  const unsigned seed = 7;
  INFO("seed " << seed);
  const ragged r(seed);
  const std::string inputs = r.save_all();
  const std::string ref_arg = " --ref-logps " + save("r_ref.npy", "<f8", "(6,)", r.ref);
  for (int t = 0; t < geopref::LOSS_TYPE_COUNT; ++t) {
    const auto type = static_cast<geopref::loss_type>(t);
    const std::string name = geopref::loss_name(type);
    INFO("loss " << name);
    geopref::options opt;
    opt.loss.type = type;
    opt.loss.beta = 0.7;
    opt.loss.alpha = 0.3;
    opt.loss.gamma = type == geopref::loss_type::simpo ? 0.4 : 1.2;
    opt.loss.epsilon = type == geopref::loss_type::exo_pair ? 0.05 : 0.1;
    opt.loss.tau = 0.5;
    const bool with_ref = !geopref::is_reference_free(type);
    auto in = r.inputs();
    if (with_ref) in.ref_logps = r.ref.data();
    const direct d = call_reference(in, opt);

    const std::string out = path("out_" + name);
    char params[256];
    std::snprintf(params, sizeof params, " --beta 0.7 --alpha 0.3 --gamma %s --epsilon %s --tau 0.5",
                  type == geopref::loss_type::simpo ? "0.4" : "1.2",
                  type == geopref::loss_type::exo_pair ? "0.05" : "0.1");
    check_run(inputs + (with_ref ? ref_arg : "") + " --loss " + name + params, out, d);
  }
}

TEST_CASE("geopref-check --vocab-shards K writes the unsharded outputs", "[check][vocab_parallel]") {
  // The sharded forward groups each row's log-sum-exp by slice: a double
  // computation regrouped, so the outputs agree with the unsharded ones to
  // a few ulps (1e-12 relative leaves room and catches any real error).
  const ragged r(11);
  const std::string inputs = r.save_all();
  auto close = [](const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!(std::fabs(a[i] - b[i]) <= 1e-12 * (1.0 + std::fabs(b[i])))) return false;
    return true;
  };
  for (const char* loss : {"gdpo", "ipo"}) {
    geopref::options opt;
    opt.loss.type = std::string(loss) == "gdpo" ? geopref::loss_type::gdpo : geopref::loss_type::ipo;
    opt.loss.beta = 0.7;
    const direct d = call_reference(r.inputs(), opt);
    for (int k : {1, 2, 3, 5}) {  // V = 5: widths 1 1 1 2 (K = 3: 1 1 3), 1 each (K = 5)
      INFO(loss << " K = " << k);
      const std::string out = path(std::string("out_shards_") + loss + std::to_string(k));
      const run_result rr = run_tool(inputs + " --loss " + loss + " --beta 0.7 --vocab-shards " +
                                     std::to_string(k) + " --out " + out);
      INFO("stderr: " << rr.err);
      REQUIRE(rr.exit_code == 0);
      const std::vector<double> loss_v = read_doubles(out + "/loss.npy");
      REQUIRE(loss_v.size() == 1);
      CHECK(close(loss_v, {d.loss}));
      CHECK(close(read_doubles(out + "/logps.npy"), d.seq_logps));
      CHECK(close(read_doubles(out + "/grad_logits.npy"), d.grad));
      const std::string json = read_text(out + "/metrics.json");
      CHECK(close({json_value(json, "rewards/margins")}, {d.stats.rewards_margins}));
    }
  }
  CHECK(run_tool(inputs + " --loss dpo --vocab-shards 0 --out " + path("x")).exit_code == 2);
  const run_result six = run_tool(inputs + " --loss dpo --vocab-shards 6 --out " + path("x"));
  CHECK(six.exit_code == 1);
  CHECK(six.err.find("exceeds the vocabulary") != std::string::npos);
}

TEST_CASE("geopref-check: combinations, --geometric, --f-divergence, --bco-delta, --token-weights",
          "[check][family]") {
  const ragged r(21);
  const std::string inputs = r.save_all();
  const std::string ref_arg = " --ref-logps " + save("c_ref.npy", "<f8", "(6,)", r.ref);
  std::vector<double> tw;
  for (int64_t t = 0; t < ragged::N; ++t) tw.push_back(0.5 + 0.125 * static_cast<double>(t % 5));
  const std::string tw_arg = " --token-weights " + save("c_tw.npy", "<f8", "(9,)", tw);
  struct variant {
    std::string args;
    bool ref, token_weights;
    geopref::loss_config cfg;
  };
  std::vector<variant> vs;
  auto cfg = [] {
    geopref::loss_config c;
    c.beta = 0.7;
    return c;
  };
  {
    variant v{" --loss dpo,sft,bco_pair --loss-weights 1,0.5,2 --bco-delta 0.3", true, false, cfg()};
    v.cfg.n_terms = 3;
    v.cfg.terms[0] = geopref::loss_type::dpo, v.cfg.terms[1] = geopref::loss_type::sft;
    v.cfg.terms[2] = geopref::loss_type::bco_pair;
    v.cfg.term_weights[0] = 1, v.cfg.term_weights[1] = 0.5, v.cfg.term_weights[2] = 2;
    v.cfg.bco_delta = 0.3;
    vs.push_back(v);
  }
  {
    variant v{" --loss ipo --geometric --f-divergence alpha --f-alpha 0.5", true, true, cfg()};
    v.cfg.type = geopref::loss_type::ipo;
    v.cfg.geometric = true;
    v.cfg.transform = geopref::margin_transform::alpha;
    v.cfg.f_alpha = 0.5;
    vs.push_back(v);
  }
  {
    variant v{" --loss aot,nca_pair --f-divergence js", true, true, cfg()};
    v.cfg.n_terms = 2;
    v.cfg.terms[0] = geopref::loss_type::aot, v.cfg.terms[1] = geopref::loss_type::nca_pair;
    v.cfg.term_weights[0] = v.cfg.term_weights[1] = 1;
    v.cfg.transform = geopref::margin_transform::js;
    vs.push_back(v);
  }
  int k = 0;
  for (const variant& v : vs) {
    INFO("geopref-check" << v.args);
    geopref::options opt;
    opt.loss = v.cfg;
    auto in = r.inputs();
    if (v.ref) in.ref_logps = r.ref.data();
    if (v.token_weights) in.token_weights = tw.data();
    const direct d = call_reference(in, opt);
    const std::string out = path("out_family_" + std::to_string(k++));
    check_run(inputs + (v.ref ? ref_arg : "") + (v.token_weights ? tw_arg : "") + " --beta 0.7" +
                  v.args,
              out, d);
  }
  // Bad combinations: one clean line each.
  const std::string out = " --out " + path("out_family_err");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {" --loss dpo,sft --loss-weights 1", "--loss-weights: 1 weights for 2 losses"},
      {" --loss dpo --loss-weights nan", "weights must be finite"},
      {" --loss nca_pair --geometric", "--geometric: loss 'nca_pair' has no margin"},
      {" --loss gdpo --geometric", "already is one"},
      {" --loss dpo,sft2", "unknown loss 'sft2'"},
      {" --loss dpo --f-divergence kl", "--f-divergence must be"},
      {" --loss dpo --f-alpha 0.5", "--f-alpha needs --margin-transform alpha"},
      {" --loss dpo --f-divergence alpha --f-alpha 0", "geopref: invalid loss option"},
      {" --loss dpo --bco-delta x", "--bco-delta expects a number"},
      {" --loss dpo --token-weights " + save("c_twbad.npy", "<f8", "(8,)", std::vector<double>(8, 1.0)),
       "expected float32/64 (9,)"},
      {" --loss orpo,sft" + ref_arg, "reference not allowed"},
  };
  for (const auto& b : bad) check_fails(inputs + b.first + out, b.second);
}

TEST_CASE("geopref-check: [S, T, V] float16, explicit pairs, weights, reduction none", "[check]") {
  const unsigned seed = 11;
  INFO("seed " << seed);
  constexpr int64_t S = 4, T = 3, V = 6, P = 3;
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0.0f, 2.0f);
  std::vector<Eigen::half> logits;
  std::vector<uint16_t> bits;
  for (int64_t i = 0; i < S * T * V; ++i) {
    logits.push_back(Eigen::half(z(rng)));
    bits.push_back(Eigen::numext::bit_cast<uint16_t>(logits.back()));
  }
  const std::vector<int32_t> labels = {1, 5, -7, 0, 0, 2, -7, -7, -7, 3, 4, 5};  // ignore -7
  const std::vector<int32_t> pairs = {0, 1, 2, 3, 3, 1};
  const std::vector<float> weights = {1.0f, 0.25f, 2.5f};
  const std::vector<double> weights_d(weights.begin(), weights.end());
  const std::vector<int64_t> pairs64(pairs.begin(), pairs.end());
  std::vector<int64_t> offsets;
  for (int64_t s = 0; s <= S; ++s) offsets.push_back(s * T);

  const std::string args = "--logits " + save("h_logits.npy", "<f2", "(4, 3, 6)", bits) +
                           " --labels " + save("h_labels.npy", "<i4", "(4, 3)", labels) +
                           " --pairs " + save("h_pairs.npy", "<i4", "(3, 2)", pairs) +
                           " --weights " + save("h_weights.npy", "<f4", "(3,)", weights) +
                           " --ignore-index -7 --reduction none";

  auto in = geopref::reference::make_inputs(logits.data(), S * T, V, labels.data(),
                                            offsets.data(), S, P);
  in.pairs = pairs64.data();
  in.weights = weights_d.data();
  geopref::options opt;
  opt.loss.type = geopref::loss_type::dpo;
  opt.loss.beta = 0.25;
  opt.reduce = geopref::reduction::none;
  opt.ignore_index = -7;
  const direct d = call_reference(in, opt);

  const run_result rr = run_tool(args + " --loss dpo --beta 0.25 --out " + path("out_half"));
  INFO("stderr: " << rr.err);
  REQUIRE(rr.exit_code == 0);
  check_outputs(path("out_half"), d, true, {S, T, V});

  // The same with length-normalised log-probs and a sum.
  opt.average_logps = true;
  opt.reduce = geopref::reduction::sum;
  const direct d2 = call_reference(in, opt);
  const std::string args2 = args.substr(0, args.find(" --reduction")) + " --reduction sum";
  const run_result rr2 =
      run_tool(args2 + " --average-logps --loss dpo --beta 0.25 --out " + path("out_half_avg"));
  INFO("stderr: " << rr2.err);
  REQUIRE(rr2.exit_code == 0);
  check_outputs(path("out_half_avg"), d2, false, {S, T, V});
}

TEST_CASE("geopref-check: float64 logits, int64 offsets, simpo", "[check]") {
  constexpr int64_t N = 5, V = 4;
  std::vector<double> logits(N * V);
  for (int64_t i = 0; i < N * V; ++i) logits[i] = std::sin(0.7 * double(i)) * 4.0;
  const std::vector<int64_t> labels = {3, 0, 1, 2, 2};
  const std::vector<int64_t> offsets = {0, 3, 5};
  auto in = geopref::reference::make_inputs(logits.data(), N, V, labels.data(),
                                            offsets.data(), 2, 1);
  geopref::options opt;
  opt.loss.type = geopref::loss_type::simpo;
  opt.loss.beta = 2.0;
  opt.loss.gamma = 0.5;
  const direct d = call_reference(in, opt);
  const run_result rr = run_tool(
      "--logits " + save("d_logits.npy", "<f8", "(5, 4)", logits) + " --labels " +
      save("d_labels.npy", "<i8", "(5,)", labels) + " --offsets " +
      save("d_offsets.npy", "<i8", "(3,)", offsets) +
      " --loss simpo --beta 2 --gamma 0.5 --out " + path("out_simpo"));
  INFO("stderr: " << rr.err);
  REQUIRE(rr.exit_code == 0);
  check_outputs(path("out_simpo"), d, false, {N, V});
}

TEST_CASE("geopref-check: bad input gives a non-zero exit and one line", "[check]") {
  const ragged r(3);
  const std::string L = save("e_logits.npy", "<f4", "(9, 5)", r.logits);
  const std::string Y = save("e_labels.npy", "<i8", "(9,)", r.labels);
  const std::string O = save("e_offsets.npy", "<i4", "(7,)", r.offsets);
  const std::string base = "--logits " + L + " --labels " + Y + " --offsets " + O;
  const std::string out = " --out " + path("out_err");

  struct bad {
    std::string args;
    int exit_code;
    std::string needle;
  };
  auto labels_with = [&](int64_t bad_label) {
    std::vector<int64_t> y = r.labels;
    y[2] = bad_label;
    return save("e_badlabels.npy", "<i8", "(9,)", y);
  };
  std::vector<bad> cases = {
      // command line
      {base + out, 2, "--loss is required"},
      {base + " --loss dpo", 2, "--out is required"},
      {"--labels " + Y + " --loss dpo" + out, 2, "--logits is required"},
      {base + " --loss dpoo" + out, 2, "unknown loss 'dpoo'"},
      {base + " --loss dpo --beta abc" + out, 2, "--beta expects a number"},
      {base + " --loss dpo --beta 1e999" + out, 2, "--beta expects a number"},
      {base + " --loss dpo --ignore-index 1.5" + out, 2, "--ignore-index expects an integer"},
      {base + " --loss dpo --reduction avg" + out, 2, "--reduction must be"},
      {base + " --loss dpo --device tpu" + out, 2, "--device must be"},
      {base + " --loss dpo --frobnicate 1" + out, 2, "unknown option"},
      {base + " --loss dpo --beta" , 2, "--beta needs a value"},
      // files, dtypes and shapes
      {"--logits " + path("nope.npy") + " --labels " + Y + " --loss dpo" + out, 1, "cannot open"},
      {"--logits " + L + " --labels " + save("e_fl.npy", "<f4", "(9,)", std::vector<float>(9)) +
           " --offsets " + O + " --loss dpo" + out,
       1, "expected int32 or int64"},
      {"--logits " + save("e_il.npy", "<i4", "(9, 5)", std::vector<int32_t>(45)) + " --labels " +
           Y + " --offsets " + O + " --loss dpo" + out,
       1, "expected float16/32/64"},
      {"--logits " + L + " --labels " + save("e_y8.npy", "<i8", "(8,)", std::vector<int64_t>(8)) +
           " --offsets " + O + " --loss dpo" + out,
       1, "need labels [N]"},
      {"--logits " + save("e_1d.npy", "<f4", "(45,)", r.logits) + " --labels " + Y +
           " --loss dpo" + out,
       1, "expected [N, V] or [S, T, V]"},
      {"--logits " + L + " --labels " + Y + " --loss dpo" + out, 1, "--offsets: required"},
      {base + " --soft-labels " + save("e_p2.npy", "<f8", "(2,)", std::vector<double>{1, 1}) +
           " --loss gdpo" + out,
       1, "expected shape (3,)"},
      {base + " --weights " + save("e_wi.npy", "<i8", "(3,)", std::vector<int64_t>{1, 1, 1}) +
           " --loss dpo" + out,
       1, "expected a float array"},
      {base + " --pairs " + save("e_pr.npy", "<i8", "(1, 3)", std::vector<int64_t>{0, 1, 2}) +
           " --loss dpo" + out,
       1, "[P, 2]"},
      {base + " --ref-logps " + save("e_r.npy", "<f8", "(5,)", std::vector<double>(5)) +
           " --loss dpo" + out,
       1, "[S]"},
      {"--logits " + save("e_3d.npy", "<f4", "(3, 3, 5)", r.logits) + " --labels " + Y +
           " --loss dpo" + out,
       1, "need labels [S, T]"},
      {"--logits " + save("e_3d0.npy", "<f4", "(1000000000000, 0, 5)", std::vector<float>{}) +
           " --labels " + save("e_y0.npy", "<i8", "(1000000000000, 0)", std::vector<int64_t>{}) +
           " --loss dpo" + out,
       1, "T must be at least 1"},
      // every status the library returns for these inputs
      {"--logits " + L + " --labels " + labels_with(5) + " --offsets " + O + " --loss dpo" + out,
       1, "label out of range"},
      {"--logits " + L + " --labels " + labels_with(-1) + " --offsets " + O + " --loss dpo" + out,
       1, "label out of range"},
      {base + " --soft-labels " + save("e_p.npy", "<f8", "(3,)", std::vector<double>{1, 1.5, 0}) +
           " --loss gdpo" + out,
       1, "soft label out of range"},
      {base + " --soft-labels " +
           save("e_pn.npy", "<f8", "(3,)", std::vector<double>{1, std::nan(""), 0}) +
           " --loss gdpo" + out,
       1, "soft label out of range"},
      {base + " --weights " + save("e_w.npy", "<f8", "(3,)", std::vector<double>{1, -1, 0}) +
           " --loss dpo" + out,
       1, "invalid weight"},
      {base + " --ref-logps " +
           save("e_rn.npy", "<f8", "(6,)", std::vector<double>{0, 0, std::nan(""), 0, 0, 0}) +
           " --loss dpo" + out,
       1, "invalid reference"},
      {base + " --ref-logps " + save("e_rs.npy", "<f8", "(6,)", std::vector<double>(6)) +
           " --loss simpo" + out,
       1, "reference not allowed"},
      {base + " --pairs " + save("e_pi.npy", "<i8", "(1, 2)", std::vector<int64_t>{0, 6}) +
           " --loss dpo" + out,
       1, "pair index out of range"},
      {"--logits " + L + " --labels " + Y + " --offsets " +
           save("e_o5.npy", "<i4", "(6,)", std::vector<int32_t>{0, 2, 2, 4, 5, 9}) + " --loss dpo" +
           out,
       1, "pair count mismatch"},
      {"--logits " + L + " --labels " + Y + " --offsets " +
           save("e_od.npy", "<i4", "(7,)", std::vector<int32_t>{0, 3, 2, 4, 5, 7, 9}) +
           " --loss dpo" + out,
       1, "invalid offsets"},
      {"--logits " + L + " --labels " + Y + " --offsets " +
           save("e_ob.npy", "<i4", "(7,)", std::vector<int32_t>{0, 2, 2, 4, 5, 7, 10}) +
           " --loss dpo" + out,
       1, "invalid offsets"},
      {base + " --loss dpo --beta 0" + out, 1, "invalid beta"},
      {base + " --loss dpo --beta nan" + out, 1, "invalid beta"},
      {base + " --loss robust --epsilon 0.5" + out, 1, "invalid epsilon"},
      {base + " --loss exo_pair --epsilon 0" + out, 1, "invalid epsilon"},
      {base + " --loss ropo --alpha -1" + out, 1, "invalid alpha/gamma"},
      {base + " --loss simpo --gamma -0.5" + out, 1, "invalid alpha/gamma"},
      {base + " --loss discopop --tau 0" + out, 1, "invalid tau"},
      {"--logits " + save("e_v0.npy", "<f4", "(9, 0)", std::vector<float>{}) + " --labels " + Y +
           " --offsets " + O + " --loss dpo" + out,
       1, "geopref: "},
  };
#ifndef GEOPREF_CHECK_HAS_CUDA
  cases.push_back({base + " --loss dpo --device cuda" + out, 1, "built without CUDA"});
#endif

  for (const bad& b : cases) check_fails(b.args, b.needle, b.exit_code);
}

TEST_CASE("geopref-check: malformed .npy files are clean errors", "[check][npy]") {
  const ragged r(5);
  const std::string Y = save("m_labels.npy", "<i8", "(9,)", r.labels);
  const std::string O = save("m_offsets.npy", "<i4", "(7,)", r.offsets);
  const bytes good = npy_file("<f4", "(9, 5)", r.logits);
  auto body = [&](const std::string& header) {
    bytes b = npy_raw(header);
    const auto* p = reinterpret_cast<const unsigned char*>(r.logits.data());
    b.insert(b.end(), p, p + r.logits.size() * sizeof(float));
    return b;
  };
  bytes wrong_magic = good;
  wrong_magic[3] = 'X';
  const std::vector<std::pair<std::string, bytes>> files = {
      {"truncated data", bytes(good.begin(), good.end() - 3)},
      {"truncated header", bytes(good.begin(), good.begin() + 30)},
      {"empty file", bytes{}},
      {"wrong magic", wrong_magic},
      {"absurd shape", body(npy_header_text("<f4", "(281474976710656, 281474976710656)"))},
      {"huge but plausible shape", body(npy_header_text("<f4", "(100000000, 100000)"))},
      {"fortran order", body(npy_header_text("<f4", "(9, 5)", true))},
      {"wrong dtype", body(npy_header_text("<c8", "(9, 5)"))},
      {"header garbage", body("{'descr': '<f4', 'fortran_order': False, 'shape': (9, 5)] \n")},
      {"binary garbage", bytes(200, 0xa5)},
  };
  for (const auto& [what, b] : files) {
    INFO(what);
    const std::string L = path("m_logits.npy");
    REQUIRE(write_file(L, b));
    check_fails("--logits " + L + " --labels " + Y + " --offsets " + O + " --loss dpo --out " +
                    path("out_m"),
                "--logits: ", 1);
  }
}

// ---------------------------------------------------------------------------
// --per-token: token_logps.npy, entropy.npy and the statistics against
// reference::token_logps called directly, and with --token-grad (and
// --entropy-grad) the gradient of Σ_t G_t ℓ_t (+ E_t H_t) against
// reference::token_logps_grad: the same code on the same doubles, so equal
// bit for bit.
namespace {

template <class Logit, class Label>
void check_per_token(const std::string& out_dir, const Logit* logits, int64_t N, int64_t V,
                     const Label* labels, int64_t ignore, const std::vector<double>* g,
                     const std::vector<int64_t>& logits_shape,
                     const std::vector<double>* e = nullptr) {
  geopref::reference::token_rows<Logit, Label> in;
  in.logits = logits;
  in.n_rows = N;
  in.vocab = V;
  in.ld = V;
  in.labels = labels;
  in.ignore_index = ignore;
  std::vector<double> logp(static_cast<std::size_t>(N)), lse(logp.size()), ent(logp.size()),
      lssp(logp.size()), mean(logp.size());
  std::vector<uint8_t> top1(logp.size());
  geopref::reference::token_outputs out;
  out.token_logps = logp.data();
  out.lse = lse.data();
  out.entropy = ent.data();
  out.log_sum_sq_probs = lssp.data();
  out.mean_logits = mean.data();
  out.is_top1 = top1.data();
  REQUIRE(geopref::reference::token_logps(in, out) == geopref::status::success);
  std::vector<int64_t> shape;
  CHECK(read_doubles(out_dir + "/token_logps.npy", &shape) == logp);
  CHECK(shape == std::vector<int64_t>{N});
  CHECK(read_doubles(out_dir + "/entropy.npy", &shape) == ent);
  CHECK(read_doubles(out_dir + "/log_sum_sq_probs.npy", &shape) == lssp);
  CHECK(read_doubles(out_dir + "/mean_logits.npy", &shape) == mean);
  CHECK(read_ints(out_dir + "/is_top1.npy") == std::vector<int32_t>(top1.begin(), top1.end()));
  for (int64_t t = 0; t < N; ++t)
    if (static_cast<int64_t>(labels[t]) == ignore) CHECK(logp[static_cast<std::size_t>(t)] == 0.0);
  if (g == nullptr) {
    bytes b;
    CHECK_FALSE(read_file(out_dir + "/grad_logits.npy", &b));
    return;
  }
  std::vector<double> grad(static_cast<std::size_t>(N * V));
  REQUIRE(geopref::reference::token_logps_grad(in, lse.data(), g->data(), grad.data(), 0,
                                               e == nullptr ? nullptr : e->data()) ==
          geopref::status::success);
  CHECK(read_doubles(out_dir + "/grad_logits.npy", &shape) == grad);
  CHECK(shape == logits_shape);
}

}  // namespace

TEST_CASE("geopref-check --per-token: token log-probs and --token-grad", "[check]") {
  const ragged r(11);  // [9, 5] float32, int64 labels, rows 4 and 6 labelled -100
  const std::string L = save("t_logits.npy", "<f4", "(9, 5)", r.logits);
  const std::string Y = save("t_labels.npy", "<i8", "(9,)", r.labels);
  {
    const run_result rr = run_tool("--per-token --logits " + L + " --labels " + Y + " --out " +
                                   path("out_tok"));
    INFO("stderr: " << rr.err);
    REQUIRE(rr.exit_code == 0);
    check_per_token(path("out_tok"), r.logits.data(), 9, 5, r.labels.data(), -100, nullptr, {9, 5});
  }
  {
    std::vector<double> g(9);
    for (int t = 0; t < 9; ++t) g[static_cast<std::size_t>(t)] = std::cos(1.3 * t) * 2.0;
    g[6] = std::nan("");  // an ignored row's upstream gradient is never read
    const run_result rr =
        run_tool("--per-token --logits " + L + " --labels " + Y + " --token-grad " +
                 save("t_g.npy", "<f8", "(9,)", g) + " --out " + path("out_tok_g"));
    INFO("stderr: " << rr.err);
    REQUIRE(rr.exit_code == 0);
    check_per_token(path("out_tok_g"), r.logits.data(), 9, 5, r.labels.data(), -100, &g, {9, 5});
    // The entropy's upstream E too, and E alone (G then 0).
    std::vector<double> e(9);
    for (int t = 0; t < 9; ++t) e[static_cast<std::size_t>(t)] = std::sin(0.7 * t + 0.2) * 1.5;
    e[4] = std::nan("");  // an ignored row's: never read
    const std::string E = save("t_e.npy", "<f8", "(9,)", e);
    const run_result re =
        run_tool("--per-token --logits " + L + " --labels " + Y + " --token-grad " +
                 path("t_g.npy") + " --entropy-grad " + E + " --out " + path("out_tok_ge"));
    INFO("stderr: " << re.err);
    REQUIRE(re.exit_code == 0);
    check_per_token(path("out_tok_ge"), r.logits.data(), 9, 5, r.labels.data(), -100, &g, {9, 5},
                    &e);
    const run_result r0 = run_tool("--per-token --logits " + L + " --labels " + Y +
                                   " --entropy-grad " + E + " --out " + path("out_tok_e"));
    REQUIRE(r0.exit_code == 0);
    const std::vector<double> zero(9, 0.0);
    check_per_token(path("out_tok_e"), r.logits.data(), 9, 5, r.labels.data(), -100, &zero,
                    {9, 5}, &e);
  }
  {
    // [S, T, V] float16 logits, int32 labels [S, T], a custom ignore index,
    // float32 G in the labels' shape.
    constexpr int64_t S = 2, T = 3, V = 4;
    std::vector<uint16_t> bits;
    std::vector<Eigen::half> halves;
    for (int64_t i = 0; i < S * T * V; ++i) {
      const Eigen::half h(static_cast<float>(std::sin(0.9 * double(i)) * 5.0));
      halves.push_back(h);
      bits.push_back(Eigen::numext::bit_cast<uint16_t>(h));
    }
    const std::vector<int32_t> labels = {0, 3, 7, 2, 7, 1};
    const std::vector<float> gf = {0.5f, -1.25f, 3.0f, 2.0f, -0.75f, 1.0f};
    const std::vector<double> g(gf.begin(), gf.end());
    const run_result rr = run_tool(
        "--per-token --logits " + save("t3_logits.npy", "<f2", "(2, 3, 4)", bits) +
        " --labels " + save("t3_labels.npy", "<i4", "(2, 3)", labels) + " --token-grad " +
        save("t3_g.npy", "<f4", "(2, 3)", gf) + " --ignore-index 7 --out " + path("out_tok3"));
    INFO("stderr: " << rr.err);
    REQUIRE(rr.exit_code == 0);
    check_per_token(path("out_tok3"), halves.data(), S * T, V, labels.data(), 7, &g, {S, T, V});
  }
  // Bad use: one line on stderr, exit 2 (command line) or 1 (input).
  std::vector<double> bad_g(9, 1.0);
  bad_g[2] = std::nan("");  // row 2 is scored
  struct bad {
    std::string args;
    int exit_code;
    std::string needle;
  } cases[] = {
      {"--logits " + L + " --labels " + Y + " --token-grad " + path("t_g.npy") + " --loss dpo --out " +
           path("out_e"),
       2, "--token-grad needs --per-token"},
      {"--per-token --logits " + L + " --labels " + Y + " --loss dpo --out " + path("out_e"), 2,
       "--loss has no meaning with --per-token"},
      {"--per-token --logits " + L + " --labels " + Y + " --offsets " + Y + " --out " + path("out_e"),
       2, "--offsets has no meaning with --per-token"},
      {"--per-token --logits " + L + " --labels " + Y + " --token-grad " +
           save("t_g8.npy", "<f8", "(8,)", std::vector<double>(8)) + " --out " + path("out_e"),
       1, "the labels' shape"},
      {"--per-token --logits " + L + " --labels " + Y + " --token-grad " +
           save("t_gnan.npy", "<f8", "(9,)", bad_g) + " --out " + path("out_e"),
       1, "upstream gradient"},
      {"--logits " + L + " --labels " + Y + " --entropy-grad " + path("t_g.npy") +
           " --loss dpo --out " + path("out_e"),
       2, "--entropy-grad needs --per-token"},
      {"--per-token --logits " + L + " --labels " + Y + " --entropy-grad " +
           path("t_g8.npy") + " --out " + path("out_e"),
       1, "--entropy-grad"},
      {"--per-token --logits " + L + " --labels " + Y + " --entropy-grad " +
           path("t_gnan.npy") + " --out " + path("out_e"),
       1, "upstream gradient"},
      {"--per-token --logits " + L + " --labels " + save("t_y8.npy", "<i8", "(8,)", std::vector<int64_t>(8)) +
           " --out " + path("out_e"),
       1, "need labels (9,)"},
  };
  for (const bad& b : cases) check_fails(b.args, b.needle, b.exit_code);
}

namespace {

// Z = H·Wᵀ + b [N, V] for hidden states H [N, Hd] and a projection W [V, Hd].
std::vector<double> project(const std::vector<double>& H, const std::vector<double>& W,
                            const std::vector<double>& b, int64_t N, int64_t Hd, int64_t V) {
  std::vector<double> Z(static_cast<std::size_t>(N * V));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double z = b[v];
      for (int64_t k = 0; k < Hd; ++k) z += H[t * Hd + k] * W[v * Hd + k];
      Z[t * V + v] = z;
    }
  return Z;
}

// dir's grad_hidden [S, T, Hd], grad_weight [V, Hd] and grad_bias [V]
// against the chain rule through Z = H·Wᵀ + b from the gradient G [N, V] of
// the run on Z: G·W, Gᵀ·H, Σ_t G, each element within `margin`.
void check_projection_grads(const std::string& dir, const std::vector<double>& G,
                            const std::vector<double>& H, const std::vector<double>& W, int64_t S,
                            int64_t T, int64_t Hd, int64_t V, double margin) {
  const int64_t N = S * T;
  std::vector<int64_t> shape;
  const auto gh = read_doubles(dir + "/grad_hidden.npy", &shape);
  CHECK(shape == std::vector<int64_t>{S, T, Hd});
  const auto gw = read_doubles(dir + "/grad_weight.npy", &shape);
  CHECK(shape == std::vector<int64_t>{V, Hd});
  const auto gb = read_doubles(dir + "/grad_bias.npy", &shape);
  CHECK(shape == std::vector<int64_t>{V});
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < Hd; ++k) {
      double e = 0;
      for (int64_t v = 0; v < V; ++v) e += G[t * V + v] * W[v * Hd + k];
      CHECK(gh[t * Hd + k] == Approx(e).margin(margin));
    }
  for (int64_t v = 0; v < V; ++v) {
    double eb = 0;
    for (int64_t t = 0; t < N; ++t) eb += G[t * V + v];
    CHECK(gb[v] == Approx(eb).margin(margin));
    for (int64_t k = 0; k < Hd; ++k) {
      double e = 0;
      for (int64_t t = 0; t < N; ++t) e += G[t * V + v] * H[t * Hd + k];
      CHECK(gw[v * Hd + k] == Approx(e).margin(margin));
    }
  }
}

}  // namespace

// --hidden / --weight / --bias: the same results as --logits on H·Wᵀ + b
// formed here, and grad_hidden = G·W, grad_weight = Gᵀ·H, grad_bias = Σ_t G
// from that run's grad_logits (all in double: equal to rounding).
TEST_CASE("geopref-check --hidden --weight --bias equals --logits on H Wt + b",
          "[tools][fused_linear]") {
  const int64_t S = 4, T = 3, N = S * T, Hd = 2, V = 7;  // [S, T, Hd] hidden states
  std::mt19937_64 rng(77);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> H(static_cast<std::size_t>(N * Hd)), W(static_cast<std::size_t>(V * Hd)),
      b(static_cast<std::size_t>(V));
  for (auto& x : H) x = u(rng);
  for (auto& x : W) x = 2 * u(rng);
  for (auto& x : b) x = u(rng);
  std::vector<int64_t> labels(static_cast<std::size_t>(N));
  for (int64_t t = 0; t < N; ++t) labels[t] = t % T == T - 1 ? -100 : static_cast<int64_t>(rng() % V);
  const std::vector<double> Z = project(H, W, b, N, Hd, V);
  const std::string common = " --labels " + save("l_labels.npy", "<i8", "(4, 3)", labels) +
                             " --soft-labels " + save("l_soft.npy", "<f8", "(2,)", std::vector<double>{0.9, 0.3}) +
                             " --loss gdpo --beta 0.5";
  REQUIRE(run_tool("--logits " + save("l_logits.npy", "<f8", "(4, 3, 7)", Z) + common + " --out " +
                   path("l_out_logits"))
              .exit_code == 0);
  const std::string lin_args = "--hidden " + save("l_hidden.npy", "<f8", "(4, 3, 2)", H) +
                               " --weight " + save("l_weight.npy", "<f8", "(7, 2)", W) + " --bias " +
                               save("l_bias.npy", "<f8", "(7,)", b) + common;
  const run_result r = run_tool(lin_args + " --out " + path("l_out"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string a = path("l_out_logits"), l = path("l_out");
  CHECK(read_doubles(l + "/loss.npy")[0] == Approx(read_doubles(a + "/loss.npy")[0]).epsilon(1e-13));
  const auto la = read_doubles(a + "/logps.npy"), ll = read_doubles(l + "/logps.npy");
  REQUIRE(la.size() == ll.size());
  for (std::size_t i = 0; i < la.size(); ++i) CHECK(ll[i] == Approx(la[i]).epsilon(1e-13));
  check_projection_grads(l, read_doubles(a + "/grad_logits.npy"), H, W, S, T, Hd, V, 1e-14);
  CHECK(json_value(read_text(l + "/metrics.json"), "rewards/margins") ==
        Approx(json_value(read_text(a + "/metrics.json"), "rewards/margins")).epsilon(1e-13));

  // --vocab-shards 3 (rows of W: [0, 2), [2, 4), [4, 7)): the unsharded outputs, grad_weight
  // and grad_bias as the slices side by side, grad_hidden as the sum of the partials; double
  // throughout, so equal to rounding (the sums only regroup).
  {
    const run_result rs = run_tool(lin_args + " --vocab-shards 3 --out " + path("l_out_k3"));
    INFO(rs.err);
    REQUIRE(rs.exit_code == 0);
    const std::string k3 = path("l_out_k3");
    CHECK(read_doubles(k3 + "/loss.npy")[0] == Approx(read_doubles(l + "/loss.npy")[0]).epsilon(1e-13));
    for (const char* f : {"/logps.npy", "/grad_hidden.npy", "/grad_weight.npy", "/grad_bias.npy"}) {
      INFO(f);
      const auto want = read_doubles(l + f), got = read_doubles(k3 + f);
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-14).epsilon(1e-13));
    }
  }

  // Bad combinations: one line, non-zero exit.
  for (const std::string& bad :
       {std::string("--hidden ") + path("l_hidden.npy") + common + " --out " + path("l_bad"),
        "--hidden " + path("l_hidden.npy") + " --weight " +
            save("l_wbad.npy", "<f8", "(7, 3)", std::vector<double>(21, 0.0)) + common + " --out " +
            path("l_bad"),
        "--logits " + path("l_logits.npy") + " --weight " + path("l_weight.npy") + common +
            " --out " + path("l_bad"),
        "--hidden " + path("l_hidden.npy") + " --weight " + path("l_weight.npy") + " --bias " +
            save("l_bbad.npy", "<f8", "(6,)", std::vector<double>(6, 0.0)) + common + " --out " +
            path("l_bad")}) {
    const run_result e = run_tool(bad);
    INFO(bad << " -> " << e.err);
    CHECK(e.exit_code != 0);
    CHECK(std::count(e.err.begin(), e.err.end(), '\n') == 1);
  }
}

TEST_CASE("geopref-check --per-token --hidden --weight --bias equals --per-token --logits on H Wt + b",
          "[tools][fused_linear]") {
  const int64_t S = 3, T = 3, N = S * T, Hd = 2, V = 5;  // [S, T, Hd] hidden states
  std::mt19937_64 rng(78);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> H(static_cast<std::size_t>(N * Hd)), W(static_cast<std::size_t>(V * Hd)),
      b(static_cast<std::size_t>(V)), g(static_cast<std::size_t>(N));
  for (auto& x : H) x = u(rng);
  for (auto& x : W) x = 2 * u(rng);
  for (auto& x : b) x = u(rng);
  for (auto& x : g) x = u(rng);
  std::vector<int64_t> labels(static_cast<std::size_t>(N));
  for (int64_t t = 0; t < N; ++t) labels[t] = t % T == 1 ? -100 : static_cast<int64_t>(rng() % V);
  const std::vector<double> Z = project(H, W, b, N, Hd, V);
  const std::string common = " --per-token --labels " + save("pt_labels.npy", "<i8", "(3, 3)", labels) +
                             " --token-grad " + save("pt_g.npy", "<f8", "(3, 3)", g);
  REQUIRE(run_tool("--logits " + save("pt_logits.npy", "<f8", "(3, 3, 5)", Z) + common + " --out " +
                   path("pt_out_logits"))
              .exit_code == 0);
  const run_result r = run_tool("--hidden " + save("pt_hidden.npy", "<f8", "(3, 3, 2)", H) +
                                " --weight " + save("pt_weight.npy", "<f8", "(5, 2)", W) +
                                " --bias " + save("pt_bias.npy", "<f8", "(5,)", b) + common +
                                " --out " + path("pt_out"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string a = path("pt_out_logits"), l = path("pt_out");
  // The same double reference on Z formed two ways (here and by Eigen): equal
  // to rounding.
  for (const char* f : {"/token_logps.npy", "/entropy.npy"}) {
    const auto x = read_doubles(a + f), y = read_doubles(l + f);
    REQUIRE(x.size() == y.size());
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(y[i] == Approx(x[i]).margin(1e-13));
  }
  bytes none;
  CHECK_FALSE(read_file(l + "/grad_logits.npy", &none));
  check_projection_grads(l, read_doubles(a + "/grad_logits.npy"), H, W, S, T, Hd, V, 1e-13);
  // Labels that do not match the hidden states' rows: one line, non-zero exit.
  const run_result e = run_tool("--hidden " + path("pt_hidden.npy") + " --weight " +
                                path("pt_weight.npy") + " --per-token --labels " +
                                save("pt_lbad.npy", "<i8", "(9,)", labels) + " --out " + path("pt_bad"));
  INFO(e.err);
  CHECK(e.exit_code != 0);
  CHECK(std::count(e.err.begin(), e.err.end(), '\n') == 1);
}

// ---------------------------------------------------------------------------
// The logit transform: --logit-scale, --softcap, --temperature, one flag per
// field of GEOPREF_LOGIT_TRANSFORM_FIELDS. z' = s·z/T is exact in double for
// s = 2, T = 1 and for s = 1, T = 0.5, so the tool on z with either flag must
// write exactly what it writes on the file 2z without flags, and the gradient
// with respect to z exactly 2× the one with respect to 2z (the chain rule's
// factor s/T = 2 is a power of two). The softcap has no such identity: there
// the outputs must differ from the untransformed ones and equal, to rounding,
// the tool's on c·tanh(z/c) formed here.
namespace {

std::string tool_stdout(const std::string& args) {
  const std::string out_file = path("stdout.txt");
  const std::string cmd = std::string("'") + GEOPREF_CHECK_EXE + "' " + args + " > '" + out_file +
                          "' 2> /dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return read_text(out_file);
}

// dir_b's file f is dir_a's times `factor`, element for element: exactly
// (tol 0) or to a relative tolerance.
void check_scaled(const std::string& dir_a, const std::string& dir_b, const char* f,
                  double factor = 1.0, double tol = 0.0) {
  INFO(dir_b << f << " vs " << factor << " x " << dir_a << f);
  const auto a = read_doubles(dir_a + f), b = read_doubles(dir_b + f);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (tol == 0.0) CHECK(b[i] == factor * a[i]);
    else CHECK(b[i] == Approx(factor * a[i]).epsilon(tol).margin(tol));
  }
}

// Some element of dir_b's f differs from dir_a's by more than `gap`.
bool differs(const std::string& dir_a, const std::string& dir_b, const char* f, double gap) {
  const auto a = read_doubles(dir_a + f), b = read_doubles(dir_b + f);
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    if (std::abs(a[i] - b[i]) > gap) return true;
  return false;
}

void check_metrics_equal(const std::string& dir_a, const std::string& dir_b) {
  const std::string ja = read_text(dir_a + "/metrics.json"), jb = read_text(dir_b + "/metrics.json");
  for (const char* k : {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                        "logps/chosen", "logps/rejected", "calibration_error"}) {
    INFO(k);
    CHECK(json_value(jb, k) == json_value(ja, k));
  }
}

}  // namespace

TEST_CASE("geopref-check: every field of the logit transform is a flag in --help",
          "[check][logit_transform]") {
  const std::string help = tool_stdout("--help");
  int fields = 0;
#define GEOPREF_X(type, name, def, flag, doc)                                              \
  ++fields;                                                                                \
  CHECK(help.find(std::string("[--") + flag + " ") != std::string::npos);                 \
  CHECK(help.find(doc) != std::string::npos);
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  CHECK(fields == 3);  // scale, softcap, temperature; a new field: a new flag and a new test
}

TEST_CASE("geopref-check: --logit-scale, --temperature and --softcap reach every entry kind",
          "[check][logit_transform]") {
  const int64_t S = 4, T = 3, N = S * T, V = 6, Hd = 2;
  std::mt19937_64 rng(91);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> H(static_cast<std::size_t>(N * Hd)), W(static_cast<std::size_t>(V * Hd)),
      b(static_cast<std::size_t>(V)), g(static_cast<std::size_t>(N));
  for (auto& x : H) x = 2 * u(rng);
  for (auto& x : W) x = 2 * u(rng);
  for (auto& x : b) x = u(rng);
  for (auto& x : g) x = u(rng);
  std::vector<int64_t> labels(static_cast<std::size_t>(N));
  for (int64_t t = 0; t < N; ++t) labels[t] = t % T == 0 ? -100 : static_cast<int64_t>(rng() % V);
  const std::vector<double> z = project(H, W, b, N, Hd, V);
  std::vector<double> z2 = z, zc = z;  // 2z exactly; 3·tanh(z/3) as the reference forms it
  for (auto& x : z2) x *= 2;
  geopref::logit_transform cap;
  cap.softcap = 3.0;
  for (auto& x : zc) x = geopref::apply(cap, x);

  const std::string Y = save("lt_labels.npy", "<i8", "(4, 3)", labels);
  const std::string G = save("lt_g.npy", "<f8", "(4, 3)", g);
  const std::string L = save("lt_z.npy", "<f8", "(4, 3, 6)", z);
  const std::string L2 = save("lt_z2.npy", "<f8", "(4, 3, 6)", z2);
  const std::string Lc = save("lt_zc.npy", "<f8", "(4, 3, 6)", zc);
  const std::string lin = " --hidden " + save("lt_h.npy", "<f8", "(4, 3, 2)", H) + " --weight " +
                          save("lt_w.npy", "<f8", "(6, 2)", W) + " --bias " +
                          save("lt_b.npy", "<f8", "(6,)", b);
  const std::string loss = " --labels " + Y + " --soft-labels " +
                           save("lt_soft.npy", "<f8", "(2,)", std::vector<double>{0.8, 0.3}) +
                           " --loss gdpo --beta 0.5";
  const std::string tok = " --per-token --labels " + Y + " --token-grad " + G;
  auto run_ok = [](const std::string& args, const std::string& out) {
    const run_result r = run_tool(args + " --out " + path(out));
    INFO(args << " -> " << r.err);
    REQUIRE(r.exit_code == 0);
    return path(out);
  };
  const char* seq_files[] = {"/loss.npy", "/logps.npy"};
  const char* tok_files[] = {"/token_logps.npy", "/entropy.npy"};

  SECTION("sequence loss: --logit-scale 2 and --temperature 0.5 on z are no flag on 2z") {
    const std::string plain2 = run_ok("--logits " + L2 + loss, "lt_plain2");
    for (const char* flag : {" --logit-scale 2", " --temperature 0.5"}) {
      INFO(flag);
      const std::string got = run_ok("--logits " + L + loss + flag, "lt_scaled");
      for (const char* f : seq_files) check_scaled(plain2, got, f);
      check_scaled(plain2, got, "/grad_logits.npy", 2.0);
      check_metrics_equal(plain2, got);
    }
    // metrics.json records the transform the outputs are of.
    const std::string json = read_text(run_ok("--logits " + L + loss + " --logit-scale 2.5 "
                                              "--softcap 30 --temperature 0.75", "lt_json") +
                                       "/metrics.json");
    CHECK(json_value(json, "logit_scale") == 2.5);
    CHECK(json_value(json, "softcap") == 30.0);
    CHECK(json_value(json, "temperature") == 0.75);
    CHECK(json_value(read_text(plain2 + "/metrics.json"), "logit_scale") == 1.0);
  }
  SECTION("sequence loss: --softcap 3 on z is no flag on 3 tanh(z/3), and not no flag on z") {
    const std::string plain = run_ok("--logits " + L + loss, "lt_plain");
    const std::string capped = run_ok("--logits " + Lc + loss, "lt_capped_z");
    const std::string got = run_ok("--logits " + L + loss + " --softcap 3", "lt_cap");
    for (const char* f : seq_files) check_scaled(capped, got, f);
    CHECK(differs(plain, got, "/loss.npy", 1e-6));
    CHECK(differs(plain, got, "/grad_logits.npy", 1e-6));
    // ∂z'/∂z = 1 - tanh²(z/3) per element, on the capped run's gradient.
    const auto gc = read_doubles(capped + "/grad_logits.npy"), gz = read_doubles(got + "/grad_logits.npy");
    REQUIRE(gc.size() == gz.size());
    for (std::size_t i = 0; i < gz.size(); ++i)
      CHECK(gz[i] == Approx(gc[i] * geopref::slope(cap, z[i])).margin(1e-15).epsilon(1e-13));
  }
  SECTION("--vocab-shards: the unsharded outputs under the transform") {
    const std::string one = run_ok("--logits " + L + loss + " --softcap 3 --temperature 0.7", "lt_k1");
    const std::string k3 = run_ok("--logits " + L + loss + " --softcap 3 --temperature 0.7 --vocab-shards 3",
                                  "lt_k3");
    for (const char* f : {"/loss.npy", "/logps.npy", "/grad_logits.npy"}) check_scaled(one, k3, f, 1.0, 1e-13);
    const std::string plain = run_ok("--logits " + L + loss + " --vocab-shards 3", "lt_k3_plain");
    CHECK(differs(plain, k3, "/loss.npy", 1e-6));
  }
  SECTION("--hidden (with and without --vocab-shards): --logits H Wt + b under the same flags") {
    const std::string flags = " --logit-scale 1.5 --softcap 2 --temperature 0.8";
    const std::string on_z = run_ok("--logits " + L + loss + flags, "lt_lz");
    for (const char* shards : {"", " --vocab-shards 2"}) {
      INFO(shards);
      const std::string got = run_ok(lin + loss + flags + shards, "lt_lin");
      for (const char* f : seq_files) check_scaled(on_z, got, f, 1.0, 1e-13);
      check_projection_grads(got, read_doubles(on_z + "/grad_logits.npy"), H, W, S, T, Hd, V, 1e-13);
    }
    const std::string plain = run_ok(lin + loss, "lt_lin_plain");
    CHECK(differs(plain, on_z, "/loss.npy", 1e-6));
  }
  SECTION("--per-token: --logit-scale 2 on z is no flag on 2z; --hidden follows --logits") {
    const std::string plain2 = run_ok("--logits " + L2 + tok, "lt_t_plain2");
    const std::string got = run_ok("--logits " + L + tok + " --logit-scale 2", "lt_t_scaled");
    for (const char* f : tok_files) check_scaled(plain2, got, f);
    check_scaled(plain2, got, "/grad_logits.npy", 2.0);
    const std::string capped = run_ok("--logits " + L + tok + " --softcap 3", "lt_t_cap");
    const std::string capped_z = run_ok("--logits " + Lc + tok, "lt_t_cap_z");
    for (const char* f : tok_files) check_scaled(capped_z, capped, f);
    CHECK(differs(capped_z, run_ok("--logits " + L + tok, "lt_t_plain"), "/token_logps.npy", 1e-6));
    const std::string lin_cap = run_ok(lin + tok + " --softcap 3", "lt_t_lin_cap");
    for (const char* f : tok_files) check_scaled(capped, lin_cap, f, 1.0, 1e-13);
    check_projection_grads(lin_cap, read_doubles(capped + "/grad_logits.npy"), H, W, S, T, Hd, V,
                           1e-13);
  }
}

TEST_CASE("geopref-check: an invalid logit transform is the library's status, exit 1",
          "[check][logit_transform]") {
  const ragged r(5);
  const std::string inputs = r.save_all() + " --loss dpo";
  const std::string tok = "--per-token --logits " + path("r_logits.npy") + " --labels " +
                          path("r_labels.npy");
  const std::string msg = geopref::status_string(geopref::status::invalid_logit_transform);
  for (const char* bad : {" --logit-scale 0", " --logit-scale -1", " --logit-scale nan",
                          " --softcap -0.5", " --softcap inf", " --temperature 0",
                          " --temperature -2", " --temperature inf"}) {
    for (const std::string& base : {inputs, tok, inputs + " --vocab-shards 2"}) {
      const run_result e = run_tool(base + bad + " --out " + path("lt_bad"));
      INFO(base << bad << " -> " << e.err);
      CHECK(e.exit_code == 1);
      CHECK(count_lines(e.err) == 1);
      CHECK(e.err.find(msg) != std::string::npos);
    }
  }
  // Not a number: a usage error (exit 2), as for every numeric flag.
  const run_result e = run_tool(inputs + " --softcap soft --out " + path("lt_bad"));
  CHECK(e.exit_code == 2);
  CHECK(e.err.find("--softcap expects a number") != std::string::npos);
}

TEST_CASE("geopref-check: every field of the options is a flag in --help",
          "[check][options]") {
  const std::string help = tool_stdout("--help");
  int fields = 0;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc)                               \
  ++fields;                                                                                 \
  CHECK(help.find(std::string("--") + flag) != std::string::npos);                          \
  CHECK(help.find(doc) != std::string::npos);
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  CHECK(fields == 19);  // a new field: a new flag, and this count
}

TEST_CASE("geopref-check: --margin-transform, --normalizer, --nll-tokens and --nll-weight",
          "[check][options]") {
  const ragged r(23);
  const std::string inputs = r.save_all();
  const std::string ref_arg = " --ref-logps " + save("o_ref.npy", "<f8", "(6,)", r.ref);
  std::vector<std::pair<std::string, geopref::options>> vs;
  geopref::options base;
  base.loss.beta = 0.7;
  {
    geopref::options o = base;
    o.loss.transform = geopref::margin_transform::js;
    vs.emplace_back(" --loss dpo --margin-transform js", o);
  }
  {
    geopref::options o = base;
    o.loss.type = geopref::loss_type::ipo;
    o.reduce = geopref::reduction::normalizer, o.normalizer = 5.0;
    vs.emplace_back(" --loss ipo --reduction normalizer --normalizer 5", o);
  }
  {
    geopref::options o = base;
    o.loss.n_terms = 2;
    o.loss.terms[0] = geopref::loss_type::dpo, o.loss.terms[1] = geopref::loss_type::sft;
    o.loss.term_weights[0] = 1, o.loss.term_weights[1] = 0.5;
    o.reduce = geopref::reduction::normalizer, o.normalizer = 4.0;
    o.nll_tokens = 20.0, o.nll_weight = 3.0;
    vs.emplace_back(" --loss dpo,sft --loss-weights 1,0.5 --reduction normalizer --normalizer 4"
                    " --nll-tokens 20 --nll-weight 3", o);
  }
  int k = 0;
  for (const auto& [args, opt] : vs) {
    INFO("geopref-check" << args);
    auto in = r.inputs();
    in.ref_logps = r.ref.data();
    const direct d = call_reference(in, opt);
    const std::string out = path("out_options_" + std::to_string(k++));
    check_run(inputs + ref_arg + " --beta 0.7" + args, out, d);
  }
  const std::string out = " --out " + path("out_options_err");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {" --loss dpo --normalizer 4", "--normalizer N goes with --reduction normalizer"},
      {" --loss dpo --reduction normalizer", "--normalizer N goes with --reduction normalizer"},
      {" --loss dpo --margin-transform kl", "--margin-transform must be"},
      {" --loss dpo --nll-tokens x", "--nll-tokens expects a number"},
  };
  for (const auto& b : bad) check_fails(inputs + ref_arg + b.first + out, b.second);
}
