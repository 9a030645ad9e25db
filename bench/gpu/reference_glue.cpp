// bench/gpu/reference_glue.cpp — see reference_glue.hpp.
#include "gpu/reference_glue.hpp"

#include <Eigen/Core>

#include "geopref/reference/reference.hpp"

namespace geopref::bench {

namespace {

template <class Logit>
int run(const glue_problem& pb, const Logit* logits, double* loss, double* seq_logps,
        double* grad) {
  reference::inputs<Logit, int64_t, int64_t> in;
  in.logits = logits;
  in.n_rows = pb.n_rows;
  in.vocab = pb.vocab;
  in.ld = pb.vocab;
  in.labels = pb.labels;
  in.offsets = pb.offsets;
  in.n_seqs = pb.n_seqs;
  in.n_pairs = pb.n_pairs;
  in.soft_labels = pb.soft_labels;
  in.ref_logps = pb.ref_logps;
  options opt;
  opt.loss.type = loss_type::gdpo;
  opt.loss.beta = pb.beta;
  reference::outputs out;
  out.seq_logps = seq_logps;
  out.grad_logits = grad;
  const status s = reference::compute(in, opt, out);
  *loss = out.loss;
  return static_cast<int>(s);
}

}  // namespace

int reference_gdpo_step(const glue_problem& pb, double* loss, double* seq_logps, double* grad) {
  if (pb.is_bf16)  // Eigen::bfloat16 is the same 16 bits the device holds
    return run(pb, static_cast<const Eigen::bfloat16*>(pb.logits), loss, seq_logps, grad);
  return run(pb, static_cast<const float*>(pb.logits), loss, seq_logps, grad);
}

}  // namespace geopref::bench
