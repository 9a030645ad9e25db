// geopref-check — computes a preference loss, its per-sequence log-probs,
// metrics and the gradient with respect to the logits from .npy files, with
// the CPU reference (double accumulation) or the CUDA kernels. Meant for
// gradient-checking other implementations: feed it the same logits and
// compare. docs/integration.md describes every option and output.
#include <Eigen/Core>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "check_problem.hpp"
#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/vocab_linear.hpp"
#include "geopref/reference/reference.hpp"
#include "geopref/reference/vocab_parallel.hpp"
#include "npy.hpp"

namespace {

using namespace geopref;
using tools::npy_array;
using tools::npy_dtype;

const char* const USAGE =
    "usage: geopref-check (--logits L.npy | --hidden H.npy --weight WT.npy [--bias B.npy])\n"
    "                     --labels Y.npy [--offsets O.npy] [--pairs I.npy]\n"
    "                     [--soft-labels P.npy] [--ref-logps R.npy] [--weights W.npy]\n"
    "                     [--token-weights T.npy]\n"
    "                     --loss NAME[,NAME...] [--loss-weights W1,W2,...] [--geometric]\n"
    "                     [--beta B] [--alpha A] [--gamma G] [--epsilon E] [--tau T] [--bco-delta D]\n"
    "                     [--margin-transform reverse_kl|js|alpha] [--f-alpha A]\n"
    "                     [--average-logps] [--reduction mean|sum|none|normalizer]\n"
    "                     [--normalizer N] [--ignore-index K] [--nll-tokens NT] [--nll-weight NW]\n"
    "                     [--vocab-shards K] [--device cpu|cuda] --out DIR\n"
    "                     %s\n"
    "       geopref-check --per-token (--logits L.npy | --hidden H.npy --weight WT.npy\n"
    "                     [--bias B.npy]) --labels Y.npy [--token-grad G.npy]\n"
    "                     [--entropy-grad E.npy]\n"
    "                     [--ignore-index K] [--device cpu|cuda] --out DIR\n"
    "                     %s\n"
    "  L.npy  float16/32/64 logits, [N, V] (needs --offsets) or [S, T, V] (offsets s*T)\n"
    "  H.npy  hidden states [N, Hd] or [S, T, Hd]; WT.npy  output projection [V, Hd]; B.npy [V]\n"
    "         (one float dtype): logits H WT^T + B, chunked on the GPU, never held whole\n"
    "  Y.npy  int32/int64 labels, [N] or [S, T]; row t scores Y[t] (already shifted)\n"
    "  O.npy  int32/int64 sequence offsets [S + 1]     I.npy  int32/int64 pairs [P, 2]\n"
    "  P.npy  soft labels [P]   W.npy  pair weights [P]   R.npy  reference log-probs [S]\n"
    "  T.npy  float32/64 per-token weights, the labels' shape ([N] or [S, T])\n"
    "  several --loss names with --loss-weights: their weighted sum (one pass)\n"
    "  --geometric: the soft-label form f((2p-1) h) of every (margin) loss named\n"
    "  --vocab-shards K: the vocab-parallel path over K simulated ranks (columns split\n"
    "    evenly, the last rank taking the rest; with --hidden the rows of W); the same\n"
    "    outputs as unsharded\n"
    "  losses: %s\n"
    "  options (GEOPREF_OPTIONS_FIELDS; --f-divergence is --margin-transform's old name):\n"
    "%s"
    "  logit transform, of every logit z before the softmax (every form above, CPU and\n"
    "  CUDA): z' = C tanh(S z / C) / T, or S z / T with C = 0; log-probs, entropies and\n"
    "  metrics are those of z', gradients are with respect to z (or H, WT, B):\n"
    "%s"
    "writes DIR/loss.npy, DIR/logps.npy, DIR/grad_logits.npy, DIR/metrics.json\n"
    "  (with --hidden: DIR/grad_hidden.npy, DIR/grad_weight.npy [, DIR/grad_bias.npy] for\n"
    "  grad_logits.npy)\n"
    "  --per-token: per-token log-probs, no sequences or loss (L [N, V] or [S, T, V]);\n"
    "  writes DIR/token_logps.npy, DIR/entropy.npy, DIR/log_sum_sq_probs.npy,\n"
    "  DIR/mean_logits.npy (float64) and DIR/is_top1.npy (int32 0/1; the first arg-max\n"
    "  of z) [N], all 0 on rows labelled K; with --token-grad G.npy and/or\n"
    "  --entropy-grad E.npy (float32/64, the labels' shape; an absent one is 0)\n"
    "  DIR/grad_logits.npy, the gradient of sum_t G[t] * token_logps[t] + E[t] * entropy[t]\n"
    "  (with --hidden: DIR/grad_hidden.npy, DIR/grad_weight.npy [, DIR/grad_bias.npy])\n";

// Bad command line (exit 2) and bad input (exit 1); each carries one line.
struct usage_error {
  std::string msg;
};
struct input_error {
  std::string msg;
};

struct cli {
  std::string logits, labels, offsets, pairs, soft_labels, ref_logps, weights, token_weights, out;
  std::string hidden, weight, bias;
  std::string loss, loss_weights, reduce = "mean", device = "cpu";
  std::string margin_transform_name, margin_transform_flag = "--margin-transform";
  options opt{};  // the fields of GEOPREF_OPTIONS_FIELDS
  std::vector<std::string> given;  // the options' flags on the command line
  bool per_token = false;
  std::string token_grad, entropy_grad;
  int64_t vocab_shards = 0;  // 0: unsharded
  logit_transform transform{};
};

/// The metavariable of a transform flag: its summary's symbol ("s: ..." -> S).
std::string transform_metavar(const tools::transform_flag& f) {
  std::string m(f.doc, std::strcspn(f.doc, ":"));
  for (char& ch : m) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return m;
}

/// "[--logit-scale S] [--softcap C] ...": the transform's flags for the synopsis.
std::string transform_synopsis() {
  std::string s;
  for (const auto& f : tools::TRANSFORM_FLAGS)
    s += std::string(s.empty() ? "" : " ") + "[" + f.flag + " " + transform_metavar(f) + "]";
  return s;
}

/// One line per transform flag: its summary and default.
std::string transform_help() {
  std::string s;
  for (const auto& f : tools::TRANSFORM_FLAGS) {
    char line[256];
    std::snprintf(line, sizeof line, "    %-17s %s (default %g)\n",
                  (std::string(f.flag) + " " + transform_metavar(f)).c_str(), f.doc,
                  f.default_value);
    s += line;
  }
  return s;
}

/// The value a field's flag takes in the help ("" for a flag without one).
std::string option_metavar(const char* kind, const char* flag) {
  const std::string k = kind, f = flag;
  if (k == "boolean") return "";
  if (f == "loss") return "NAME[,NAME...]";
  if (f == "loss-weights") return "W1,W2,...";
  if (f == "reduction") return "mean|sum|none|normalizer";
  if (f == "margin-transform") return "reverse_kl|js|alpha";
  if (k == "integer") return "K";
  return "X";
}

/// The flags of GEOPREF_OPTIONS_FIELDS, each with its value, then one line
/// per field it sets (a flag several fields share, as --loss, once).
std::string options_help() {
  std::string s, last;
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc)               \
  if (last != flag) {                                                        \
    last = flag;                                                             \
    const std::string m = option_metavar(#kind, flag);                       \
    s += std::string("    --") + flag + (m.empty() ? "" : " " + m) + "\n";   \
  }                                                                          \
  s += std::string("        ") + #name + ": " + doc + "\n";
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return s;
}

/// Every built-in loss name, from the registry.
std::string all_loss_names() {
  std::string s;
  for (int i = 0; i < LOSS_TYPE_COUNT; ++i) {
    if (i > 0) s += ' ';
    s += loss_name(static_cast<loss_type>(i));
  }
  return s;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (true) {
    const std::size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

double parse_double(const std::string& flag, const char* s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE)
    throw usage_error{flag + " expects a number, got '" + s + "'"};
  return v;
}

int64_t parse_int(const std::string& flag, const char* s) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || errno == ERANGE)
    throw usage_error{flag + " expects an integer, got '" + s + "'"};
  return static_cast<int64_t>(v);
}

