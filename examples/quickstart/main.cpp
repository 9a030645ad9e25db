// quickstart — all thirteen losses on one small seeded batch, through the CPU
// reference: the loss, TRL-named metrics, and a finite-difference check of
// the gradient with respect to every logit. Prints a table; exits non-zero if
// any gradient check fails.
//
// The batch is what a training step sees: a packed batch of 2P sequences
// (pair i = sequence i, chosen, against sequence P + i, rejected, as TRL
// concatenates them), float logits [N, V] with labels already shifted
// (labels[t] = input_ids[t + 1]), some rows masked with -100, a soft label p̂
// per pair, and reference log-probs computed by the same forward pass over a
// "reference model's" logits.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "geopref/reference/gradcheck.hpp"
#include "geopref/reference/reference.hpp"

#if defined(GEOPREF_QUICKSTART_CUDA)
#include <string>

#include "gpu_path.hpp"
#endif

namespace {

using geopref::loss_type;
using geopref::options;
using geopref::status;
namespace reference = geopref::reference;
namespace gradcheck = geopref::gradcheck;

// Tolerance of the gradient check: the five-point stencil with the default
// step has ~1e-12 absolute round-off on a loss of order 1, which is ≤ 1e-6
// relative to the default floor 1e-6 (see gradcheck.hpp). A wrong gradient
// is off by O(1).
constexpr double GRADCHECK_TOL = 1e-5;

/// The seeded batch, in the types a training step would hold.
struct batch {
  int64_t P = 4, S = 8, V = 16, N = 0;
  std::vector<float> logits, ref_model_logits;  // [N, V]
  std::vector<int32_t> labels;                  // [N]
  std::vector<int32_t> offsets;                 // [S + 1], packed
  std::vector<double> soft_labels = {0.95, 0.7, 0.5, 0.2};
  std::vector<double> ref_logps;                // [S], summed form

  explicit batch(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> logit(-2.0f, 2.0f), noise(-0.3f, 0.3f);
    std::uniform_int_distribution<int> len(3, 6), token(0, static_cast<int>(V) - 1);
    std::bernoulli_distribution masked(0.2);
    offsets.push_back(0);
    for (int64_t s = 0; s < S; ++s) offsets.push_back(offsets.back() + len(rng));
    N = offsets.back();
    for (int64_t i = 0; i < N * V; ++i) {
      logits.push_back(logit(rng));
      ref_model_logits.push_back(logits.back() + noise(rng));  // a nearby model
    }
    for (int64_t t = 0; t < N; ++t) labels.push_back(masked(rng) ? -100 : token(rng));
  }

