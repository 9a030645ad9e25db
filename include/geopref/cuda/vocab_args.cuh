// geopref/cuda/vocab_args.cuh — the types of the vocab-parallel path
// (geopref/cuda/vocab_parallel.cuh documents the calls).
#pragma once

#include <cstdint>

#include "geopref/cuda/args.cuh"

namespace geopref::cuda {

/// One row's statistics of one rank's slice (16 bytes, the exchange unit).
/// m and s are the kernels' online log-sum-exp state in base 2 (arith.cuh):
/// m an integer >= max z·log₂e over the slice, s = Σ 2^(z·log₂e − m), so
/// the slice's log-sum-exp is (m + log₂ s)·ln 2. label is z[t, y_t] when y_t
/// lies in the slice, else 0. tag = 2·rank + (1 if the slice owns y_t).
/// An unscored row's record is the empty state (s = 0) with its tag.
struct vocab_record {
  float m;
  float s;
  float label;
  int32_t tag;
};
static_assert(sizeof(vocab_record) == 16, "the exchanged record is 16 bytes");

/// Where this rank's slice lies in the vocabulary.
struct vocab_slice {
  int64_t begin = 0;  // first global column of the slice; 0 <= begin, begin + V_r <= total
  int64_t total = 0;  // V of the whole vocabulary: labels are validated against it
  int rank = 0;       // 0 <= rank < n_ranks; records are combined in rank order
  int n_ranks = 1;    // K
};

/// Even split of V columns over K ranks, the last rank taking the rest
/// (geopref-check --vocab-shards): rank r owns [r·⌊V/K⌋, (r+1)·⌊V/K⌋), the
/// last one up to V. Any tiling of [0, V) in rank order works as well.
inline vocab_slice even_slice(int64_t total, int rank, int n_ranks, int64_t* width) noexcept {
  const int64_t per = n_ranks > 0 ? total / n_ranks : 0;
  vocab_slice s;
  s.begin = per * rank;
  s.total = total;
  s.rank = rank;
  s.n_ranks = n_ranks;
  if (width != nullptr) *width = rank == n_ranks - 1 ? total - s.begin : per;
  return s;
}

/// Block *shard*: where this rank's slice lies, and every rank's records
/// gathered [n_ranks, N] (slots in any order): what the combining entries read.
struct vocab_shard {
  vocab_slice slice;
  const vocab_record* records = nullptr;  // [n_ranks, N]
};

/// Arguments of vocab_parallel_stats. tokens.logits is the rank's slice
/// [N, ld] with tokens.vocab = V_r (its width, >= 1 when N > 0); labels and
/// offsets are the global ones (the same on every rank). No token weights:
/// a record holds no sequence sum.
struct vocab_stats_args {
  scored_logits tokens;
  vocab_slice slice;
  vocab_record* records = nullptr;  // [N] out: this rank's records (e.g. its own slot of the
                                    // gather buffer, for an in-place all-gather)
};

/// Arguments of vocab_parallel_train_step: train_args over the rank's slice
/// (tokens as in vocab_stats_args; grad_logits, when set, is the rank's
/// slice of the gradient, [N, grad_ld] with V_r columns written), plus the
/// shard. Every output but the gradient is the full, combined one and
/// bitwise the same on every rank.
struct vocab_train_args : vocab_shard {
  train_args train;
};

/// Arguments of vocab_parallel_logps (forward only, e.g. the reference
/// model): the combine of the gathered records needs no logits, so `tokens`
/// is the rows, their sequences and token weights alone, with tokens.vocab =
/// V_r (the rank's width, as in vocab_stats_args); logps_outputs as
/// sequence_logps' (seq_logps required).
struct vocab_logps_args : logps_outputs, vocab_shard {
  sequence_rows tokens;
};

}  // namespace geopref::cuda
