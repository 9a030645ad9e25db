#include <geopref/reference/reference.hpp>

#include <cstdint>
#include <cstdio>

int main() {
  // Two sequences of one scored token each, forming one pair; V = 4.
  float logits[2 * 4] = {2, 0, 0, 0,    // sequence 0 ("chosen")
                         0, 0, 1, 0};   // sequence 1 ("rejected")
  int32_t labels[2] = {0, 0};           // row t scores labels[t] (already shifted)
  int32_t offsets[3] = {0, 1, 2};       // sequence s owns rows [offsets[s], offsets[s+1])
  double soft_label = 0.8;              // P(chosen ≻ rejected)

  geopref::reference::inputs<float, int32_t, int32_t> in;
  in.logits = logits; in.n_rows = 2; in.vocab = 4; in.ld = 4;
  in.labels = labels; in.offsets = offsets; in.n_seqs = 2; in.n_pairs = 1;
  in.soft_labels = &soft_label;

  geopref::options opt;
  opt.loss.type = geopref::loss_type::gdpo;
  opt.loss.beta = 0.1;

  double grad[2 * 4];                   // ∂loss/∂logits, [N, ld]
  geopref::reference::outputs out;
  out.grad_logits = grad;
  const geopref::status s = geopref::reference::compute(in, opt, out);
  if (s != geopref::status::success) {
    std::fprintf(stderr, "geopref: %s\n", geopref::status_string(s));
    return 1;
  }
  std::printf("loss %.6f  rewards/accuracies %.1f  grad[0][0] %.6f\n", out.loss,
              out.stats.rewards_accuracies, grad[0]);
  return 0;
}
