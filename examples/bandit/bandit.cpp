// bandit — a 1-D bandit of this project's own design, in the spirit of the
// toy example of Furuta et al. (NeurIPS 2024) but not their experiment (its
// reward, data and sizes are ours), trained through geopref's CPU reference: log-probs, losses and gradients all
// come from geopref::reference::compute, exactly as for a language model.
//
// The policy is one softmax over V = 100 logits θ: a one-token language model
// (T = 1, V = 100). A pair (a, b) of actions is two sequences of one token
// each; its margin is h = (log π(a) − log π_ref(a)) − (log π(b) − log π_ref(b)).
//
//   true reward   r(a) = A · exp(−(a − 70)² / (2 · 10²))          (A = --amp)
//   data          a ~ μ = 0.9 · N(30, 10²) + 0.1 · N(70, 10²), discretised on
//                 0..99: most training actions sit where the reward is ~0
//   pairs         P pairs (a, b) drawn i.i.d. from μ, ordered so r(a) >= r(b),
//                 soft label p̂ = σ(r(a) − r(b)) ∈ [0.5, 1) (Bradley–Terry);
//                 dpo and ipo read the pair as "a preferred" (a binary label)
//   reference     --ref data: π_ref = training-action frequencies, smoothed by
//                 +0.5 per action (the maximum-likelihood softmax, smoothed);
//                 --ref uniform: π_ref = 1/V
//   training      θ starts at log π_ref; full-batch gradient descent,
//                 θ ← θ − lr · ∂Loss/∂θ, Loss the mean over pairs, for --steps
//                 steps. lr = --eta / f''(0) with the base loss's curvature
//                 at h = 0 (β²/4 for dpo, cdpo, gdpo; 2 for ipo, gipo), so one
//                 η gives comparable step sizes across loss families.
//
// For each loss it reports the learned distribution's expected true reward,
// its mode, its mass on the high-reward region {a : r(a) >= A/2}, and the
// calibration error mean |σ(βh) − p̂| on the training pairs.
//
// Checks (exit 1 on failure) — only what follows from the mathematics:
//   - every loss ends lower than it starts, and falls at every step when the
//     step size is small enough for the descent lemma to guarantee it;
//   - cdpo's implied preference σ(βh) matches p̂ on the training pairs
//     (mean |σ(βh) − p̂| < 0.01): p̂ = σ(r(a) − r(b)) with r a function of the
//     action, so σ(βh) = p̂ for all pairs at once is attainable by a tabular
//     policy (θ = log π_ref + r/β), and cdpo's loss is convex in θ with that
//     point as minimiser;
//   - gdpo's gradient is exactly 0 for every pair with p̂ = 0.5 (a == b);
//   - the gradient the library returns matches a central finite difference of
//     the loss along a random direction, at the trained θ;
//   - with --check: a second run of the first loss from the same seed gives
//     bitwise-identical logits (determinism).
// Which loss reaches the highest reward is an outcome, printed, not asserted.
//
// Usage: bandit [--seed S] [--pairs P] [--steps N] [--beta B] [--eta E]
//               [--amp A] [--ref data|uniform] [--losses dpo,cdpo,...]
//               [--csv FILE] [--trace FILE] [--pairs-csv FILE] [--check]
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/reference/reference.hpp"

