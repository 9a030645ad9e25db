// examples/grpo/gpu_path.hpp — the GPU side behind a plain C++ interface, so
// main.cpp (which uses the Eigen-based reference) never goes through nvcc.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "host_batch.hpp"  // step_outcome

namespace grpo {

using outcome = geopref::support::step_outcome;

/// The caller's loss on top of the primitive: from the token log-probs [N]
/// to the loss and g_t = ∂loss/∂ℓ_t [N].
using token_loss = std::function<double(const std::vector<double>& logps, std::vector<double>& g)>;

/// On device 0: geopref::cuda::token_logps over float logits [N, V] and
/// int32 labels, the caller's loss on the host from the downloaded ℓ_t, then
/// token_logps_grad with its g_t: the loss and grad_logits [N, V] in float.
outcome gpu_step(const std::vector<float>& logits, int64_t n_rows, int64_t vocab,
                 const std::vector<int32_t>& labels, const token_loss& loss, double& value,
                 std::vector<float>& grad, std::string& why);

}  // namespace grpo
