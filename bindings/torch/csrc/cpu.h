// bindings/torch/csrc/cpu.h — what the CPU kernels of the geopref torch
// operators (ops.cpp, ops_linear.cpp) share: the dispatch from a tensor's
// dtype to the CPU reference's element type, and the metrics as a tensor.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <Eigen/Core>

#include <vector>

#include "common.h"
#include "geopref/options.hpp"

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
inline const double* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<double>() : nullptr;
}

/// pref_loss's tensors as the reference takes them (float inputs in double):
/// the per-pair ones and the per-token weights.
struct cpu_pairs {
  Tensor pairs, soft, ref_logps, weights, token_weights;
  int64_t n_pairs;
  cpu_pairs(const Tensor& logits, int64_t n_seqs, const c10::optional<Tensor>& p,
            const c10::optional<Tensor>& s, const c10::optional<Tensor>& r,
            const c10::optional<Tensor>& w, const c10::optional<Tensor>& tw, const char* op)
      : pairs(optional_pairs(p, logits, op)),
        n_pairs(pair_count(pairs, n_seqs)) {
    soft = optional_vector(s, n_pairs, logits, at::kDouble, "soft_labels", op);
    ref_logps = optional_vector(r, n_seqs, logits, at::kDouble, "ref_logps", op);
    weights = optional_vector(w, n_pairs, logits, at::kDouble, "weights", op);
    token_weights = cpu_token_weights(tw, logits, logits.size(0), op);
  }

  template <class In>
  void fill(In& in) const {
    in.n_pairs = n_pairs;
    in.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
    in.soft_labels = data_or_null(soft);
    in.ref_logps = data_or_null(ref_logps);
    in.weights = data_or_null(weights);
    in.token_weights = data_or_null(token_weights);
  }
};

}  // namespace geopref_torch