/// The value after flag `a` (argv[++i]).
const char* next_value(const std::string& a, int& i, int argc, char** argv) {
  if (i + 1 >= argc) throw usage_error{a + " needs a value"};
  return argv[++i];
}

// A field of GEOPREF_OPTIONS_FIELDS set from its flag by its C++ type: a
// number, or (bool) the flag alone. The enums and the terms (--loss,
// --loss-weights, --margin-transform, --reduction) are read by name in
// parse_args; their set_field is the catch-all, which takes nothing.
bool set_field(double* f, const std::string& a, int& i, int argc, char** argv) {
  *f = parse_double(a, next_value(a, i, argc, argv));
  return true;
}
bool set_field(int64_t* f, const std::string& a, int& i, int argc, char** argv) {
  *f = parse_int(a, next_value(a, i, argc, argv));
  return true;
}
bool set_field(bool* f, const std::string&, int&, int, char**) {
  *f = true;
  return true;
}
template <class T>
bool set_field(T*, const std::string&, int&, int, char**) {
  return false;
}

/// Parses argv[i] when it is the flag of a number or boolean field of
/// GEOPREF_OPTIONS_FIELDS (generated: one test per field).
bool parse_option_field(cli& c, const std::string& a, int& i, int argc, char** argv) {
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) \
  if (a == "--" flag && set_field(&c.opt.P name, a, i, argc, argv)) return true;
  GEOPREF_OPTIONS_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return false;
}

bool was_given(const cli& c, const std::string& flag) {
  for (const auto& g : c.given)
    if (g == flag) return true;
  return false;
}

/// The transform flag named `a`, or null.
/// The flags whose value is kept as given (a file, a name, a list) in a
/// string member of cli.
std::string cli::*find_path_flag(const std::string& a) {
  static const std::pair<const char*, std::string cli::*> flags[] = {
      {"--logits", &cli::logits},       {"--hidden", &cli::hidden},
      {"--weight", &cli::weight},       {"--bias", &cli::bias},
      {"--labels", &cli::labels},       {"--offsets", &cli::offsets},
      {"--pairs", &cli::pairs},         {"--soft-labels", &cli::soft_labels},
      {"--ref-logps", &cli::ref_logps}, {"--weights", &cli::weights},
      {"--token-weights", &cli::token_weights}, {"--token-grad", &cli::token_grad},
      {"--entropy-grad", &cli::entropy_grad},   {"--loss-weights", &cli::loss_weights},
      {"--out", &cli::out},             {"--loss", &cli::loss},
      {"--device", &cli::device}};
  for (const auto& [flag, member] : flags)
    if (a == flag) return member;
  return nullptr;
}

