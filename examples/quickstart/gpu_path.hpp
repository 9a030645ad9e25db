// examples/quickstart/gpu_path.hpp — the quickstart's GPU column, behind a
// plain C++ interface so main.cpp (which uses the Eigen-based reference)
// never goes through nvcc. Defined in gpu_path.cu, built when CUDA is found.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "geopref/options.hpp"

namespace quickstart {

/// One batch as host buffers; soft labels and reference log-probs as float,
/// the types geopref::cuda reads.
struct gpu_batch {
  const float* logits = nullptr;  // [N, V]
  int64_t n_rows = 0, vocab = 0;
  const int32_t* labels = nullptr;   // [N]
  const int32_t* offsets = nullptr;  // [S + 1]
  int64_t n_seqs = 0, n_pairs = 0;
  const float* soft_labels = nullptr;  // [P]
  const float* ref_logps = nullptr;    // [S] or null
};

enum class gpu_outcome { ok, no_device, failed };

/// Runs geopref::cuda::train_step on device 0: the loss and grad_logits
/// [N, V] in float. On no_device or failed, `why` says what happened.
gpu_outcome gpu_train_step(const gpu_batch& b, const geopref::options& opt, double& loss,
                           std::vector<float>& grad_logits, std::string& why);

}  // namespace quickstart
