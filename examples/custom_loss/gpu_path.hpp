// examples/custom_loss/gpu_path.hpp — the GPU side behind a plain C++
// interface, so main.cpp (which uses the Eigen-based reference) never goes
// through nvcc. Defined in gpu_path.cu: compiled by nvcc for a GPU, or by the
// C++ compiler against the project's host emulator (custom_loss_emu).
#pragma once

#include <string>
#include <vector>

#include "geopref/options.hpp"
#include "host_batch.hpp"
#include "my_loss.hpp"

namespace custom_loss {

using batch = geopref::support::host_batch;  // TRL's layout: pair i = (i, P + i)
using outcome = geopref::support::step_outcome;

/// geopref::cuda::train_step<squared_softplus_loss> on device 0: the loss
/// and grad_logits [N, V] in float.
outcome gpu_step(const batch& b, const geopref::options& opt, const squared_softplus_loss& loss,
                 double& value, std::vector<float>& grad, std::string& why);

}  // namespace custom_loss
