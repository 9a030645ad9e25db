// bench/gpu/problem.cuh — the synthetic problem (common/synthetic.hpp) on the
// device: logits and labels generated in place, so even 16 GB of logits cost
// one kernel and no host transfer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/synthetic.hpp"
#include "geopref/cuda/detail/device.cuh"

namespace geopref::bench {

/// labels [N]: synthetic_label.
template <class Label>
__global__ void fill_labels_kernel(Label* labels, int64_t n_rows, int64_t seq_len, int64_t vocab,
                                   uint64_t seed) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n_rows) labels[t] = static_cast<Label>(synthetic_label(seed, t, seq_len, vocab));
}

/// logits [N, V] row-major: synthetic_logit, grid-stride over all N·V elements.
template <class T>
__global__ void fill_logits_kernel(T* logits, int64_t n_rows, int64_t vocab, int64_t seq_len,
                                   uint64_t seed) {
  const int64_t total = n_rows * vocab;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += stride) {
    const int64_t t = k / vocab, v = k - t * vocab;
    const int64_t y = synthetic_label(seed, t, seq_len, vocab);
    logits[k] = geopref::cuda::detail::from_float<T>(synthetic_logit(seed, t, v, y));
  }
}

template <class T, class Label>
void fill_problem(T* logits, Label* labels, const shape& s, uint64_t seed, cudaStream_t stream) {
  if (s.rows == 0) return;
  fill_labels_kernel<Label><<<static_cast<unsigned>((s.rows + 255) / 256), 256, 0, stream>>>(
      labels, s.rows, s.seq_len, s.vocab, seed);
  fill_logits_kernel<T><<<4096, 256, 0, stream>>>(logits, s.rows, s.vocab, s.seq_len, seed);
}

/// Host side inputs: offsets [S + 1], soft labels [P] and reference log-probs
/// [S] as float (what the device gets) and the same values widened to double
/// (what the CPU reference gets), so both see identical numbers.
struct side_inputs {
  std::vector<int64_t> offsets;
  std::vector<float> soft, ref;
  std::vector<double> soft_d, ref_d;
  explicit side_inputs(const shape& s, uint64_t seed = DEFAULT_SEED) {
    for (int64_t q = 0; q <= s.seqs(); ++q) offsets.push_back(q * s.seq_len);
    for (int64_t i = 0; i < s.pairs(); ++i) {
      soft.push_back(static_cast<float>(synthetic_soft_label(seed, i)));
      soft_d.push_back(static_cast<double>(soft.back()));
    }
    for (int64_t q = 0; q < s.seqs(); ++q) {
      ref.push_back(static_cast<float>(synthetic_ref_logp(seed, q, s.scored_rows_per_seq(), s.vocab)));
      ref_d.push_back(static_cast<double>(ref.back()));
    }
  }
};

}  // namespace geopref::bench
