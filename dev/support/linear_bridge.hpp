// dev/support/linear_bridge.hpp — the CPU reference of the fused-linear path
// (geopref/reference/fused_linear.hpp) behind a plain C++ interface, so .cu
// tests never include Eigen. Implemented in linear_bridge.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/blocks.hpp"
#include "geopref/status.hpp"
#include "reference_bridge.hpp"

namespace geopref::support {

/// Host copies of one problem, the inputs as the double values of the
/// (rounded) elements the GPU reads: the reference's blocks as they are
/// (hidden [N, Hd], weight [V, Hd], bias [V] or null; ld 0).
struct linear_ref_problem : geopref::reference::linear_source<double>,
                            geopref::reference::sequence_rows<int64_t, int64_t>,
                            geopref::reference::pair_set {
  double user_loss_beta = 0.0;  // > 0: user_loss.hpp's log_cosh_loss replaces every margin term
};

struct linear_ref_result {
  ref_result base;                  // compute()'s outputs on Z = H·Wᵀ + b; grad_logits = G [N, V]
  std::vector<double> logits;       // [N, V] Z in double (before the logit transform)
  std::vector<double> grad_hidden;  // [N, Hd]
  std::vector<double> grad_weight;  // [V, Hd]
  std::vector<double> grad_bias;    // [V] (with a bias)
};

/// The per-token primitive from hidden states (reference::linear_token_logps,
/// then linear_token_logps_grad with g [N], optionally the entropy's upstream
/// e [N], and the reference's own lse), on the fields hidden, weight, bias,
/// sizes and labels of `in`.
struct linear_token_ref_result {
  std::vector<double> logits;                    // [N, V] Z in double
  std::vector<double> token_logps, lse, entropy;  // [N]
  std::vector<double> grad_logits;               // [N, V] G
  std::vector<double> grad_hidden, grad_weight, grad_bias;  // [N, Hd], [V, Hd], [V] (with a bias)
};

geopref::status run_linear_token_reference(const linear_ref_problem& in, int64_t ignore_index,
                                           const double* grad_token_logps,
                                           linear_token_ref_result& out,
                                           const double* grad_entropy = nullptr);

geopref::status run_linear_reference(const linear_ref_problem& in, const geopref::options& opt,
                                     linear_ref_result& out);

}  // namespace geopref::support
