// bench/gpu/reference_glue.hpp — the CPU reference behind a plain C++
// interface, so the .cu checks never include Eigen (nvcc is noisy with it).
#pragma once

#include <cstdint>

namespace geopref::bench {

/// The bench problem on the host: default pairing (i, P + i), gdpo loss,
/// mean reduction. logits are float, or bf16 bit patterns when is_bf16.
struct glue_problem {
  const void* logits = nullptr;  // [N, V] row-major
  bool is_bf16 = false;
  int64_t n_rows = 0, vocab = 0;
  const int64_t* labels = nullptr;   // [N]
  const int64_t* offsets = nullptr;  // [S + 1]
  int64_t n_seqs = 0, n_pairs = 0;
  const double* soft_labels = nullptr;  // [P]
  const double* ref_logps = nullptr;    // [S]
  double beta = 0.1;
};

/// Runs geopref::reference::compute. Writes loss, seq_logps [S] and
/// grad [N, V]. Returns the geopref::status as an int (0 = success).
int reference_gdpo_step(const glue_problem& pb, double* loss, double* seq_logps, double* grad);

}  // namespace geopref::bench
