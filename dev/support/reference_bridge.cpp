// dev/support/reference_bridge.cpp — see reference_bridge.hpp.
#include "reference_bridge.hpp"

#include "bridge_outputs.hpp"
#include "geopref/reference/reference.hpp"

namespace geopref::support {
namespace {

template <class Logit>
geopref::status run_typed(const ref_problem& p, const geopref::options& opt, bool with_grad,
                          ref_result& r) {
  namespace ref = geopref::reference;
  ref::inputs<Logit, int64_t, int64_t> in;
  static_cast<ref::sequence_rows<int64_t, int64_t>&>(in) = p;
  static_cast<ref::pair_set&>(in) = p;
  in.logits = static_cast<const Logit*>(p.logits);
  in.ld = p.ld;

  const auto n = static_cast<size_t>(p.n_rows);
  geopref::reference::outputs out;
  point_outputs(p.n_rows, p.n_seqs, p.n_pairs, &r, &out);
  r.grad_logits.assign(with_grad ? n * static_cast<size_t>(p.vocab) : 0, 0.0);
  if (with_grad && n > 0) {
    out.grad_logits = r.grad_logits.data();
    out.grad_ld = p.vocab;
  }
  return keep_totals(
      run_problem_loss(
          p.user_loss_beta, [&](const auto& loss) { return ref::compute_with_loss(in, opt, loss, out); },
          [&] { return ref::compute(in, opt, out); }),
      out, r);
}

}  // namespace

geopref::status run_reference(const ref_problem& in, const geopref::options& opt, bool with_grad,
                              ref_result& out) {
  switch (in.dtype) {
    case ref_dtype::f32: return run_typed<float>(in, opt, with_grad, out);
    case ref_dtype::f16: return run_typed<Eigen::half>(in, opt, with_grad, out);
    case ref_dtype::bf16: return run_typed<Eigen::bfloat16>(in, opt, with_grad, out);
  }
  return geopref::status::unsupported_dtype;
}

geopref::status run_pair_step(const ref_problem& p, const geopref::options& opt,
                              const std::vector<double>& seq_sums,
                              const std::vector<int64_t>& seq_counts, ref_result& r) {
  namespace ref = geopref::reference;
  ref::pair_inputs in;
  static_cast<ref::pair_set&>(in) = p;
  in.n_seqs = p.n_seqs;
  in.seq_sums = seq_sums.data();
  in.seq_counts = seq_counts.data();
  ref::pair_outputs out;
  out.pair_losses = zeroed(r.pair_losses, static_cast<size_t>(p.n_pairs));
  out.margins = zeroed(r.margins, static_cast<size_t>(p.n_pairs));
  out.grad_seq_sums = zeroed(r.grad_seq_logps, static_cast<size_t>(p.n_seqs));
  return keep_totals(
      run_problem_loss(
          p.user_loss_beta, [&](const auto& loss) { return ref::pair_step_with_loss(in, opt, loss, out); },
          [&] { return ref::pair_step(in, opt, out); }),
      out, r);
}

namespace {
template <class Logit>
geopref::status run_token_typed(const ref_problem& p, int64_t ignore, const double* g,
                                const double* e, token_ref_result& r) {
  geopref::reference::token_rows<Logit, int64_t> in;
  static_cast<geopref::reference::vocab_rows<int64_t>&>(in) = p;
  in.logits = static_cast<const Logit*>(p.logits);
  in.ld = p.ld;
  in.ignore_index = ignore;
  geopref::reference::token_outputs out;
  point_token_outputs(p.n_rows, &r, &out);
  const auto n = static_cast<size_t>(p.n_rows);
  out.log_sum_sq_probs = zeroed(r.log_sum_sq_probs, n);
  out.mean_logits = zeroed(r.mean_logits, n);
  out.is_top1 = zeroed(r.is_top1, n);
  geopref::status st = geopref::reference::token_logps(in, out);
  if (st != geopref::status::success || g == nullptr) return st;
  r.grad_logits.assign(static_cast<size_t>(p.n_rows) * static_cast<size_t>(p.vocab), 0.0);
  return geopref::reference::token_logps_grad(in, r.lse.data(), g, r.grad_logits.data(), p.vocab,
                                              e);
}
}  // namespace

geopref::status run_token_reference(const ref_problem& in, int64_t ignore,
                                    const double* grad_token_logps, token_ref_result& out,
                                    const double* grad_entropy) {
  const double* g = grad_token_logps;
  const double* e = grad_entropy;
  switch (in.dtype) {
    case ref_dtype::f32: return run_token_typed<float>(in, ignore, g, e, out);
    case ref_dtype::f16: return run_token_typed<Eigen::half>(in, ignore, g, e, out);
    case ref_dtype::bf16: return run_token_typed<Eigen::bfloat16>(in, ignore, g, e, out);
  }
  return geopref::status::unsupported_dtype;
}

}  // namespace geopref::support
