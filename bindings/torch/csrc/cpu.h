// bindings/torch/csrc/cpu.h — what the CPU kernels of the geopref torch
// operators (ops.cpp, ops_linear.cpp, ops_vocab.cpp) share: the dispatch
// from a tensor's dtype to the CPU reference's element type, the metrics as
// a tensor, and the token inputs of the reference.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <Eigen/Core>

#include <vector>

#include "common.h"
#include "geopref/options.hpp"
#include "geopref/reference/reference.hpp"

namespace geopref_torch {

template <class T>
struct type_tag {
  using type = T;
};

// The reference reads half and bfloat16 as Eigen's types: the same 16 bits.
static_assert(sizeof(Eigen::half) == sizeof(at::Half));
static_assert(sizeof(Eigen::bfloat16) == sizeof(at::BFloat16));

/// Calls fn(type_tag<Elem>{}) with the reference's element type for the
/// dtype of `x` (`what` names it in the error).
template <class Fn>
auto visit_float(const Tensor& x, const char* what, const char* op, Fn&& fn) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "geopref.", op, ": ", what,
                   " must be float32, float64, float16 or bfloat16, got ", t);
  switch (t) {
    case at::kFloat: return fn(type_tag<float>{});
    case at::kDouble: return fn(type_tag<double>{});
    case at::kHalf: return fn(type_tag<Eigen::half>{});
    default: return fn(type_tag<Eigen::bfloat16>{});
  }
}

/// metrics [7] float64, in the order of geopref::metrics (TRL's names).
inline Tensor metrics_tensor(const geopref::metrics& m, const Tensor& like) {
  const std::vector<double> v{m.rewards_chosen,  m.rewards_rejected, m.rewards_accuracies,
                              m.rewards_margins, m.logps_chosen,     m.logps_rejected,
                              m.calibration_error};
  return at::tensor(v, like.options().dtype(at::kDouble));
}

/// metric_sums [8] float64, in the order of geopref::metric_sums (the
/// metrics' sums over this call's pairs, then P): what a data-parallel caller
/// all-reduces before metrics_from_sums.
inline Tensor metric_sums_tensor(const geopref::metric_sums& m, const Tensor& like) {
  static_assert(sizeof(geopref::metric_sums) == METRIC_SUMS * sizeof(double));
  const std::vector<double> v{m.rewards_chosen,  m.rewards_rejected, m.rewards_accuracies,
                              m.rewards_margins, m.logps_chosen,     m.logps_rejected,
                              m.calibration_error, m.pairs};
  return at::tensor(v, like.options().dtype(at::kDouble));
}

/// The optional token weights [N] in double (undefined: all 1).
inline Tensor cpu_token_weights(const c10::optional<Tensor>& tw, const Tensor& like, int64_t n,
                                const char* op) {
  return optional_vector(tw, n, like, at::kDouble, "token_weights", op);
}

/// The reference's token inputs over CPU tensors (the logits path's
/// operators, ops.cpp and ops_vocab.cpp): labels and offsets as int64
/// (converted once here, so the reference is instantiated for 4 logit types
/// rather than 16 type combinations).
struct cpu_tokens {
  Tensor logits, labels, offsets;  // keep the converted tensors alive
  geopref::logit_transform transform;
  cpu_tokens(const Tensor& z, const Tensor& y, const Tensor& off,
             c10::ArrayRef<double> logit_transform, const char* op)
      : logits(check_tokens(z, y, off, op)),
        labels(y.to(at::kLong).contiguous()),
        offsets(off.to(at::kLong).contiguous()),
        transform(to_logit_transform(logit_transform, op)) {}

  template <class Logit>
  geopref::reference::inputs<Logit, int64_t, int64_t> inputs() const {
    geopref::reference::inputs<Logit, int64_t, int64_t> in;
    in.logits = static_cast<const Logit*>(logits.data_ptr());
    in.n_rows = logits.size(0);
    in.vocab = logits.size(1);
    in.ld = row_stride(logits);
    in.logit_transform = transform;
    in.labels = labels.data_ptr<int64_t>();
    in.offsets = offsets.data_ptr<int64_t>();
    in.n_seqs = offsets.size(0) - 1;
    return in;
  }
};

}  // namespace geopref_torch
