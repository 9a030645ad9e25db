// grpo — a loss the library does not know, kept in the caller's own code on
// top of the per-token primitive: GRPO's per-token clipped-ratio objective
// with a k3 KL penalty (DeepSeekMath; TRL's GRPOTrainer, token-level
// normalisation as in DAPO):
//
//   r_t    = exp(ℓ_t − ℓ_t^old)                                  (importance ratio)
//   loss   = −(1/n) Σ_t m_t [ min(r_t A_t, clip(r_t, 1 − ε, 1 + ε) A_t)
//                             − β (exp(ℓ_t^ref − ℓ_t) − (ℓ_t^ref − ℓ_t) − 1) ]
//
// over the completion tokens (m_t = 1; prompt and padding rows carry
// ignore_index), n = Σ_t m_t, A_t the group-normalised advantage of the row's
// completion. The library gives ℓ_t = log softmax(z_t)[y_t] (token_logps) and,
// for the caller's g_t = ∂loss/∂ℓ_t, the gradient with respect to the logits
// (token_logps_grad). This program
//   1. computes the loss and its gradient with the CPU reference's primitive
//      and checks the gradient with respect to every logit against finite
//      differences of the whole chain (logits → ℓ_t → loss), in double;
//   2. runs the same on the GPU path (a GPU, or the host emulator in the
//      grpo_emu build) and compares the loss and the gradient element by
//      element with step 1.
// Prints what it computed; exits non-zero if any check fails.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"
#include "gpu_path.hpp"

namespace {

namespace reference = geopref::reference;
using geopref::status;

// Finite differences (gradcheck.hpp's five-point stencil, step 1e-3): ~1e-12
// round-off on a loss of order 1; the clip's kinks are kept ≥ 0.05 away in
// ratio (far beyond the ±2e-3 a step moves ℓ_t), so the loss is smooth at
// every stencil point. A wrong g_t is off by O(1).
constexpr double GRADCHECK_TOL = 1e-6;
// GPU against the reference: float logits, float ℓ_t (~1e-7 relative of |ℓ|
// ≤ 5), a ratio and a KL term of O(1) derivative, float g_t and gradient:
// 1e-5 of the largest entry plus 1e-5 relative is ten times that chain.
constexpr double GPU_ABS = 1e-5, GPU_REL = 1e-5;

struct rollout {
  static constexpr int64_t G = 4;       // completions in the group
  static constexpr int64_t T = 9;       // rows per completion (3 prompt rows, then 6 completion rows)
  static constexpr int64_t PROMPT = 3;
  static constexpr int64_t V = 37;
  static constexpr int64_t N = G * T;
  double epsilon = 0.2, beta = 0.04;
  std::vector<float> logits;          // [N, V]
  std::vector<int32_t> labels;        // [N]
  std::vector<double> old_logps;      // [N] the sampling policy's ℓ (fixed)
  std::vector<double> ref_logps;      // [N] the reference model's ℓ (fixed)
  std::vector<double> advantage;      // [N] the row's completion's advantage

  explicit rollout(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> logit(0.0f, 1.5f);
    std::uniform_int_distribution<int> token(0, static_cast<int>(V) - 1);
    for (int64_t i = 0; i < N * V; ++i) logits.push_back(logit(rng));
    for (int64_t t = 0; t < N; ++t) labels.push_back(t % T < PROMPT ? -100 : token(rng));
    // Rewards per completion, normalised within the group (GRPO's advantage).
    const double rewards[G] = {1.0, 0.0, 0.5, 0.0};
    double mean = 0, var = 0;
    for (double r : rewards) mean += r / G;
    for (double r : rewards) var += (r - mean) * (r - mean) / G;
    for (int64_t t = 0; t < N; ++t) advantage.push_back((rewards[t / T] - mean) / (std::sqrt(var) + 1e-4));
    // The old and reference log-probs: the current ones shifted so that the
    // ratios land in the clipped and unclipped regions alike, never near a kink.
    const std::vector<double> now = current_logps(std::vector<double>(logits.begin(), logits.end()));
    const double shift[4] = {-0.5, -0.1, 0.05, 0.3};  // r = e^{-shift}: 1.65, 1.105, 0.951, 0.741
    for (int64_t t = 0; t < N; ++t) {
      old_logps.push_back(now[t] + shift[rng() % 4]);
      ref_logps.push_back(now[t] + 0.2 * logit(rng));
    }
  }

  /// ℓ_t from double logits with the reference's primitive.
  std::vector<double> current_logps(const std::vector<double>& z) const {
    reference::token_rows<double, int32_t> in;
    in.logits = z.data();
    in.n_rows = N;
    in.vocab = V;
    in.ld = V;
    in.labels = labels.data();
    std::vector<double> l(static_cast<size_t>(N));
    reference::token_outputs out;
    out.token_logps = l.data();
    reference::token_logps(in, out);
    return l;
  }

