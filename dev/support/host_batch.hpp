// dev/support/host_batch.hpp — one batch as host buffers, in the types
// geopref::cuda reads, and how a GPU run of it ended: the plain C++ side of
// device_step.cuh, so a caller compiled without nvcc (the examples' main.cpp,
// which uses the Eigen-based reference) can hand a batch to a .cu file.
#pragma once

#include <cstdint>

namespace geopref::support {

/// Pairs in TRL's layout: pair i = (sequence i, sequence P + i).
struct host_batch {
  const float* logits = nullptr;  // [N, V]
  int64_t n_rows = 0, vocab = 0;
  const int32_t* labels = nullptr;   // [N]
  const int32_t* offsets = nullptr;  // [S + 1]
  int64_t n_seqs = 0, n_pairs = 0;
  const float* soft_labels = nullptr;  // [P]
  const float* ref_logps = nullptr;    // [S] or null
};

enum class step_outcome { ok, no_device, failed };

}  // namespace geopref::support
