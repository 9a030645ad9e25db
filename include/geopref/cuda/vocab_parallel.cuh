// geopref/cuda/vocab_parallel.cuh — the vocab-parallel path: each rank holds
// the columns [begin, begin + V_r) of every token row (tensor parallelism of
// the output projection) and the N × V logits are never gathered.
//
//   1. vocab_parallel_stats   local forward over the rank's slice: per row a
//                             16-byte vocab_record (slice max, slice sum-exp,
//                             the label's logit when the slice owns it, the
//                             rank) → records [N]
//   2. (the caller)           all-gathers the records of the K ranks into
//                             [K, N] (NCCL, torch.distributed, ...): 16·N·K
//                             bytes per rank, no N·V traffic
//   3. vocab_parallel_train_step
//                             combine in rank order (lse, ℓ_t), sequence sums,
//                             pair losses and coefficients — bitwise the same
//                             on every rank, whatever slot each rank's records
//                             landed in — then the local backward into the
//                             rank's slice of the gradient
//      vocab_parallel_logps   the same combine for a forward-only pass (the
//                             reference model)
//
// docs/distributed.md has the mathematics, the bytes exchanged and how to
// call it from NCCL (geopref/nccl.cuh) and torch.distributed. Everything else
// follows geopref/cuda/geopref.cuh: two-phase workspace, stream last, status
// return, device-side problems in the workspace flag (device_status).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/geopref.cuh"
#include "geopref/cuda/vocab_args.cuh"  // vocab_record, vocab_slice, the argument structs

namespace geopref::cuda {

/// Step 1: the rank's records. Validates every label against slice.total
/// (label_out_of_range) and the slice (invalid_vocab_records on the host).
inline status vocab_parallel_stats(void* workspace, size_t& workspace_bytes,
                                   const vocab_stats_args& args, const options& opt,
                                   cudaStream_t stream = nullptr) noexcept;

/// Step 3: combine, pair step and the local backward. A gathered buffer
/// where a rank's records are missing or repeated, or a scored label is
/// owned by no slice or by two, is a device-side invalid_vocab_records.
inline status vocab_parallel_train_step(void* workspace, size_t& workspace_bytes,
                                        const vocab_train_args& args, const options& opt,
                                        cudaStream_t stream = nullptr) noexcept;

/// The same with a caller's margin loss (see train_step<Loss>).
template <class Loss, class = std::enable_if_t<is_margin_loss_v<Loss>>>
inline status vocab_parallel_train_step(void* workspace, size_t& workspace_bytes,
                                        const vocab_train_args& args, const options& opt,
                                        const Loss& loss, cudaStream_t stream = nullptr) noexcept;

/// Step 3 without a pair step: per-sequence log-probs (sequence_logps).
inline status vocab_parallel_logps(void* workspace, size_t& workspace_bytes,
                                   const vocab_logps_args& args, const options& opt,
                                   cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/detail/vocab_parallel.cuh"