const tools::transform_flag* find_transform_flag(const std::string& a) {
  for (const auto& f : tools::TRANSFORM_FLAGS)
    if (a == f.flag) return &f;
  return nullptr;
}

cli parse_args(int argc, char** argv) {
  cli c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      const std::string synopsis = transform_synopsis();
      std::printf(USAGE, synopsis.c_str(), synopsis.c_str(), all_loss_names().c_str(),
                  options_help().c_str(), transform_help().c_str());
      std::exit(0);
    }
    if (parse_option_field(c, a, i, argc, argv)) {
      c.given.push_back(a);
      continue;
    }
    if (a == "--per-token") {
      c.per_token = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) throw usage_error{"unexpected argument '" + a + "'"};
    if (i + 1 >= argc) throw usage_error{a + " needs a value"};
    const char* v = argv[++i];
    if (std::string cli::*const path = find_path_flag(a)) c.*path = v;
    else if (a == "--margin-transform" || a == "--f-divergence")
      c.margin_transform_name = v, c.margin_transform_flag = a;
    else if (a == "--reduction") c.reduce = v, c.given.push_back(a);
    else if (const tools::transform_flag* f = find_transform_flag(a))
      c.transform.*(f->field) = parse_double(a, v);
    else if (a == "--vocab-shards") {
      c.vocab_shards = parse_int(a, v);
      if (c.vocab_shards < 1 || c.vocab_shards > 65536)
        throw usage_error{"--vocab-shards must be in [1, 65536]"};
    }
    else throw usage_error{"unknown option '" + a + "'"};
  }
  if (c.logits.empty() && c.hidden.empty())
    throw usage_error{"--logits is required (or --hidden with --weight)"};
  if (!c.logits.empty() && !c.hidden.empty())
    throw usage_error{"give either --logits or --hidden, not both"};
  if (!c.hidden.empty() && c.weight.empty()) throw usage_error{"--hidden needs --weight"};
  if (c.hidden.empty() && !(c.weight.empty() && c.bias.empty()))
    throw usage_error{"--weight and --bias go with --hidden"};
  if (c.labels.empty()) throw usage_error{"--labels is required"};
  if (c.out.empty()) throw usage_error{"--out is required"};
  if (!c.token_grad.empty() && !c.per_token) throw usage_error{"--token-grad needs --per-token"};
  if (!c.entropy_grad.empty() && !c.per_token)
    throw usage_error{"--entropy-grad needs --per-token"};
  if (c.per_token) {
    // The primitive has no sequences, pairs or loss: say so rather than
    // ignore an option.
    const std::pair<const char*, bool> not_here[] = {
        {"--loss", !c.loss.empty()}, {"--loss-weights", !c.loss_weights.empty()},
        {"--offsets", !c.offsets.empty()}, {"--pairs", !c.pairs.empty()},
        {"--soft-labels", !c.soft_labels.empty()}, {"--ref-logps", !c.ref_logps.empty()},
        {"--weights", !c.weights.empty()}, {"--token-weights", !c.token_weights.empty()},
        {c.margin_transform_flag.c_str(), !c.margin_transform_name.empty()},
        {"--vocab-shards", c.vocab_shards != 0}};
    for (const auto& [flag, given] : not_here)
      if (given)
        throw usage_error{std::string(flag) + " has no meaning with --per-token (use --token-grad "
                          "for an upstream gradient)"};
    // Of the options, only --ignore-index means something to the primitive.
    for (const auto& g : c.given)
      if (g != "--ignore-index")
        throw usage_error{g + " has no meaning with --per-token (use --token-grad for an "
                          "upstream gradient)"};
    if (c.device != "cpu" && c.device != "cuda")
      throw usage_error{"--device must be cpu or cuda, not '" + c.device + "'"};
    return c;
  }
  if (c.loss.empty()) throw usage_error{"--loss is required"};
  // --loss a,b,... [--loss-weights wa,wb,...]: one name without weights is
  // that loss; otherwise a weighted combination (weights default to 1).
  const std::vector<std::string> names = split_commas(c.loss);
  if (static_cast<int>(names.size()) > MAX_LOSS_TERMS)
    throw usage_error{"--loss: at most " + std::to_string(MAX_LOSS_TERMS) + " losses"};
  std::vector<double> lw(names.size(), 1.0);
  if (!c.loss_weights.empty()) {
    const std::vector<std::string> ws = split_commas(c.loss_weights);
    if (ws.size() != names.size())
      throw usage_error{"--loss-weights: " + std::to_string(ws.size()) + " weights for " +
                        std::to_string(names.size()) + " losses"};
    for (std::size_t k = 0; k < ws.size(); ++k) {
      lw[k] = parse_double("--loss-weights", ws[k].c_str());
      if (!std::isfinite(lw[k])) throw usage_error{"--loss-weights: weights must be finite"};
    }
  }
  for (std::size_t k = 0; k < names.size(); ++k) {
    loss_type t{};
    if (!parse_loss_type(names[k].c_str(), &t))
      throw usage_error{"unknown loss '" + names[k] + "' (losses: " + all_loss_names() + ")"};
    c.opt.loss.terms[k] = t;
    c.opt.loss.term_weights[k] = lw[k];
    if (c.opt.loss.geometric && (kind_of(t) != loss_kind::margin || is_geometric(t)))
      throw usage_error{"--geometric: loss '" + names[k] + "' has no margin to put in soft-label form" +
                        (is_geometric(t) ? " (it already is one)" : "")};
  }
  c.opt.loss.type = c.opt.loss.terms[0];
  c.opt.loss.n_terms = names.size() > 1 || !c.loss_weights.empty() ? static_cast<int>(names.size()) : 0;
  if (!c.margin_transform_name.empty() &&
      !parse_enum(c.margin_transform_name.c_str(), &c.opt.loss.transform))
    throw usage_error{c.margin_transform_flag + " must be reverse_kl, js or alpha, not '" +
                      c.margin_transform_name + "'"};
  if (was_given(c, "--f-alpha") && c.opt.loss.transform != margin_transform::alpha)
    throw usage_error{"--f-alpha needs " + c.margin_transform_flag + " alpha"};
  if (!parse_enum(c.reduce.c_str(), &c.opt.reduce))
    throw usage_error{"--reduction must be mean, sum, none or normalizer, not '" + c.reduce + "'"};
  if (was_given(c, "--normalizer") != (c.opt.reduce == reduction::normalizer))
    throw usage_error{"--normalizer N goes with --reduction normalizer (and it needs one)"};
  if (c.device != "cpu" && c.device != "cuda")
    throw usage_error{"--device must be cpu or cuda, not '" + c.device + "'"};
  return c;
}

