// examples/quickstart/gpu_path.hpp — the quickstart's GPU column, behind a
// plain C++ interface so main.cpp (which uses the Eigen-based reference)
// never goes through nvcc. Defined in gpu_path.cu, built when CUDA is found.
#pragma once

#include <string>
#include <vector>

#include "geopref/options.hpp"
#include "host_batch.hpp"

namespace quickstart {

using gpu_batch = geopref::support::host_batch;
using gpu_outcome = geopref::support::step_outcome;

/// Runs geopref::cuda::train_step on device 0: the loss and grad_logits
/// [N, V] in float. On no_device or failed, `why` says what happened.
gpu_outcome gpu_train_step(const gpu_batch& b, const geopref::options& opt, double& loss,
                           std::vector<float>& grad_logits, std::string& why);

}  // namespace quickstart
