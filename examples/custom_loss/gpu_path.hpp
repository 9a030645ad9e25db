// examples/custom_loss/gpu_path.hpp — the GPU side behind a plain C++
// interface, so main.cpp (which uses the Eigen-based reference) never goes
// through nvcc. Defined in gpu_path.cu: compiled by nvcc for a GPU, or by the
// C++ compiler against the project's host emulator (custom_loss_emu).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "geopref/options.hpp"
#include "my_loss.hpp"

namespace custom_loss {

struct batch {
  const float* logits = nullptr;  // [N, V]
  int64_t n_rows = 0, vocab = 0;
  const int32_t* labels = nullptr;   // [N]
  const int32_t* offsets = nullptr;  // [S + 1]
  int64_t n_seqs = 0, n_pairs = 0;   // TRL's layout: pair i = (i, P + i)
  const float* soft_labels = nullptr;  // [P]
  const float* ref_logps = nullptr;    // [S]
};

enum class outcome { ok, no_device, failed };

/// geopref::cuda::train_step<squared_softplus_loss> on device 0: the loss
/// and grad_logits [N, V] in float.
outcome gpu_step(const batch& b, const geopref::options& opt, const squared_softplus_loss& loss,
                 double& value, std::vector<float>& grad, std::string& why);

}  // namespace custom_loss