npy_array load(const std::string& flag, const std::string& path) {
  npy_array a;
  std::string err;
  if (!tools::read_npy(path, &a, &err)) throw input_error{flag + ": " + err};
  return a;
}

std::string describe(const std::string& flag, const npy_array& a) {
  return flag + " is " + tools::npy_dtype_name(a.dtype) + " " + tools::npy_shape_string(a.shape);
}

// A 1-D float array of length n (float16/32/64, converted to double).
std::vector<double> load_vector(const std::string& flag, const std::string& path, int64_t n,
                                const char* what) {
  const npy_array a = load(flag, path);
  std::vector<double> v;
  if (!a.is_float()) throw input_error{describe(flag, a) + "; expected a float array"};
  if (a.ndim() != 1 || a.shape[0] != n)
    throw input_error{describe(flag, a) + "; expected shape (" + std::to_string(n) + ",) = [" +
                      what + "]"};
  tools::npy_to_double(a, &v);
  return v;
}

/// --weight [and --bias] with --hidden: p->vocab held Hd (the hidden
/// states' last axis); V comes from the weight.
void load_linear(const cli& c, tools::check_problem* p) {
  const npy_array& L = p->hidden;
  p->hidden_size = p->vocab;
  p->weight = load("--weight", c.weight);
  const npy_array& W = p->weight;
  if (W.dtype != L.dtype || W.ndim() != 2 || W.shape[1] != p->hidden_size)
    throw input_error{describe("--weight", W) + "; expected " + tools::npy_dtype_name(L.dtype) +
                      " [V, " + std::to_string(p->hidden_size) + "] (the hidden states' dtype and Hd)"};
  p->vocab = W.shape[0];
  if (!c.bias.empty()) {
    p->bias = load("--bias", c.bias);
    if (p->bias.dtype != L.dtype || p->bias.ndim() != 1 || p->bias.shape[0] != p->vocab)
      throw input_error{describe("--bias", p->bias) + "; expected " +
                        tools::npy_dtype_name(L.dtype) + " [" + std::to_string(p->vocab) + "]"};
  }
}

