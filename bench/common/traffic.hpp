// bench/common/traffic.hpp — bytes moved per method and phase, the numerator
// of every GB/s the benches report (docs/benchmarks.md explains the model).
//
// Only traffic to and from main memory is counted; each term is a whole
// buffer read or written once. N·V terms dominate; the O(N) terms (labels,
// lse, per-token log-probs) are included so small shapes are not flattered.
#pragma once

#include <cstdint>

#include "common/synthetic.hpp"

namespace geopref::bench {

struct element_sizes {
  double logit = 4;  // bytes of one logit (2 for bf16/fp16, 4 for fp32)
  double grad = 4;   // bytes of one gradient element as written
  double label = 4;  // bytes of one label
};

inline double nv(const shape& s) { return static_cast<double>(s.elements()); }
inline double n(const shape& s) { return static_cast<double>(s.rows); }

/// Fused forward, the floor: read Z once; read labels; write lse_t and ℓ_t (fp32).
inline double fused_forward_bytes(const shape& s, const element_sizes& e) {
  return nv(s) * e.logit + n(s) * (e.label + 8.0);
}

/// Fused backward, the floor: read Z once and write grad_Z once; read labels,
/// lse_t and the row's sequence coefficient.
inline double fused_backward_bytes(const shape& s, const element_sizes& e) {
  return nv(s) * (e.logit + e.grad) + n(s) * (e.label + 8.0);
}

/// Fused training step: forward, the O(S) pair loss (not counted), backward.
inline double fused_step_bytes(const shape& s, const element_sizes& e) {
  return fused_forward_bytes(s, e) + fused_backward_bytes(s, e);
}

/// Naive forward, op by op with an fp32 log-softmax materialised:
///   row max           read Z
///   log-softmax       read Z (sum of exp), read Z again, write LP [N, V] fp32
///   gather + mask     read labels, read N elements of LP, write ℓ [N]
///   masked sum, loss  O(N) and O(S)
inline double naive_forward_bytes(const shape& s, const element_sizes& e) {
  return nv(s) * (3.0 * e.logit + 4.0) + n(s) * (e.label + 4.0 + 4.0 + 4.0);
}

/// Naive backward, as autograd runs it:
///   gather backward       write dLP = 0 [N, V] fp32, then scatter g_s at the labels
///   log-softmax backward  read dLP (row sums), read dLP and LP, write grad_Z
inline double naive_backward_bytes(const shape& s, const element_sizes& e) {
  return nv(s) * (4.0 + 3.0 * 4.0 + e.grad) + n(s) * (e.label + 4.0 + 4.0);
}

inline double naive_step_bytes(const shape& s, const element_sizes& e) {
  return naive_forward_bytes(s, e) + naive_backward_bytes(s, e);
}

/// Device (or host) memory the naive formulation needs beyond the inputs and
/// the gradient: LP and dLP, both [N, V] fp32, plus O(N) vectors.
inline double naive_extra_bytes(const shape& s) {
  return nv(s) * 8.0 + n(s) * 4.0 * 3.0 + static_cast<double>(s.seqs()) * 8.0 * 3.0;
}

}  // namespace geopref::bench