  template <class Logit>
  reference::inputs<Logit, int32_t, int32_t> view(const Logit* z) const {
    auto in = reference::make_inputs(z, N, V, labels.data(), offsets.data(), S, P);
    in.soft_labels = soft_labels.data();
    in.ref_logps = ref_logps.empty() ? nullptr : ref_logps.data();
    return in;
  }
};

/// The parameters each loss runs with (TRL's defaults where TRL has one).
options options_for(loss_type t) {
  options o;
  o.loss.type = t;
  o.loss.beta = 0.5;
  o.loss.alpha = 1.5;  // ropo/gropo weight of σ(−βh)
  o.loss.gamma = t == loss_type::simpo ? 0.5 : 0.3;
  o.loss.epsilon = t == loss_type::exo_pair ? 1e-3 : 0.1;
  o.loss.tau = 0.05;
  return o;
}

/// One line of the table.
struct row_result {
  loss_type type{};
  status st = status::success;
  double loss = 0;
  geopref::metrics stats{};
  double grad_err = 0;  // worst relative error of the CPU gradient check
  bool grad_ok = false;
  // ---- GPU column (to be filled by the CUDA path; see gpu_path below) ----
  bool gpu_ran = false;
  double gpu_max_rel_diff = 0;  // worst |gpu − cpu| / max(|cpu|, floor) over loss and grad_logits
  bool gpu_ok = false;
};

/// The CPU reference on the batch with one loss: forward, metrics, and the
/// gradient check of grad_logits against finite differences of the loss.
row_result cpu_path(const batch& b, loss_type t) {
  row_result r;
  r.type = t;
  const options opt = options_for(t);
  batch rb = b;
  if (geopref::is_reference_free(t)) rb.ref_logps.clear();  // simpo takes no reference

  reference::outputs out;
  r.st = reference::compute(rb.view(rb.logits.data()), opt, out);
  if (r.st != status::success) return r;
  r.loss = out.loss;
  r.stats = out.stats;

  // The check runs in double on exactly the float values the batch holds.
  const std::vector<double> z(rb.logits.begin(), rb.logits.end());
  gradcheck::logits_result g;
  r.st = gradcheck::check_logits_gradient(rb.view(z.data()), opt, g);
  r.grad_err = g.worst_rel_error;
  r.grad_ok = r.st == status::success && g.passed(GRADCHECK_TOL);
  return r;
}

// ---- GPU path -------------------------------------------------------------
// Place for the CUDA work to add a GPU column: under a compile definition set
// by this folder's CMakeLists.txt when CUDA is available, run the fused
// forward/backward on the same batch (float logits), compare the loss and
// grad_logits with the CPU reference's, and fill r.gpu_ran / gpu_max_rel_diff /
// gpu_ok. print_table() already prints the column when any row has gpu_ran,
// and main() already counts gpu failures. Exit with the GPU column absent (not
// failed) when no device is usable.
//
// Tolerance of the GPU column: the kernels compute in fp32 what the reference
// computes in double; on rows of V = 16 logits in [-2, 2] each output carries
// a few fp32 roundings (~1e-7 relative each), so 1e-4 relative (with a floor
// of 1e-6 below which differences count as absolute) leaves two orders of
// magnitude for rounding and still catches any real error, which is O(1).
constexpr double GPU_TOL = 1e-4;
constexpr double GPU_FLOOR = 1e-6;

/// Why the GPU column is absent ("" while it is not).
const char* gpu_skipped = "";

#if defined(GEOPREF_QUICKSTART_CUDA)
void gpu_path(const batch& b, row_result& r) {
  if (r.st != status::success) return;
  const options opt = options_for(r.type);
  // The GPU reads soft labels and reference log-probs as float: give the CPU
  // reference the same rounded values, so the column measures the kernels.
  const std::vector<float> soft(b.soft_labels.begin(), b.soft_labels.end());
  std::vector<float> ref(b.ref_logps.begin(), b.ref_logps.end());
  if (geopref::is_reference_free(r.type)) ref.clear();
  batch cb = b;
  cb.soft_labels.assign(soft.begin(), soft.end());
  cb.ref_logps.assign(ref.begin(), ref.end());
  std::vector<double> want_grad(static_cast<size_t>(b.N * b.V));
  reference::outputs want;
  want.grad_logits = want_grad.data();
  if (reference::compute(cb.view(cb.logits.data()), opt, want) != status::success) return;

  quickstart::gpu_batch gb;
  gb.logits = b.logits.data();
  gb.n_rows = b.N;
  gb.vocab = b.V;
  gb.labels = b.labels.data();
  gb.offsets = b.offsets.data();
  gb.n_seqs = b.S;
  gb.n_pairs = b.P;
  gb.soft_labels = soft.data();
  gb.ref_logps = ref.empty() ? nullptr : ref.data();
  double loss = 0;
  std::vector<float> grad;
  static std::string why;
  const quickstart::gpu_outcome o = quickstart::gpu_train_step(gb, opt, loss, grad, why);
  if (o == quickstart::gpu_outcome::no_device) {
    gpu_skipped = why.c_str();
    return;
  }
  r.gpu_ran = true;
  if (o != quickstart::gpu_outcome::ok) {
    std::fprintf(stderr, "%s: GPU train_step failed: %s\n", geopref::loss_name(r.type), why.c_str());
    r.gpu_max_rel_diff = INFINITY;
    return;
  }
  auto rel = [](double got, double w) { return std::fabs(got - w) / std::fmax(std::fabs(w), GPU_FLOOR); };
  double worst = rel(loss, want.loss);
  for (size_t i = 0; i < grad.size(); ++i) worst = std::fmax(worst, rel(grad[i], want_grad[i]));
  r.gpu_max_rel_diff = worst;
  r.gpu_ok = worst <= GPU_TOL;  // NaN fails
}
#else
void gpu_path(const batch& /*b*/, row_result& /*r*/) { gpu_skipped = "built without CUDA"; }
#endif

void print_table(const std::vector<row_result>& rows) {
  bool any_gpu = false;
  for (const auto& r : rows) any_gpu = any_gpu || r.gpu_ran;
  std::printf("%-12s %11s %9s %9s %9s %9s %9s | %-16s", "loss", "loss", "rew/ch", "rew/rej",
              "acc", "margin", "calib", "cpu gradcheck");
  if (any_gpu) std::printf(" | %-16s", "gpu vs cpu");
  std::printf("\n");
  for (const auto& r : rows) {
    if (r.st != status::success) {
      std::printf("%-12s error: %s\n", geopref::loss_name(r.type), geopref::status_string(r.st));
      continue;
    }
    const geopref::metrics& m = r.stats;
    std::printf("%-12s %11.6f %9.4f %9.4f %9.3f %9.4f %9.4f | %8.1e %-7s",
                geopref::loss_name(r.type), r.loss, m.rewards_chosen, m.rewards_rejected,
                m.rewards_accuracies, m.rewards_margins, m.calibration_error, r.grad_err,
                r.grad_ok ? "ok" : "FAIL");
    if (any_gpu) {
      if (r.gpu_ran) std::printf(" | %8.1e %-7s", r.gpu_max_rel_diff, r.gpu_ok ? "ok" : "FAIL");
      else std::printf(" | %-16s", "n/a");
    }
    std::printf("\n");
  }
}

}  // namespace