tools::check_problem load_problem(const cli& c) {
  tools::check_problem p;
  // The library's own verdict and message, before any file is read (the
  // CUDA path would give the same status, after uploading everything).
  p.transform = c.transform;
  if (const status st = validate(p.transform); st != status::success)
    throw input_error{std::string("geopref: ") + status_string(st)};
  p.linear = !c.hidden.empty();
  const std::string lflag = p.linear ? "--hidden" : "--logits";
  if (p.linear) p.hidden = load("--hidden", c.hidden);
  else p.logits = load("--logits", c.logits);
  p.labels = load("--labels", c.labels);
  const npy_array& L = p.linear ? p.hidden : p.logits;  // the last axis: Hd or V
  const npy_array& Y = p.labels;
  if (!L.is_float()) throw input_error{describe(lflag, L) + "; expected float16/32/64"};
  if (!Y.is_int()) throw input_error{describe("--labels", Y) + "; expected int32 or int64"};

  if (c.per_token) {
    // Rows only: [N, V] with [N], or [S, T, V] with [S, T] read as N = S·T rows.
    // With --hidden: [N, Hd] or [S, T, Hd], and V from the weight.
    if (L.ndim() != 2 && L.ndim() != 3)
      throw input_error{describe(lflag, L) + (p.linear ? "; expected [N, Hd] or [S, T, Hd]"
                                                       : "; expected [N, V] or [S, T, V]")};
    const std::vector<int64_t> rows_shape(L.shape.begin(), L.shape.end() - 1);
    if (Y.shape != rows_shape)
      throw input_error{describe("--labels", Y) + "; " + lflag.substr(2) + " " +
                        tools::npy_shape_string(L.shape) + " need labels " +
                        tools::npy_shape_string(rows_shape)};
    p.n_rows = rows_shape.size() == 1 ? rows_shape[0] : rows_shape[0] * rows_shape[1];
    p.vocab = L.shape.back();
    if (p.linear) load_linear(c, &p);
    if (p.n_rows > 0 && p.vocab == 0)
      throw input_error{describe(p.linear ? "--weight" : "--logits",
                                 p.linear ? p.weight : L) + "; V must be at least 1"};
    if (p.linear && p.n_rows > 0 && p.hidden_size == 0)
      throw input_error{describe(lflag, L) + "; Hd must be at least 1"};
    p.per_token = true;
    // The upstream gradients of the log-probs and of the entropy, each in the
    // labels' shape; given one, the other is 0.
    const auto upstream = [&](const char* flag, const std::string& file, std::vector<double>* out) {
      const npy_array G = load(flag, file);
      if (!(G.dtype == npy_dtype::float32 || G.dtype == npy_dtype::float64) || G.shape != Y.shape)
        throw input_error{describe(flag, G) + "; expected float32/64 " +
                          tools::npy_shape_string(Y.shape) + " (the labels' shape)"};
      tools::npy_to_double(G, out);
    };
    if (!c.token_grad.empty()) upstream("--token-grad", c.token_grad, &p.token_grad);
    if (!c.entropy_grad.empty()) {
      upstream("--entropy-grad", c.entropy_grad, &p.entropy_grad);
      if (p.token_grad.empty()) p.token_grad.assign(p.entropy_grad.size(), 0.0);
    }
    p.opt.ignore_index = c.opt.ignore_index;
    return p;
  }

  if (L.ndim() == 3) {
    // Padded batch [S, T, V]: sequence s owns rows [s T, (s + 1) T).
    const int64_t S = L.shape[0], T = L.shape[1];
    if (!c.offsets.empty())
      throw input_error{"--offsets: not allowed with 3-D " + lflag + " (offsets are s*T)"};
    // S is otherwise bounded by the data in the files; with T = 0 it is not.
    if (T == 0 && S > 0) throw input_error{describe(lflag, L) + "; T must be at least 1"};
    if (Y.ndim() != 2 || Y.shape[0] != S || Y.shape[1] != T)
      throw input_error{describe("--labels", Y) + "; 3-D logits " +
                        tools::npy_shape_string(L.shape) + " need labels [S, T]"};
    p.n_rows = S * T;
    p.vocab = L.shape[2];
    p.n_seqs = S;
    p.offsets.resize(static_cast<std::size_t>(S + 1));
    for (int64_t s = 0; s <= S; ++s) p.offsets[static_cast<std::size_t>(s)] = s * T;
  } else if (L.ndim() == 2) {
    p.n_rows = L.shape[0];
    p.vocab = L.shape[1];
    if (Y.ndim() != 1 || Y.shape[0] != p.n_rows)
      throw input_error{describe("--labels", Y) + "; 2-D logits " +
                        tools::npy_shape_string(L.shape) + " need labels [N]"};
    if (c.offsets.empty()) throw input_error{"--offsets: required with 2-D logits [N, V]"};
    const npy_array O = load("--offsets", c.offsets);
    if (!O.is_int() || O.ndim() != 1 || O.shape[0] < 1)
      throw input_error{describe("--offsets", O) + "; expected int32/int64 [S + 1]"};
    tools::npy_to_int64(O, &p.offsets);
    p.n_seqs = O.shape[0] - 1;
  } else {
    throw input_error{describe(lflag, L) + (p.linear ? "; expected [N, Hd] or [S, T, Hd]" : "; expected [N, V] or [S, T, V]")};
  }

  if (p.linear) load_linear(c, &p);

  if (!c.pairs.empty()) {
    const npy_array I = load("--pairs", c.pairs);
    if (!I.is_int() || I.ndim() != 2 || I.shape[1] != 2)
      throw input_error{describe("--pairs", I) + "; expected int32/int64 [P, 2]"};
    tools::npy_to_int64(I, &p.pairs);
    p.n_pairs = I.shape[0];
  } else {
    // Default pairing (i, P + i); an odd S is reported by the library.
    p.n_pairs = p.n_seqs / 2;
  }
  if (!c.soft_labels.empty())
    p.soft_labels = load_vector("--soft-labels", c.soft_labels, p.n_pairs, "P");
  if (!c.weights.empty()) p.weights = load_vector("--weights", c.weights, p.n_pairs, "P");
  if (!c.ref_logps.empty()) p.ref_logps = load_vector("--ref-logps", c.ref_logps, p.n_seqs, "S");
  if (!c.token_weights.empty()) {
    // Per-token weights in the labels' shape ([N] or [S, T]).
    const npy_array T = load("--token-weights", c.token_weights);
    if (!(T.dtype == npy_dtype::float32 || T.dtype == npy_dtype::float64) || T.shape != Y.shape)
      throw input_error{describe("--token-weights", T) + "; expected float32/64 " +
                        tools::npy_shape_string(Y.shape) + " (the labels' shape)"};
    tools::npy_to_double(T, &p.token_weights);
  }

  p.opt = c.opt;
  if (c.vocab_shards > p.vocab)
    throw input_error{"--vocab-shards " + std::to_string(c.vocab_shards) + " exceeds the vocabulary (" +
                      std::to_string(p.vocab) + " columns): every rank needs a column"};
  p.vocab_shards = static_cast<int>(c.vocab_shards);
  return p;
}