namespace {

constexpr int V = 100;  // actions = vocabulary size

// splitmix64: a tiny generator whose output is the same on every platform
// (std::*_distribution are not), so a seed names one experiment everywhere.
struct rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Inverse-CDF draw from a discrete distribution.
int draw(rng& g, const std::vector<double>& cdf) {
  const double u = g.uniform() * cdf.back();
  for (int a = 0; a < V; ++a)
    if (u < cdf[a]) return a;
  return V - 1;
}

struct config {
  uint64_t seed = 1;
  int64_t pairs = 512;
  int steps = 1000;
  double beta = 1.0;
  double eta = 2.5;
  double amp = 3.0;
  bool ref_uniform = false;
  std::vector<geopref::loss_type> losses{geopref::loss_type::dpo, geopref::loss_type::cdpo,
                                         geopref::loss_type::gdpo, geopref::loss_type::ipo,
                                         geopref::loss_type::gipo};
  const char* csv = nullptr;
  const char* trace = nullptr;
  const char* pairs_csv = nullptr;
  bool check = false;
};

// The problem: reward, data distribution, pairs, reference.
struct problem {
  std::vector<double> reward;     // [V] r(a)
  std::vector<double> data_prob;  // [V] μ(a)
  std::vector<int32_t> labels;    // [2P] rows 0..P-1 = first actions a_i, P..2P-1 = second b_i
  std::vector<int32_t> offsets;   // [2P + 1] one token per sequence
  std::vector<double> soft;       // [P] p̂_i
  std::vector<double> ref_theta;  // [V] log π_ref
  std::vector<double> ref_logps;  // [2P] log π_ref(action of sequence s), from the library
  std::vector<double> data_freq;  // [V] training-action frequencies
  double max_degree_fraction = 0; // max over actions of (pairs with a != b containing it) / P
  int64_t P = 0;
};

double gauss(double x, double mean, double sd) {
  const double d = (x - mean) / sd;
  return std::exp(-0.5 * d * d);
}

// Runs the library forward+backward on 2P one-token rows that all carry the
// same logits θ. logits is a [2P, V] scratch buffer.
geopref::status evaluate(const problem& pb, const geopref::options& opt,
                         const std::vector<double>& theta, std::vector<double>& logits,
                         geopref::reference::outputs& out) {
  const int64_t n = 2 * pb.P;
  for (int64_t t = 0; t < n; ++t)
    for (int v = 0; v < V; ++v) logits[t * V + v] = theta[v];
  auto in = geopref::reference::make_inputs(logits.data(), n, V, pb.labels.data(),
                                            pb.offsets.data(), n, pb.P);
  in.soft_labels = pb.soft.data();
  in.ref_logps = pb.ref_logps.data();
  return geopref::reference::compute(in, opt, out);
}

problem make_problem(const config& c) {
  problem pb;
  pb.P = c.pairs;
  pb.reward.resize(V);
  pb.data_prob.resize(V);
  double lo = 0, hi = 0;
  for (int a = 0; a < V; ++a) lo += gauss(a, 30, 10), hi += gauss(a, 70, 10);
  std::vector<double> cdf(V);
  double acc = 0;
  for (int a = 0; a < V; ++a) {
    pb.reward[a] = c.amp * gauss(a, 70, 10);
    pb.data_prob[a] = 0.9 * gauss(a, 30, 10) / lo + 0.1 * gauss(a, 70, 10) / hi;
    acc += pb.data_prob[a];
    cdf[a] = acc;
  }

  rng g{c.seed};
  const int64_t P = pb.P;
  pb.labels.resize(2 * P);
  pb.soft.resize(P);
  pb.offsets.resize(2 * P + 1);
  for (int64_t i = 0; i < P; ++i) {
    int a = draw(g, cdf), b = draw(g, cdf);
    if (pb.reward[a] < pb.reward[b]) std::swap(a, b);
    pb.labels[i] = a;
    pb.labels[P + i] = b;
    pb.soft[i] = geopref::math::sigmoid(pb.reward[a] - pb.reward[b]);
  }
  for (int64_t s = 0; s <= 2 * P; ++s) pb.offsets[s] = static_cast<int32_t>(s);

  std::vector<int64_t> degree(V, 0);
  for (int64_t i = 0; i < P; ++i)
    if (pb.labels[i] != pb.labels[P + i]) ++degree[pb.labels[i]], ++degree[pb.labels[P + i]];
  for (int a = 0; a < V; ++a)
    pb.max_degree_fraction = std::fmax(pb.max_degree_fraction,
                                       static_cast<double>(degree[a]) / static_cast<double>(P));

  pb.data_freq.assign(V, 0.0);
  for (int64_t t = 0; t < 2 * P; ++t) pb.data_freq[pb.labels[t]] += 1.0 / static_cast<double>(2 * P);
  pb.ref_theta.resize(V);
  for (int a = 0; a < V; ++a) {
    const double smoothed = (pb.data_freq[a] * static_cast<double>(2 * P) + 0.5) /
                            (static_cast<double>(2 * P) + 0.5 * V);
    pb.ref_theta[a] = c.ref_uniform ? 0.0 : std::log(smoothed);
  }
  return pb;
}

// Reference log-probs through the library's forward pass over the reference
// logits, as a training stack would compute them.
bool compute_ref_logps(problem& pb) {
  pb.ref_logps.assign(2 * pb.P, 0.0);
  std::vector<double> logits(2 * pb.P * V);
  std::vector<double> seq(2 * pb.P);
  geopref::reference::outputs out;
  out.seq_logps = seq.data();
  geopref::options opt;  // reference-free forward: ref_logps is all zeros here
  const geopref::status s = evaluate(pb, opt, pb.ref_theta, logits, out);
  if (s != geopref::status::success) {
    std::fprintf(stderr, "reference forward: %s\n", geopref::status_string(s));
    return false;
  }
  pb.ref_logps = seq;
  return true;
}

std::vector<double> softmax(const std::vector<double>& theta) {
  double m = theta[0];
  for (double x : theta) m = std::fmax(m, x);
  std::vector<double> p(V);
  double z = 0;
  for (int v = 0; v < V; ++v) z += (p[v] = std::exp(theta[v] - m));
  for (double& x : p) x /= z;
  return p;
}

struct result {
  geopref::loss_type type;
  std::vector<double> theta;
  std::vector<double> pi;
  double loss0 = 0, loss1 = 0;
  double cal0 = 0, cal1 = 0;
  double expected_reward = 0;
  double high_mass = 0;
  double kl_ref = 0;
  int mode = 0;
  int increases = 0;  // steps where the loss went up
  bool ok = true;
};

// Base-loss curvature f''(0), for the per-family step size lr = η / f''(0).
double curvature(geopref::loss_type t, double beta) {
  switch (t) {
    case geopref::loss_type::ipo:
    case geopref::loss_type::gipo:
    case geopref::loss_type::cipo: return 2.0;
    default: return beta * beta / 4.0;
  }
}

int g_failures = 0;
void fail(const char* loss, const char* what) {
  ++g_failures;
  std::fprintf(stderr, "FAIL [%s] %s\n", loss, what);
}

result train(const problem& pb, const config& c, geopref::loss_type type, std::FILE* trace) {
  const char* name = geopref::loss_name(type);
  result r;
  r.type = type;
  const int64_t n = 2 * pb.P;
  geopref::options opt;
  opt.loss.type = type;
  opt.loss.beta = c.beta;

  std::vector<double> logits(n * V), grad(n * V), grad_seq(n);
  geopref::reference::outputs out;
  out.grad_logits = grad.data();
  out.grad_seq_logps = grad_seq.data();

  const double lr = c.eta / curvature(type, c.beta);
  std::vector<double> theta = pb.ref_theta, g(V);
  double prev = 0;
  for (int step = 0; step <= c.steps; ++step) {
    const geopref::status s = evaluate(pb, opt, theta, logits, out);
    if (s != geopref::status::success) {
      std::fprintf(stderr, "[%s] compute: %s\n", name, geopref::status_string(s));
      fail(name, "library call failed");
      r.ok = false;
      return r;
    }
    if (step == 0) {
      r.loss0 = out.loss;
      r.cal0 = out.stats.calibration_error;
    } else if (out.loss > prev + 1e-12 * (1.0 + std::fabs(prev))) {
      ++r.increases;  // beyond the rounding of a sum of P terms of size O(1)
    }
    prev = out.loss;
    if (trace != nullptr && (step % 10 == 0 || step == c.steps)) {
      const std::vector<double> pi = softmax(theta);
      double er = 0;
      for (int a = 0; a < V; ++a) er += pi[a] * pb.reward[a];
      std::fprintf(trace, "%s,%d,%.10g,%.10g,%.10g\n", name, step, out.loss,
                   out.stats.calibration_error, er);
    }
    // ∂Loss/∂θ_v = Σ_t grad_logits[t, v]: every row is the same θ.
    for (int v = 0; v < V; ++v) g[v] = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int v = 0; v < V; ++v) g[v] += grad[t * V + v];

    if (type == geopref::loss_type::gdpo) {
      // Geometric averaging: a pair with p̂ = 0.5 (a == b here) has scale
      // 2p̂ − 1 = 0, so its gradient is exactly zero, in every row.
      for (int64_t i = 0; i < pb.P; ++i) {
        if (pb.soft[i] != 0.5) continue;
        bool zero = grad_seq[i] == 0.0 && grad_seq[pb.P + i] == 0.0;
        for (int v = 0; v < V; ++v)
          zero = zero && grad[i * V + v] == 0.0 && grad[(pb.P + i) * V + v] == 0.0;
        if (!zero) {
          fail(name, "gradient of a pair with p = 0.5 is not exactly zero");
          break;
        }
      }
    }
    if (step == c.steps) break;
    for (int v = 0; v < V; ++v) theta[v] -= lr * g[v];
  }
  r.loss1 = out.loss;
  r.cal1 = out.stats.calibration_error;
  r.theta = theta;
  r.pi = softmax(theta);
  for (int a = 0; a < V; ++a) {
    r.expected_reward += r.pi[a] * pb.reward[a];
    if (pb.reward[a] >= 0.5 * c.amp) r.high_mass += r.pi[a];
    if (r.pi[a] > r.pi[r.mode]) r.mode = a;
  }
  const std::vector<double> pref = softmax(pb.ref_theta);
  for (int a = 0; a < V; ++a)
    if (r.pi[a] > 0) r.kl_ref += r.pi[a] * std::log(r.pi[a] / pref[a]);