int main() {
  const uint64_t seed = 20240917;
  batch b(seed);

  // Reference log-probs: the same forward pass over the reference model's
  // logits (summed form; no gradient needed).
  {
    reference::outputs ref_out;
    std::vector<double> ref(static_cast<size_t>(b.S));
    ref_out.seq_logps = ref.data();
    const status st = reference::compute(b.view(b.ref_model_logits.data()), options{}, ref_out);
    if (st != status::success) {
      std::fprintf(stderr, "reference forward failed: %s\n", geopref::status_string(st));
      return 1;
    }
    b.ref_logps = ref;
  }

  std::printf("geopref quickstart: %lld pairs, %lld rows, V = %lld, seed %llu, beta = %.2f\n",
              static_cast<long long>(b.P), static_cast<long long>(b.N),
              static_cast<long long>(b.V), static_cast<unsigned long long>(seed),
              options_for(loss_type::dpo).loss.beta);
  std::printf("soft labels p = %.2f %.2f %.2f %.2f  (gradient check tolerance %.0e)\n\n",
              b.soft_labels[0], b.soft_labels[1], b.soft_labels[2], b.soft_labels[3],
              GRADCHECK_TOL);

  std::vector<row_result> rows;
  for (int i = 0; i < geopref::LOSS_TYPE_COUNT; ++i) {
    row_result r = cpu_path(b, static_cast<loss_type>(i));
    gpu_path(b, r);
    rows.push_back(r);
  }
  print_table(rows);
  if (*gpu_skipped != '\0') std::printf("\nGPU path skipped: %s\n", gpu_skipped);
  else std::printf("\nGPU column: worst |gpu - cpu| / max(|cpu|, %.0e) over the loss and every "
                   "grad_logits entry (tolerance %.0e)\n", GPU_FLOOR, GPU_TOL);

  int failures = 0;
  for (const auto& r : rows)
    failures += (r.st != status::success || !r.grad_ok || (r.gpu_ran && !r.gpu_ok)) ? 1 : 0;
  std::printf("\n%s: %d of %zu losses failed\n", failures ? "FAILED" : "all checks passed",
              failures, rows.size());
  return failures ? 1 : 0;
}
