// custom_loss — define your own margin loss (my_loss.hpp), then
//   1. compute it with the CPU reference and check the gradient with respect
//      to every logit against finite differences (geopref::gradcheck);
//   2. run it on the GPU path, geopref::cuda::train_step<Loss> (a GPU, or the
//      host emulator in the custom_loss_emu build), and compare its loss and
//      gradient element by element with the reference;
//   3. do both for its geometric soft-label form f((2p̂ − 1) h) (the
//      options' geometric flag; geopref::geometric<Loss> is the same as a
//      type) and for a weighted combination of it with the sft term (RPO's
//      recipe with your loss in place of dpo).
// Prints what it computed; exits non-zero if any check fails. With no GPU
// (and no emulator) step 2 reports "skipped".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"
#include "gpu_path.hpp"
#include "my_loss.hpp"

namespace {

using geopref::loss_type;
using geopref::options;
using geopref::status;
namespace reference = geopref::reference;
namespace gradcheck = geopref::gradcheck;

// Finite differences: the five-point stencil with the default step has ~1e-12
// absolute round-off on a loss of order 1, ≤ 1e-6 relative to the floor 1e-6
// (gradcheck.hpp); a wrong derivative is off by O(1).
constexpr double GRADCHECK_TOL = 1e-5;

// GPU against the reference: the GPU reads float logits and keeps token
// log-probs and g_s in float (relative error ~1e-7 each, sums of ≤ 8 tokens),
// the reference works in double on the same float logits. 1e-5 of the
// largest gradient entry plus 1e-5 relative is ten times that chain, and
// still far below any real error (a wrong term is O(|grad|)).
constexpr double GPU_ABS = 1e-5, GPU_REL = 1e-5;

struct batch {
  int64_t P = 4, S = 8, V = 24, N = 0;
  std::vector<float> logits;
  std::vector<int32_t> labels, offsets;
  std::vector<float> soft = {0.95f, 0.7f, 0.55f, 0.2f};
  std::vector<float> ref;  // [S]

  explicit batch(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> logit(-2.0f, 2.0f);
    std::uniform_int_distribution<int> len(3, 8), token(0, static_cast<int>(V) - 1);
    offsets.push_back(0);
    for (int64_t s = 0; s < S; ++s) offsets.push_back(offsets.back() + len(rng));
    N = offsets.back();
    for (int64_t i = 0; i < N * V; ++i) logits.push_back(logit(rng));
    for (int64_t t = 0; t < N; ++t) labels.push_back(t % 5 == 4 ? -100 : token(rng));
    for (int64_t s = 0; s < S; ++s) ref.push_back(-3.0f * static_cast<float>(offsets[s + 1] - offsets[s]) +
                                                  0.5f * logit(rng));
  }
};

bool run_case(const char* name, const batch& b, const options& opt,
              const custom_loss::squared_softplus_loss& loss) {
  // Reference inputs in double (the gradient check perturbs them).
  std::vector<double> z(b.logits.begin(), b.logits.end()), soft(b.soft.begin(), b.soft.end()),
      ref(b.ref.begin(), b.ref.end());
  auto in = reference::make_inputs(z.data(), b.N, b.V, b.labels.data(), b.offsets.data(), b.S, b.P);
  in.soft_labels = soft.data();
  in.ref_logps = ref.data();

  std::vector<double> grad(static_cast<size_t>(b.N * b.V));
  reference::outputs out;
  out.grad_logits = grad.data();
  if (reference::compute_with_loss(in, opt, loss, out) != status::success) return false;
  gradcheck::logits_result fd;
  if (gradcheck::check_logits_gradient_with_loss(in, opt, loss, fd) != status::success) return false;
  const bool fd_ok = fd.passed(GRADCHECK_TOL);

  // The GPU path on the same (float) inputs.
  custom_loss::batch gb;
  gb.logits = b.logits.data();
  gb.n_rows = b.N;
  gb.vocab = b.V;
  gb.labels = b.labels.data();
  gb.offsets = b.offsets.data();
  gb.n_seqs = b.S;
  gb.n_pairs = b.P;
  gb.soft_labels = b.soft.data();
  gb.ref_logps = b.ref.data();
  double gpu_loss = 0;
  std::vector<float> gpu_grad;
  std::string why;
  const custom_loss::outcome oc = custom_loss::gpu_step(gb, opt, loss, gpu_loss, gpu_grad, why);
  bool gpu_ok = true;
  double worst = 0;
  if (oc == custom_loss::outcome::ok) {
    double gmax = 0;
    for (double g : grad) gmax = std::fmax(gmax, std::fabs(g));
    for (size_t i = 0; i < grad.size(); ++i) {
      const double err = std::fabs(gpu_grad[i] - grad[i]);
      const double tol = GPU_ABS * gmax + GPU_REL * std::fabs(grad[i]);
      worst = std::fmax(worst, err / tol);
    }
    const double loss_err = std::fabs(gpu_loss - out.loss);
    gpu_ok = worst <= 1.0 && loss_err <= GPU_ABS * std::fabs(out.loss) + 1e-6;
  } else if (oc == custom_loss::outcome::failed) {
    gpu_ok = false;
  }
  std::printf("%-34s loss %.6f  finite differences: worst %.1e %s  GPU path: ", name, out.loss,
              fd.worst_rel_error, fd_ok ? "ok" : "FAILED");
  if (oc == custom_loss::outcome::ok)
    std::printf("loss %.6f, worst error/tolerance %.2f %s\n", gpu_loss, worst, gpu_ok ? "ok" : "FAILED");
  else
    std::printf("%s (%s)\n", oc == custom_loss::outcome::no_device ? "skipped" : "FAILED", why.c_str());
  return fd_ok && gpu_ok;
}

}  // namespace

int main() {
  const batch b(2024);
  const custom_loss::squared_softplus_loss loss{1.0, 0.5};
  std::printf("custom_loss: f(h) = 1/2 softplus(m - beta h)^2, beta = %.1f, m = %.1f; P = %lld pairs, "
              "N = %lld rows, V = %lld\n", loss.beta, loss.m, static_cast<long long>(b.P),
              static_cast<long long>(b.N), static_cast<long long>(b.V));
  bool ok = true;
  options opt;
  opt.loss.beta = loss.beta;  // for the rewards metrics; the loss itself is the functor
  ok = run_case("your loss", b, opt, loss) && ok;
  options geo = opt;
  geo.loss.geometric = true;
  ok = run_case("its geometric form", b, geo, loss) && ok;
  options rpo = opt;
  rpo.loss.n_terms = 2;
  rpo.loss.terms[0] = loss_type::dpo;  // the margin term your loss replaces
  rpo.loss.terms[1] = loss_type::sft;
  rpo.loss.term_weights[0] = 1.0;
  rpo.loss.term_weights[1] = 0.5;
  ok = run_case("your loss + 0.5 sft", b, rpo, loss) && ok;
  std::printf(ok ? "custom_loss: all checks passed\n" : "custom_loss: CHECK FAILED\n");
  return ok ? 0 : 1;
}