  // The library's gradient is the gradient of the library's loss: central
  // difference along a random unit direction d at the trained θ. ε = 1e-4
  // gives truncation ~ ε²·|L'''| (L''' = O(β³) for the logistic losses,
  // 0 for the quadratic ones) and rounding ~ 1e-16·|L|/ε, both << 1e-6.
  {
    geopref::reference::outputs fwd;
    rng gd{c.seed ^ 0xD1Bull};
    std::vector<double> d(V), tp(V), tm(V);
    double norm = 0;
    for (int v = 0; v < V; ++v) norm += (d[v] = gd.uniform() - 0.5) * d[v];
    norm = std::sqrt(norm);
    double gd_dot = 0;
    const double eps = 1e-4;
    for (int v = 0; v < V; ++v) {
      d[v] /= norm;
      gd_dot += g[v] * d[v];
      tp[v] = theta[v] + eps * d[v];
      tm[v] = theta[v] - eps * d[v];
    }
    double lp = 0, lm = 0;
    if (evaluate(pb, opt, tp, logits, fwd) == geopref::status::success) lp = fwd.loss;
    if (evaluate(pb, opt, tm, logits, fwd) == geopref::status::success) lm = fwd.loss;
    const double fd = (lp - lm) / (2 * eps);
    if (!(std::fabs(fd - gd_dot) <= 1e-6 * (1.0 + std::fabs(gd_dot)))) {
      std::fprintf(stderr, "[%s] directional derivative %.12g, finite difference %.12g\n", name,
                   gd_dot, fd);
      fail(name, "gradient does not match a finite difference of the loss");
    }
  }

