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

/// pref_loss's tensors as the reference takes them (float inputs in double).
struct cpu_pairs {
  Tensor pairs, soft, ref_logps, weights;
  int64_t n_pairs;
  cpu_pairs(const Tensor& logits, int64_t n_seqs, const c10::optional<Tensor>& p,
            const c10::optional<Tensor>& s, const c10::optional<Tensor>& r,
            const c10::optional<Tensor>& w, const char* op)
      : pairs(optional_pairs(p, logits, op)),
        n_pairs(pair_count(pairs, n_seqs)) {
    soft = optional_vector(s, n_pairs, logits, at::kDouble, "soft_labels", op);
    ref_logps = optional_vector(r, n_seqs, logits, at::kDouble, "ref_logps", op);
    weights = optional_vector(w, n_pairs, logits, at::kDouble, "weights", op);
  }

  template <class In>
  void fill(In& in) const {
    in.n_pairs = n_pairs;
    in.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
    in.soft_labels = soft.defined() ? soft.data_ptr<double>() : nullptr;
    in.ref_logps = ref_logps.defined() ? ref_logps.data_ptr<double>() : nullptr;
    in.weights = weights.defined() ? weights.data_ptr<double>() : nullptr;
  }
};

}  // namespace geopref_torch