/// f(labels) with the labels in their own type.
template <class F>
status with_labels(const tools::check_problem& p, F f) {
  if (p.labels.dtype == npy_dtype::int32) return f(p.labels.i32.data());
  return f(p.labels.i64.data());
}

/// f(logits, labels) with both in their own types.
template <class F>
status with_logits(const tools::check_problem& p, F f) {
  auto with = [&](const auto* logits) {
    return with_labels(p, [&](const auto* labels) { return f(logits, labels); });
  };
  switch (p.logits.dtype) {
    case npy_dtype::float16: {
      // The reference reads binary16 through Eigen::half, bit for bit.
      std::vector<Eigen::half> h;
      h.reserve(p.logits.f16.size());
      for (uint16_t b : p.logits.f16) h.push_back(Eigen::numext::bit_cast<Eigen::half>(b));
      return with(h.data());
    }
    case npy_dtype::float32: return with(p.logits.f32.data());
    default: return with(p.logits.f64.data());
  }
}

/// The optional per-pair and per-token arrays of reference::inputs /
/// reference::linear_inputs (null where the file was not given).
template <class In>
void set_optional_arrays(const tools::check_problem& p, In* in) {
  in->pairs = p.pairs.empty() ? nullptr : p.pairs.data();
  in->soft_labels = p.soft_labels.empty() ? nullptr : p.soft_labels.data();
  in->ref_logps = p.ref_logps.empty() ? nullptr : p.ref_logps.data();
  in->weights = p.weights.empty() ? nullptr : p.weights.data();
  in->token_weights = p.token_weights.empty() ? nullptr : p.token_weights.data();
}

/// --vocab-shards K: the K + 1 bounds of the even shards of the vocabulary.
std::vector<int64_t> shard_bounds(const tools::check_problem& p) {
  std::vector<int64_t> bounds;
  for (int k = 0; k < p.vocab_shards; ++k) bounds.push_back(tools::shard_begin(p.vocab, k, p.vocab_shards));
  bounds.push_back(p.vocab);
  return bounds;
}

/// --hidden, --weight, --bias as double: float16/32 widen exactly, so the
/// reference sees the file's values.
struct linear_host {
  std::vector<double> H, W, B;
  explicit linear_host(const tools::check_problem& p) {
    tools::npy_to_double(p.hidden, &H);
    tools::npy_to_double(p.weight, &W);
    if (p.bias.ndim() == 1) tools::npy_to_double(p.bias, &B);
  }
  /// The projection fields of reference::linear_inputs / linear_token_rows, and
  /// the logit transform applied to the logits they make.
  template <class In>
  void set(const tools::check_problem& p, In* in) const {
    in->hidden = H.data();
    in->weight = W.data();
    in->bias = B.empty() ? nullptr : B.data();
    in->n_rows = p.n_rows;
    in->hidden_size = p.hidden_size;
    in->vocab = p.vocab;
    in->logit_transform = p.transform;
  }
  /// r's projection gradients, zeroed and sized, as out's grad_hidden,
  /// grad_weight, grad_bias.
  template <class Out>
  void point_grads(const tools::check_problem& p, tools::check_result* r, Out* out) const {
    r->grad_hidden.assign(static_cast<std::size_t>(p.n_rows * p.hidden_size), 0.0);
    r->grad_weight.assign(static_cast<std::size_t>(p.vocab * p.hidden_size), 0.0);
    r->grad_bias.assign(B.empty() ? 0 : static_cast<std::size_t>(p.vocab), 0.0);
    out->grad_hidden = r->grad_hidden.data();
    out->grad_weight = r->grad_weight.data();
    out->grad_bias = B.empty() ? nullptr : r->grad_bias.data();
  }
};

/// A per-token forward, forward(out), into r's token_logps, entropy and
/// statistics (zeroed, [N]) and *lse (the backward's input); its is_top1 into
/// r as 0/1.
template <class Forward>
status run_token_forward(const tools::check_problem& p, tools::check_result* r,
                         std::vector<double>* lse, Forward forward) {
  const auto n = static_cast<std::size_t>(p.n_rows);
  lse->assign(n, 0.0);
  r->token_logps.assign(n, 0.0);
  r->entropy.assign(n, 0.0);
  r->log_sum_sq_probs.assign(n, 0.0);
  r->mean_logits.assign(n, 0.0);
  std::vector<uint8_t> top1(n, 0);
  reference::token_outputs out;
  out.token_logps = r->token_logps.data();
  out.lse = lse->data();
  out.entropy = r->entropy.data();
  out.log_sum_sq_probs = r->log_sum_sq_probs.data();
  out.mean_logits = r->mean_logits.data();
  out.is_top1 = top1.data();
  const status st = forward(out);
  r->is_top1.assign(top1.begin(), top1.end());
  return st;
}

template <class Logit, class Label>
status run_reference_typed(const tools::check_problem& p, const Logit* logits, const Label* labels,
                           tools::check_result* r) {
  auto in = reference::make_inputs(logits, p.n_rows, p.vocab, labels,
                                   p.offsets.data(), p.n_seqs, p.n_pairs);
  in.logit_transform = p.transform;
  set_optional_arrays(p, &in);

  r->pair_losses.assign(static_cast<std::size_t>(p.n_pairs), 0.0);
  r->seq_logps.assign(static_cast<std::size_t>(p.n_seqs), 0.0);
  r->grad64.assign(static_cast<std::size_t>(p.n_rows * p.vocab), 0.0);
  reference::outputs out;
  out.pair_losses = r->pair_losses.data();
  out.seq_logps = r->seq_logps.data();
  out.grad_logits = r->grad64.data();
  out.grad_ld = p.vocab;
  status st;
  if (p.vocab_shards > 0) {
    const std::vector<int64_t> bounds = shard_bounds(p);
    st = reference::compute_vocab_parallel(in, p.opt, bounds.data(), p.vocab_shards, nullptr, out);
  } else {
    st = reference::compute(in, p.opt, out);
  }
  r->loss = out.loss;
  r->stats = out.stats;
  return st;
}