  if (!(r.loss1 < r.loss0)) fail(name, "loss did not decrease");
  // The descent lemma: the margins are linear in θ (h = θ_a − θ_b − const), so
  // ∇²Loss = (1/P) Σ_i f''(h_i)(e_a − e_b)(e_a − e_b)ᵀ, whose largest
  // eigenvalue is at most sup f'' · 2 · max_a deg(a) / P (deg(a): pairs with
  // a ≠ b that contain a). sup f'' = f''(0) for every loss here (β²/4 for the
  // logistic ones, 2 for the quadratic ones, times (2p̂−1)² <= 1 for the
  // geometric ones), so lr = η / f''(0) decreases the loss at every step when
  // η · 2 · max deg / P < 2.
  if (c.eta * pb.max_degree_fraction < 1.0 && r.increases != 0)
    fail(name, "loss rose during a gradient step although the step size guarantees descent");
  if (type == geopref::loss_type::cdpo && !(r.cal1 < 0.01))
    fail(name, "trained cdpo's sigma(beta h) does not match p on the training pairs");
  return r;
}

// cdpo's minimiser reached from θ = log π_ref (see main): components of the
// pair graph by union-find, then θ*_a = log π_ref(a) + (r(a) − mean_C r)/β.
std::vector<double> cdpo_minimiser(const problem& pb, double beta) {
  std::vector<int> parent(V);
  for (int a = 0; a < V; ++a) parent[a] = a;
  auto find = [&parent](int a) {
    while (parent[a] != a) a = parent[a] = parent[parent[a]];
    return a;
  };
  for (int64_t i = 0; i < pb.P; ++i) parent[find(pb.labels[i])] = find(pb.labels[pb.P + i]);
  std::vector<double> sum(V, 0.0), count(V, 0.0);
  for (int a = 0; a < V; ++a) sum[find(a)] += pb.reward[a], count[find(a)] += 1.0;
  std::vector<double> theta(V);
  for (int a = 0; a < V; ++a)
    theta[a] = pb.ref_theta[a] + (pb.reward[a] - sum[find(a)] / count[find(a)]) / beta;
  return theta;
}

