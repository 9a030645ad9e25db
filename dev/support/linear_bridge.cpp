// dev/support/linear_bridge.cpp — see linear_bridge.hpp.
#include "linear_bridge.hpp"

#include "bridge_outputs.hpp"
#include "geopref/reference/fused_linear.hpp"
#include "geopref/reference/reference.hpp"

namespace geopref::support {
namespace {

/// The gradients of H, W and b, zeroed and sized, as `out` (linear_outputs
/// or linear_token_grads) writes them; grad_bias only with a bias.
template <class Result, class Out>
void point_grads(const linear_ref_problem& p, Result* r, Out* out) {
  out->grad_hidden = zeroed(r->grad_hidden, static_cast<size_t>(p.n_rows * p.hidden_size));
  out->grad_weight = zeroed(r->grad_weight, static_cast<size_t>(p.vocab * p.hidden_size));
  double* gb = zeroed(r->grad_bias, p.bias != nullptr ? static_cast<size_t>(p.vocab) : 0);
  out->grad_bias = p.bias != nullptr ? gb : nullptr;
}

/// Z = H·Wᵀ + b [N, V] in double, for the tests' error bounds.
std::vector<double> logits_of(const linear_ref_problem& p) {
  const int64_t N = p.n_rows, Hd = p.hidden_size, V = p.vocab;
  std::vector<double> z(static_cast<size_t>(N) * static_cast<size_t>(V), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double s = p.bias != nullptr ? p.bias[v] : 0.0;
      for (int64_t k = 0; k < Hd; ++k) s += p.hidden[t * Hd + k] * p.weight[v * Hd + k];
      z[static_cast<size_t>(t * V + v)] = s;
    }
  return z;
}

}  // namespace

geopref::status run_linear_reference(const linear_ref_problem& p, const geopref::options& opt,
                                     linear_ref_result& r) {
  const int64_t N = p.n_rows, V = p.vocab;
  namespace ref = geopref::reference;
  ref::linear_inputs<double, int64_t, int64_t> in;
  static_cast<ref::linear_source<double>&>(in) = p;
  static_cast<ref::sequence_rows<int64_t, int64_t>&>(in) = p;
  static_cast<ref::pair_set&>(in) = p;

  ref_result& b = r.base;
  geopref::reference::linear_outputs out;
  point_outputs(N, p.n_seqs, p.n_pairs, &b, &out.base);
  point_grads(p, &r, &out);
  const geopref::status st = run_problem_loss(
      p.user_loss_beta, [&](const auto& loss) { return ref::fused_linear_with_loss(in, opt, loss, out); },
      [&] { return ref::fused_linear(in, opt, out); });
  if (st != geopref::status::success) return st;
  keep_totals(st, out.base, b);

  // Z and G = ∂Loss/∂Z for the tests' error bounds.
  r.logits = logits_of(p);
  ref::inputs<double, int64_t, int64_t> x;
  static_cast<ref::sequence_rows<int64_t, int64_t>&>(x) = p;
  static_cast<ref::pair_set&>(x) = p;
  x.logits = r.logits.data();
  x.ld = V;
  b.grad_logits.assign(static_cast<size_t>(N) * static_cast<size_t>(V), 0.0);
  geopref::reference::outputs o;
  if (N > 0) o.grad_logits = b.grad_logits.data();
  return run_problem_loss(
      p.user_loss_beta, [&](const auto& loss) { return ref::compute_with_loss(x, opt, loss, o); },
      [&] { return ref::compute(x, opt, o); });
}

geopref::status run_linear_token_reference(const linear_ref_problem& p, int64_t ignore_index,
                                           const double* g, linear_token_ref_result& r,
                                           const double* e) {
  const int64_t N = p.n_rows, V = p.vocab;
  namespace ref = geopref::reference;
  ref::linear_token_rows<double, int64_t> in;
  static_cast<ref::linear_source<double>&>(in) = p;
  static_cast<ref::vocab_rows<int64_t>&>(in) = p;
  in.ignore_index = ignore_index;
  geopref::reference::token_outputs o;
  point_token_outputs(N, &r, &o);
  geopref::status st = geopref::reference::linear_token_logps(in, o);
  if (st != geopref::status::success) return st;
  geopref::reference::linear_token_grads gr;
  point_grads(p, &r, &gr);
  st = geopref::reference::linear_token_logps_grad(in, r.lse.data(), g, gr, e);
  if (st != geopref::status::success) return st;
  // Z and G for the tests' error bounds.
  r.logits = logits_of(p);
  r.grad_logits.assign(static_cast<size_t>(N) * static_cast<size_t>(V), 0.0);
  ref::token_rows<double, int64_t> zr;
  static_cast<ref::vocab_rows<int64_t>&>(zr) = p;
  zr.logits = r.logits.data();
  zr.ld = V;
  zr.ignore_index = ignore_index;
  return geopref::reference::token_logps_grad(zr, r.lse.data(), g, r.grad_logits.data(), V, e);
}

}  // namespace geopref::support