status run_reference(const tools::check_problem& p, tools::check_result* r) {
  return with_logits(p, [&](const auto* logits, const auto* labels) {
    return run_reference_typed(p, logits, labels, r);
  });
}

template <class Label>
status run_reference_linear_typed(const tools::check_problem& p, const Label* labels,
                                  tools::check_result* r) {
  const linear_host h(p);
  reference::linear_inputs<double, Label, int64_t> in;
  h.set(p, &in);
  in.labels = labels;
  in.offsets = p.offsets.data();
  in.n_seqs = p.n_seqs;
  in.n_pairs = p.n_pairs;
  set_optional_arrays(p, &in);
  r->pair_losses.assign(static_cast<std::size_t>(p.n_pairs), 0.0);
  r->seq_logps.assign(static_cast<std::size_t>(p.n_seqs), 0.0);
  reference::linear_outputs out;
  out.base.pair_losses = r->pair_losses.data();
  out.base.seq_logps = r->seq_logps.data();
  h.point_grads(p, r, &out);
  status st;
  if (p.vocab_shards > 0) {  // K simulated ranks, rows of W split as the columns of --logits
    const std::vector<int64_t> bounds = shard_bounds(p);
    st = reference::fused_linear_vocab_parallel(in, p.opt, bounds.data(), p.vocab_shards, nullptr, out);
  } else {
    st = reference::fused_linear(in, p.opt, out);
  }
  r->loss = out.base.loss;
  r->stats = out.base.stats;
  return st;
}

status run_reference_linear(const tools::check_problem& p, tools::check_result* r) {
  return with_labels(p, [&](const auto* labels) { return run_reference_linear_typed(p, labels, r); });
}

/// --entropy-grad's E [N], or null.
const double* entropy_upstream(const tools::check_problem& p) {
  return p.entropy_grad.empty() ? nullptr : p.entropy_grad.data();
}

template <class Logit, class Label>
status run_tokens_typed(const tools::check_problem& p, const Logit* logits, const Label* labels,
                        tools::check_result* r) {
  reference::token_rows<Logit, Label> in;
  in.logits = logits;
  in.n_rows = p.n_rows;
  in.vocab = p.vocab;
  in.ld = p.vocab;
  in.labels = labels;
  in.ignore_index = p.opt.ignore_index;
  in.logit_transform = p.transform;
  std::vector<double> lse;
  const status st = run_token_forward(
      p, r, &lse, [&](reference::token_outputs& out) { return reference::token_logps(in, out); });
  if (st != status::success || p.token_grad.empty()) return st;
  r->grad64.assign(static_cast<std::size_t>(p.n_rows * p.vocab), 0.0);
  return reference::token_logps_grad(in, lse.data(), p.token_grad.data(), r->grad64.data(), 0,
                                     entropy_upstream(p));
}

template <class Label>
status run_tokens_linear_typed(const tools::check_problem& p, const Label* labels,
                               tools::check_result* r) {
  const linear_host h(p);
  reference::linear_token_rows<double, Label> in;
  h.set(p, &in);
  in.labels = labels;
  in.ignore_index = p.opt.ignore_index;
  std::vector<double> lse;
  const status st = run_token_forward(p, r, &lse, [&](reference::token_outputs& out) {
    return reference::linear_token_logps(in, out);
  });
  if (st != status::success || p.token_grad.empty()) return st;
  reference::linear_token_grads g;
  h.point_grads(p, r, &g);
  return reference::linear_token_logps_grad(in, lse.data(), p.token_grad.data(), g,
                                            entropy_upstream(p));
}

status run_tokens(const tools::check_problem& p, tools::check_result* r) {
  if (p.linear)
    return with_labels(p, [&](const auto* labels) { return run_tokens_linear_typed(p, labels, r); });
  return with_logits(p, [&](const auto* logits, const auto* labels) {
    return run_tokens_typed(p, logits, labels, r);
  });
}

void write(const std::filesystem::path& path, npy_dtype t, const std::vector<int64_t>& shape,
           const void* data) {
  std::string err;
  if (!tools::write_npy(path.string(), t, shape, data, &err)) throw input_error{"--out: " + err};
}

void json_number(std::FILE* f, const char* key, double v, bool last = false) {
  // JSON has no NaN or infinity; %.17g round-trips every finite double.
  if (std::isfinite(v)) std::fprintf(f, "  \"%s\": %.17g%s\n", key, v, last ? "" : ",");
  else std::fprintf(f, "  \"%s\": null%s\n", key, last ? "" : ",");
}