  /// The caller's loss: value, and g_t = ∂loss/∂ℓ_t (0 on masked rows).
  double loss(const std::vector<double>& logp, std::vector<double>& g) const {
    double n = 0, sum = 0;
    for (int64_t t = 0; t < N; ++t) n += labels[t] != -100 ? 1.0 : 0.0;
    g.assign(static_cast<size_t>(N), 0.0);
    for (int64_t t = 0; t < N; ++t) {
      if (labels[t] == -100) continue;
      const double r = std::exp(logp[t] - old_logps[t]), a = advantage[t];
      const double clipped = std::fmin(std::fmax(r, 1.0 - epsilon), 1.0 + epsilon);
      // min(r A, clip(r) A): the unclipped term (derivative r A) unless the
      // clipped one is smaller, where r is held at the clip (derivative 0).
      const bool unclipped = r * a <= clipped * a;
      const double surrogate = unclipped ? r * a : clipped * a;
      const double d = ref_logps[t] - logp[t];
      const double kl = std::exp(d) - d - 1.0;
      sum += -(surrogate - beta * kl);
      g[t] = -((unclipped ? r * a : 0.0) - beta * (1.0 - std::exp(d))) / n;
    }
    return sum / n;
  }
};

}  // namespace

int main() {
  const rollout b(2026);
  std::printf("grpo: G = %lld completions x %lld rows (%lld prompt rows masked), V = %lld, "
              "epsilon = %.2f, beta = %.2f\n", static_cast<long long>(rollout::G),
              static_cast<long long>(rollout::T), static_cast<long long>(rollout::PROMPT),
              static_cast<long long>(rollout::V), b.epsilon, b.beta);

  // 1. The CPU reference: forward, the caller's loss and g_t, backward.
  const std::vector<double> z(b.logits.begin(), b.logits.end());
  reference::token_rows<double, int32_t> in;
  in.logits = z.data();
  in.n_rows = rollout::N;
  in.vocab = rollout::V;
  in.ld = rollout::V;
  in.labels = b.labels.data();
  std::vector<double> logp(rollout::N), lse(rollout::N), g;
  reference::token_outputs out;
  out.token_logps = logp.data();
  out.lse = lse.data();
  if (reference::token_logps(in, out) != status::success) return 1;
  const double value = b.loss(logp, g);
  std::vector<double> grad(static_cast<size_t>(rollout::N * rollout::V));
  if (reference::token_logps_grad(in, lse.data(), g.data(), grad.data()) != status::success) return 1;
  int clipped = 0, scored = 0;  // tokens whose ratio the clip holds (no surrogate gradient)
  for (int64_t t = 0; t < rollout::N; ++t) {
    if (b.labels[t] == -100) continue;
    const double r = std::exp(logp[t] - b.old_logps[t]), a = b.advantage[t];
    clipped += r * a > std::fmin(std::fmax(r, 1.0 - b.epsilon), 1.0 + b.epsilon) * a;
    ++scored;
  }
  const auto whole_chain = [&](const std::vector<double>& x) {
    std::vector<double> unused;
    return b.loss(b.current_logps(x), unused);
  };
  const geopref::gradcheck::result fd = geopref::gradcheck::check_gradient(whole_chain, z, grad);
  const bool fd_ok = fd.passed(GRADCHECK_TOL);
  std::printf("CPU reference     loss %.9f (%d of %d tokens clipped); finite differences over "
              "%lld logits: worst %.1e %s\n", value, clipped, scored, static_cast<long long>(fd.checked),
              fd.worst_rel_error, fd_ok ? "ok" : "FAILED");

  // 2. The GPU path on the same float logits.
  double gpu_value = 0;
  std::vector<float> gpu_grad;
  std::string why;
  const grpo::outcome oc = grpo::gpu_step(
      b.logits, rollout::N, rollout::V, b.labels,
      [&](const std::vector<double>& l, std::vector<double>& gg) { return b.loss(l, gg); },
      gpu_value, gpu_grad, why);
  bool gpu_ok = oc != grpo::outcome::failed;
  if (oc == grpo::outcome::ok) {
    double gmax = 0, worst = 0;
    for (double x : grad) gmax = std::fmax(gmax, std::fabs(x));
    for (size_t i = 0; i < grad.size(); ++i)
      worst = std::fmax(worst, std::fabs(gpu_grad[i] - grad[i]) / (GPU_ABS * gmax + GPU_REL * std::fabs(grad[i])));
    gpu_ok = worst <= 1.0 && std::fabs(gpu_value - value) <= GPU_ABS * std::fabs(value) + 1e-6;
    std::printf("GPU path          loss %.9f; gradient worst error/tolerance %.2f %s\n", gpu_value,
                worst, gpu_ok ? "ok" : "FAILED");
  } else {
    std::printf("GPU path          %s (%s)\n", oc == grpo::outcome::no_device ? "skipped" : "FAILED",
                why.c_str());
  }
  const bool ok = fd_ok && gpu_ok;
  std::printf(ok ? "grpo: all checks passed\n" : "grpo: CHECK FAILED\n");
  return ok ? 0 : 1;
}
