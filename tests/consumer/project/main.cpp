// A consumer of the installed geopref package: the gdpo loss of one pair and
// one gradient row from the CPU reference, checked against a closed form
// written out here with nothing from the library.
#include <geopref/reference/reference.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>

namespace {

double log_sum_exp(const float* row, int n) {
  double m = row[0], s = 0;
  for (int v = 1; v < n; ++v) m = std::fmax(m, double(row[v]));
  for (int v = 0; v < n; ++v) s += std::exp(double(row[v]) - m);
  return m + std::log(s);
}

}  // namespace

int main() {
  constexpr int V = 3;
  // Two sequences of two rows each; row 1 is masked (ignore_index).
  const float logits[4 * V] = {1.0f, 0.5f, -1.0f,   // seq 0 (chosen)
                               9.0f, 9.0f, 9.0f,    //   masked
                               0.2f, 0.1f, 0.0f,    // seq 1 (rejected)
                               -0.5f, 2.0f, 0.3f};  //
  const int64_t labels[4] = {0, -100, 2, 1};
  const int64_t offsets[3] = {0, 2, 4};
  const double p = 0.8, beta = 0.5;

  geopref::reference::inputs<float, int64_t, int64_t> in;
  in.logits = logits;
  in.n_rows = 4;
  in.vocab = V;
  in.ld = V;
  in.labels = labels;
  in.offsets = offsets;
  in.n_seqs = 2;
  in.n_pairs = 1;
  in.soft_labels = &p;

  geopref::options opt;
  opt.loss.type = geopref::loss_type::gdpo;
  opt.loss.beta = beta;

  double grad[4 * V];
  geopref::reference::outputs out;
  out.grad_logits = grad;
  const geopref::status st = geopref::reference::compute(in, opt, out);
  if (st != geopref::status::success) {
    std::printf("FAIL: %s\n", geopref::status_string(st));
    return 1;
  }

  // Closed form: L_s = Σ z[t, y_t] − lse_t; h̄ = (2p − 1)(L_0 − L_1);
  // loss = log(1 + exp(−β h̄)); ∂loss/∂L_0 = −β σ(−β h̄)(2p − 1).
  const double l0 = logits[0] - log_sum_exp(logits, V);
  const double l1 = (logits[2 * V + 2] - log_sum_exp(logits + 2 * V, V)) +
                    (logits[3 * V + 1] - log_sum_exp(logits + 3 * V, V));
  const double hbar = (2 * p - 1) * (l0 - l1);
  const double loss = std::log1p(std::exp(-beta * hbar));
  const double g0 = -beta * (2 * p - 1) / (1 + std::exp(beta * hbar));
  double worst = std::fabs(out.loss - loss);
  const double lse0 = log_sum_exp(logits, V);
  for (int v = 0; v < V; ++v) {
    const double expect = g0 * ((v == 0 ? 1.0 : 0.0) - std::exp(logits[v] - lse0));
    worst = std::fmax(worst, std::fabs(grad[v] - expect));
    worst = std::fmax(worst, std::fabs(grad[V + v]));  // masked row: zero gradient
  }
  std::printf("gdpo loss %.12f (closed form %.12f), max abs error %.3g\n", out.loss, loss, worst);
  // Both sides are double over the same float inputs; only the summation order differs.
  if (!(worst < 1e-12)) {
    std::printf("FAIL: reference disagrees with the closed form\n");
    return 1;
  }
  return 0;
}