void write_outputs(const cli& c, const tools::check_problem& p, const tools::check_result& r) {
  const std::filesystem::path dir(c.out);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw input_error{"--out: cannot create directory " + c.out};
  if (p.per_token) {
    write(dir / "token_logps.npy", npy_dtype::float64, {p.n_rows}, r.token_logps.data());
    write(dir / "entropy.npy", npy_dtype::float64, {p.n_rows}, r.entropy.data());
    write(dir / "log_sum_sq_probs.npy", npy_dtype::float64, {p.n_rows},
          r.log_sum_sq_probs.data());
    write(dir / "mean_logits.npy", npy_dtype::float64, {p.n_rows}, r.mean_logits.data());
    write(dir / "is_top1.npy", npy_dtype::int32, {p.n_rows}, r.is_top1.data());
    if (p.linear && !r.grad_weight.empty()) {
      write(dir / "grad_hidden.npy", npy_dtype::float64, p.hidden.shape, r.grad_hidden.data());
      write(dir / "grad_weight.npy", npy_dtype::float64, p.weight.shape, r.grad_weight.data());
      if (p.bias.ndim() == 1)
        write(dir / "grad_bias.npy", npy_dtype::float64, p.bias.shape, r.grad_bias.data());
    } else if (!r.grad64.empty())
      write(dir / "grad_logits.npy", npy_dtype::float64, p.logits.shape, r.grad64.data());
    else if (!r.grad32.empty())
      write(dir / "grad_logits.npy", npy_dtype::float32, p.logits.shape, r.grad32.data());
    return;
  }

  if (p.opt.reduce == reduction::none)
    write(dir / "loss.npy", npy_dtype::float64, {p.n_pairs}, r.pair_losses.data());
  else
    write(dir / "loss.npy", npy_dtype::float64, {}, &r.loss);
  write(dir / "logps.npy", npy_dtype::float64, {p.n_seqs}, r.seq_logps.data());
  if (p.linear) {
    write(dir / "grad_hidden.npy", npy_dtype::float64, p.hidden.shape, r.grad_hidden.data());
    write(dir / "grad_weight.npy", npy_dtype::float64, p.weight.shape, r.grad_weight.data());
    if (p.bias.ndim() == 1)
      write(dir / "grad_bias.npy", npy_dtype::float64, p.bias.shape, r.grad_bias.data());
  } else if (!r.grad64.empty() || r.grad32.empty())
    write(dir / "grad_logits.npy", npy_dtype::float64, p.logits.shape, r.grad64.data());
  else
    write(dir / "grad_logits.npy", npy_dtype::float32, p.logits.shape, r.grad32.data());

  const std::string path = (dir / "metrics.json").string();
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw input_error{"--out: cannot create " + path};
  std::fprintf(f, "{\n  \"loss_name\": \"%s\",\n  \"device\": \"%s\",\n  \"reduction\": \"%s\",\n",
               c.loss.c_str(), c.device.c_str(), c.reduce.c_str());
  std::fprintf(f,
               "  \"n_rows\": %lld,\n  \"vocab\": %lld,\n  \"n_seqs\": %lld,\n  \"n_pairs\": %lld,\n",
               static_cast<long long>(p.n_rows), static_cast<long long>(p.vocab),
               static_cast<long long>(p.n_seqs), static_cast<long long>(p.n_pairs));
  std::fprintf(f, "  \"average_logps\": %s,\n", uses_average_logps(p.opt) ? "true" : "false");
  // The transform the outputs are of, one key per flag ("logit_scale", ...).
  for (const auto& t : tools::TRANSFORM_FLAGS) {
    std::string key(t.flag + 2);
    for (char& ch : key) ch = ch == '-' ? '_' : ch;
    json_number(f, key.c_str(), p.transform.*(t.field));
  }
  json_number(f, "loss", r.loss);
  json_number(f, "rewards/chosen", r.stats.rewards_chosen);
  json_number(f, "rewards/rejected", r.stats.rewards_rejected);
  json_number(f, "rewards/accuracies", r.stats.rewards_accuracies);
  json_number(f, "rewards/margins", r.stats.rewards_margins);
  json_number(f, "logps/chosen", r.stats.logps_chosen);
  json_number(f, "logps/rejected", r.stats.logps_rejected);
  json_number(f, "calibration_error", r.stats.calibration_error, true);
  std::fputs("}\n", f);
  if (std::fclose(f) != 0) throw input_error{"--out: cannot write " + path};
}

int run(int argc, char** argv) {
  const cli c = parse_args(argc, argv);
  const tools::check_problem p = load_problem(c);
  tools::check_result r;
  if (p.per_token && c.device == "cuda") {
    std::string err;
    if (!tools::run_cuda_tokens(p, &r, &err)) throw input_error{"--device cuda: " + err};
  } else if (p.per_token) {
    const status st = run_tokens(p, &r);
    if (st != status::success) throw input_error{std::string("geopref: ") + status_string(st)};
  } else if (c.device == "cuda") {
    std::string err;
    const bool ok = p.linear ? tools::run_cuda_linear(p, &r, &err) : tools::run_cuda(p, &r, &err);
    if (!ok) throw input_error{"--device cuda: " + err};
  } else {
    const status st = p.linear ? run_reference_linear(p, &r) : run_reference(p, &r);
    if (st != status::success) throw input_error{std::string("geopref: ") + status_string(st)};
  }
  write_outputs(c, p, r);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "geopref-check: %s (see --help)\n", e.msg.c_str());
    return 2;
  } catch (const input_error& e) {
    std::fprintf(stderr, "geopref-check: error: %s\n", e.msg.c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "geopref-check: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "geopref-check: error: %s\n", e.what());
    return 1;
  }
}