bool parse_losses(const char* s, std::vector<geopref::loss_type>& out) {
  out.clear();
  std::string list(s);
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = list.find(',', pos);
    const std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    geopref::loss_type t;
    if (!geopref::parse_loss_type(item.c_str(), &t)) return false;
    if (geopref::is_reference_free(t)) return false;  // simpo has no reference model
    out.push_back(t);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return !out.empty();
}

// Whole-argument numbers: "10x", "" or an out-of-range value is a usage
// error, not a silent 10, 0 or overflow.
bool parse_int(const char* s, long long lo, long long hi, long long* out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || errno == ERANGE || v < lo || v > hi) return false;
  *out = v;
  return true;
}
bool parse_double(const char* s, double* out) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE) return false;
  *out = v;
  return true;
}

int usage() {
  std::fprintf(stderr,
               "usage: bandit [--seed S] [--pairs P] [--steps N] [--beta B] [--eta E] [--amp A]\n"
               "              [--ref data|uniform] [--losses dpo,cdpo,gdpo,ipo,gipo]\n"
               "              [--csv FILE] [--trace FILE] [--pairs-csv FILE] [--check]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const bool has = i + 1 < argc;
    if (std::strcmp(a, "--check") == 0) c.check = true;
    else if (!has) return usage();
    else if (std::strcmp(a, "--seed") == 0) {
      long long v = 0;
      if (!parse_int(argv[++i], 0, std::numeric_limits<long long>::max(), &v)) return usage();
      c.seed = static_cast<uint64_t>(v);
    } else if (std::strcmp(a, "--pairs") == 0) {
      // Offsets are int32 [2P + 1], so 2P must fit.
      long long v = 0;
      if (!parse_int(argv[++i], 1, (1ll << 30) - 1, &v)) return usage();
      c.pairs = v;
    } else if (std::strcmp(a, "--steps") == 0) {
      long long v = 0;
      if (!parse_int(argv[++i], 1, std::numeric_limits<int>::max(), &v)) return usage();
      c.steps = static_cast<int>(v);
    } else if (std::strcmp(a, "--beta") == 0) {
      if (!parse_double(argv[++i], &c.beta)) return usage();
    } else if (std::strcmp(a, "--eta") == 0) {
      if (!parse_double(argv[++i], &c.eta)) return usage();
    } else if (std::strcmp(a, "--amp") == 0) {
      if (!parse_double(argv[++i], &c.amp)) return usage();
    }
    else if (std::strcmp(a, "--ref") == 0) {
      const char* r = argv[++i];
      if (std::strcmp(r, "uniform") == 0) c.ref_uniform = true;
      else if (std::strcmp(r, "data") == 0) c.ref_uniform = false;
      else return usage();
    } else if (std::strcmp(a, "--losses") == 0) {
      if (!parse_losses(argv[++i], c.losses)) return usage();
    } else if (std::strcmp(a, "--csv") == 0) c.csv = argv[++i];
    else if (std::strcmp(a, "--trace") == 0) c.trace = argv[++i];
    else if (std::strcmp(a, "--pairs-csv") == 0) c.pairs_csv = argv[++i];
    else return usage();
  }
  if (c.pairs < 1 || c.steps < 1 || !(c.beta > 0) || !(c.eta > 0) || !(c.amp > 0) ||
      !std::isfinite(c.beta) || !std::isfinite(c.eta) || !std::isfinite(c.amp)) {
    std::fprintf(stderr, "need pairs >= 1, steps >= 1 and finite beta, eta, amp > 0\n");
    return 2;
  }

  problem pb = make_problem(c);
  if (!compute_ref_logps(pb)) return 1;

  int near_ties = 0, ties = 0;
  for (double p : pb.soft) near_ties += p < 0.6, ties += p == 0.5;
  const std::vector<double> pref = softmax(pb.ref_theta);
  double data_er = 0, ref_er = 0, best = 0;
  int ref_mode = 0;
  for (int a = 0; a < V; ++a) {
    data_er += pb.data_freq[a] * pb.reward[a];
    ref_er += pref[a] * pb.reward[a];
    best = std::fmax(best, pb.reward[a]);
    if (pref[a] > pref[ref_mode]) ref_mode = a;
  }
  std::printf("bandit: V=%d actions, P=%lld pairs, seed=%llu, beta=%g, eta=%g, steps=%d, "
              "amp=%g, ref=%s\n",
              V, static_cast<long long>(pb.P), static_cast<unsigned long long>(c.seed), c.beta,
              c.eta, c.steps, c.amp, c.ref_uniform ? "uniform" : "data");
  std::printf("pairs: %d of %lld have p < 0.6 (near-ties), %d have p = 0.5 (a == b)\n",
              near_ties, static_cast<long long>(pb.P), ties);
  std::printf("descent bound: eta * max deg / P = %.3f (< 1: every step must lower the loss)\n",
              c.eta * pb.max_degree_fraction);
  std::printf("training actions: E[r] = %.3f; reference: E[r] = %.3f, mode %d; best reward %.3f "
              "(action 70)\n\n",
              data_er, ref_er, ref_mode, best);

  std::FILE* trace = nullptr;
  if (c.trace != nullptr) {
    trace = std::fopen(c.trace, "w");
    if (trace == nullptr) return std::fprintf(stderr, "cannot open %s\n", c.trace), 2;
    std::fprintf(trace, "loss,step,value,calibration_error,expected_reward\n");
  }
  std::vector<result> results;
  for (geopref::loss_type t : c.losses) results.push_back(train(pb, c, t, trace));
  if (trace != nullptr) std::fclose(trace);

  std::printf("%-6s %9s %9s %9s %9s %7s %5s %9s %8s %6s\n", "loss", "loss0", "loss", "cal0", "cal",
              "E[r]", "mode", "high-mass", "KL(ref)", "ups");
  for (const result& r : results)
    std::printf("%-6s %9.5f %9.5f %9.5f %9.5f %7.3f %5d %9.3f %8.3f %6d\n",
                geopref::loss_name(r.type), r.loss0, r.loss1, r.cal0, r.cal1, r.expected_reward,
                r.mode, r.high_mass, r.kl_ref, r.increases);
  std::printf("(cal = mean |sigmoid(beta h) - p| on the training pairs; high-mass = mass on "
              "{a : r(a) >= amp/2}; ups = steps where the loss rose)\n");

  for (const result& r : results) {
    if (r.type != geopref::loss_type::cdpo) continue;
    // cdpo's minimiser in closed form: σ(βh) = p̂ on every pair means
    // θ_a − θ_b = log π_ref(a) − log π_ref(b) + (r(a) − r(b))/β along every
    // pair, and gradient descent keeps Σθ over each connected component of the
    // pair graph (each step adds multiples of e_a − e_b). Hence
    // θ*_a = log π_ref(a) + (r(a) − mean of r over a's component)/β.
    const std::vector<double> star_theta = cdpo_minimiser(pb, c.beta);
    const std::vector<double> star = softmax(star_theta);
    double er = 0, hm = 0, dmax = 0;
    int mode = 0;
    for (int a = 0; a < V; ++a) {
      er += star[a] * pb.reward[a];
      if (pb.reward[a] >= 0.5 * c.amp) hm += star[a];
      if (star[a] > star[mode]) mode = a;
      dmax = std::fmax(dmax, std::fabs(r.theta[a] - star_theta[a]));
    }
    std::printf("cdpo's minimiser pi_ref(a) exp(r(a)/beta) (per component): E[r] = %.3f, mode %d, "
                "high-mass %.3f; trained cdpo is within max |theta - theta*| = %.3g of it\n",
                er, mode, hm, dmax);
  }

  if (c.check && !results.empty()) {
    // Determinism: the same seed and settings give bitwise the same policy.
    const result again = train(pb, c, results.front().type, nullptr);
    bool same = again.loss1 == results.front().loss1;
    for (int v = 0; v < V; ++v) same = same && again.theta[v] == results.front().theta[v];
    if (!same) fail(geopref::loss_name(again.type), "a second run gave a different result");
    else std::printf("determinism: second %s run bitwise identical\n", geopref::loss_name(again.type));
  }

  if (c.csv != nullptr) {
    std::FILE* f = std::fopen(c.csv, "w");
    if (f == nullptr) return std::fprintf(stderr, "cannot open %s\n", c.csv), 2;
    std::fprintf(f, "action,reward,data_freq,data_prob,ref_prob");
    for (const result& r : results) std::fprintf(f, ",%s", geopref::loss_name(r.type));
    std::fprintf(f, "\n");
    for (int a = 0; a < V; ++a) {
      std::fprintf(f, "%d,%.10g,%.10g,%.10g,%.10g", a, pb.reward[a], pb.data_freq[a],
                   pb.data_prob[a], pref[a]);
      for (const result& r : results) std::fprintf(f, ",%.10g", r.pi[a]);
      std::fprintf(f, "\n");
    }
    std::fclose(f);
  }
  if (c.pairs_csv != nullptr) {
    std::FILE* f = std::fopen(c.pairs_csv, "w");
    if (f == nullptr) return std::fprintf(stderr, "cannot open %s\n", c.pairs_csv), 2;
    std::fprintf(f, "first,second,p_hat\n");
    for (int64_t i = 0; i < pb.P; ++i)
      std::fprintf(f, "%d,%d,%.10g\n", pb.labels[i], pb.labels[pb.P + i], pb.soft[i]);
    std::fclose(f);
  }

  if (g_failures != 0) {
    std::fprintf(stderr, "bandit: %d check(s) FAILED\n", g_failures);
    return 1;
  }
  std::printf("bandit: all checks passed\n");
  return 0;
}
