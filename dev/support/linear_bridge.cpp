// dev/support/linear_bridge.cpp — see linear_bridge.hpp.
#include "linear_bridge.hpp"

#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/reference.hpp"
#include "user_loss.hpp"

namespace geopref::support {

geopref::status run_linear_reference(const linear_ref_problem& p, const geopref::options& opt,
                                     linear_ref_result& r) {
  const int64_t N = p.n_rows, Hd = p.hidden_size, V = p.vocab;
  geopref::reference::linear_inputs<double, int64_t, int64_t> in;
  in.hidden = p.hidden;
  in.weight = p.weight;
  in.bias = p.bias;
  in.n_rows = N;
  in.hidden_size = Hd;
  in.vocab = V;
  in.labels = p.labels;
  in.offsets = p.offsets;
  in.n_seqs = p.n_seqs;
  in.n_pairs = p.n_pairs;
  in.pairs = p.pairs;
  in.soft_labels = p.soft_labels;
  in.ref_logps = p.ref_logps;
  in.weights = p.weights;
  in.token_weights = p.token_weights;
  in.grad_loss = p.grad_loss;
  in.grad_pair_losses = p.grad_pair_losses;

  const auto n = static_cast<size_t>(N), s = static_cast<size_t>(p.n_seqs),
             np = static_cast<size_t>(p.n_pairs);
  ref_result& b = r.base;
  b.token_logps.assign(n, 0.0);
  b.lse.assign(n, 0.0);
  b.seq_logps.assign(s, 0.0);
  b.seq_counts.assign(s, 0);
  b.pair_losses.assign(np, 0.0);
  b.margins.assign(np, 0.0);
  b.grad_seq_logps.assign(s, 0.0);
  r.grad_hidden.assign(n * static_cast<size_t>(Hd), 0.0);
  r.grad_weight.assign(static_cast<size_t>(V * Hd), 0.0);
  r.grad_bias.assign(p.bias != nullptr ? static_cast<size_t>(V) : 0, 0.0);
  geopref::reference::linear_outputs out;
  out.base.token_logps = b.token_logps.data();
  out.base.lse = b.lse.data();
  out.base.seq_logps = b.seq_logps.data();
  out.base.seq_counts = b.seq_counts.data();
  out.base.pair_losses = b.pair_losses.data();
  out.base.margins = b.margins.data();
  out.base.grad_seq_logps = b.grad_seq_logps.data();
  out.grad_hidden = r.grad_hidden.data();
  out.grad_weight = r.grad_weight.data();
  out.grad_bias = p.bias != nullptr ? r.grad_bias.data() : nullptr;
  geopref::status st =
      p.user_loss_beta > 0
          ? geopref::reference::fused_linear_with_loss(in, opt, log_cosh_loss{p.user_loss_beta},
                                                       out)
          : geopref::reference::fused_linear(in, opt, out);
  if (st != geopref::status::success) return st;
  b.loss = out.base.loss;
  b.stats = out.base.stats;

  // Z and G = ∂Loss/∂Z for the tests' error bounds.
  r.logits.assign(n * static_cast<size_t>(V), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double z = p.bias != nullptr ? p.bias[v] : 0.0;
      for (int64_t k = 0; k < Hd; ++k) z += p.hidden[t * Hd + k] * p.weight[v * Hd + k];
      r.logits[static_cast<size_t>(t * V + v)] = z;
    }
  auto x = geopref::reference::make_inputs<double, int64_t, int64_t>(
      r.logits.data(), N, V, p.labels, p.offsets, p.n_seqs, p.n_pairs);
  x.pairs = p.pairs;
  x.soft_labels = p.soft_labels;
  x.ref_logps = p.ref_logps;
  x.weights = p.weights;
  x.token_weights = p.token_weights;
  x.grad_loss = p.grad_loss;
  x.grad_pair_losses = p.grad_pair_losses;
  b.grad_logits.assign(n * static_cast<size_t>(V), 0.0);
  geopref::reference::outputs o;
  if (N > 0) o.grad_logits = b.grad_logits.data();
  return p.user_loss_beta > 0
             ? geopref::reference::compute_with_loss(x, opt, log_cosh_loss{p.user_loss_beta}, o)
             : geopref::reference::compute(x, opt, o);
}

geopref::status run_linear_token_reference(const linear_ref_problem& p, int64_t ignore_index,
                                           const double* g, linear_token_ref_result& r) {
  const int64_t N = p.n_rows, Hd = p.hidden_size, V = p.vocab;
  const auto n = static_cast<size_t>(N);
  geopref::reference::linear_token_rows<double, int64_t> in;
  in.hidden = p.hidden;
  in.weight = p.weight;
  in.bias = p.bias;
  in.n_rows = N;
  in.hidden_size = Hd;
  in.vocab = V;
  in.labels = p.labels;
  in.ignore_index = ignore_index;
  r.token_logps.assign(n, 0.0);
  r.lse.assign(n, 0.0);
  r.entropy.assign(n, 0.0);
  geopref::reference::token_outputs o;
  o.token_logps = r.token_logps.data();
  o.lse = r.lse.data();
  o.entropy = r.entropy.data();
  geopref::status st = geopref::reference::linear_token_logps(in, o);
  if (st != geopref::status::success) return st;
  r.grad_hidden.assign(n * static_cast<size_t>(Hd), 0.0);
  r.grad_weight.assign(static_cast<size_t>(V * Hd), 0.0);
  r.grad_bias.assign(p.bias != nullptr ? static_cast<size_t>(V) : 0, 0.0);
  geopref::reference::linear_token_grads gr;
  gr.grad_hidden = r.grad_hidden.data();
  gr.grad_weight = r.grad_weight.data();
  gr.grad_bias = p.bias != nullptr ? r.grad_bias.data() : nullptr;
  st = geopref::reference::linear_token_logps_grad(in, r.lse.data(), g, gr);
  if (st != geopref::status::success) return st;
  // Z and G for the tests' error bounds.
  r.logits.assign(n * static_cast<size_t>(V), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double z = p.bias != nullptr ? p.bias[v] : 0.0;
      for (int64_t k = 0; k < Hd; ++k) z += p.hidden[t * Hd + k] * p.weight[v * Hd + k];
      r.logits[t * V + v] = z;
    }
  r.grad_logits.assign(n * static_cast<size_t>(V), 0.0);
  geopref::reference::token_rows<double, int64_t> zr;
  zr.logits = r.logits.data();
  zr.n_rows = N;
  zr.vocab = V;
  zr.ld = V;
  zr.labels = p.labels;
  zr.ignore_index = ignore_index;
  return geopref::reference::token_logps_grad(zr, r.lse.data(), g, r.grad_logits.data(), V);
}

}  // namespace geopref::support
