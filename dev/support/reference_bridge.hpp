// dev/support/reference_bridge.hpp — the CPU reference behind a plain C++
// interface, so that the .cu tests never include Eigen (nvcc is noisy with
// it). Implemented in reference_bridge.cpp, compiled by the C++ compiler.
#pragma once

#include <cstdint>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/blocks.hpp"
#include "geopref/status.hpp"

namespace geopref::support {

enum class ref_dtype { f32, f16, bf16 };

/// Host copies of one problem: the reference's blocks (its rows, sequences,
/// token weights and pairs as they are), the logits as untyped host memory.
/// Half and bfloat16 logits are raw bits, read by the reference as
/// Eigen::half / Eigen::bfloat16: exactly what the GPU reads.
struct ref_problem : geopref::reference::sequence_rows<int64_t, int64_t>,
                     geopref::reference::pair_set {
  ref_dtype dtype = ref_dtype::f32;
  const void* logits = nullptr;  // [N, ld]
  int64_t ld = 0;
  double user_loss_beta = 0.0;  // > 0: user_loss.hpp's log_cosh_loss replaces every margin term
};

struct ref_result {
  std::vector<double> token_logps, lse;  // [N]
  std::vector<double> seq_logps;         // [S]
  std::vector<int64_t> seq_counts;       // [S]
  std::vector<double> pair_losses, margins;  // [P]
  std::vector<double> grad_seq_logps;    // [S]
  std::vector<double> grad_logits;       // [N, V] when requested
  double loss = 0;
  geopref::metrics stats{};
};

/// Runs geopref::reference::compute; grad_logits only when `with_grad`.
geopref::status run_reference(const ref_problem& in, const geopref::options& opt, bool with_grad,
                              ref_result& out);

/// The pair step alone (geopref::reference::pair_step) from per-sequence
/// sums and counts; out gets loss, pair_losses, grad_seq_logps (w.r.t. the
/// sums) and stats.
geopref::status run_pair_step(const ref_problem& in, const geopref::options& opt,
                              const std::vector<double>& seq_sums,
                              const std::vector<int64_t>& seq_counts, ref_result& out);

/// The per-token primitive (geopref::reference::token_logps and, when
/// `grad_token_logps` is given, token_logps_grad with that g [N]) over the
/// problem's logits and labels, ignore_index `ignore`; offsets, pairs and the
/// rest are not read. token_logps, lse, entropy [N]; grad_logits [N, V].
struct token_ref_result {
  std::vector<double> token_logps, lse, entropy, grad_logits;
  std::vector<double> log_sum_sq_probs, mean_logits;  // the per-token statistics
  std::vector<uint8_t> is_top1;
};
/// reference::token_logps (every output, statistics included), then with
/// grad_token_logps token_logps_grad, with the entropy's upstream when
/// grad_entropy is given.
geopref::status run_token_reference(const ref_problem& in, int64_t ignore,
                                    const double* grad_token_logps, token_ref_result& out,
                                    const double* grad_entropy = nullptr);

}  // namespace geopref::support
