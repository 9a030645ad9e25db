// geopref/cuda/vocab_linear.cuh — the fused-linear path with the output
// projection sharded by vocabulary (tensor parallelism): rank r holds the
// rows [begin, begin + V_r) of W (and of the bias) and the same hidden
// states H [N, Hd] as every other rank. The logits exist only one chunk of
// one slice at a time; nothing of size N·V is ever formed or exchanged.
//
//   1. vocab_linear_stats   pass 1 over the rank's slice, chunk by chunk:
//                           Z_c = H_c·W_rᵀ (+ b_r), the slice's 16-byte
//                           vocab_record per row → records [N]
//   2. (the caller)         all-gathers the records of the K ranks into
//                           [K, N]: the same records and the same exchange as
//                           the logits path (geopref/nccl.cuh's
//                           gather_records, torch.distributed)
//   3. vocab_linear_step    combine in rank order (as vocab_parallel_train_step),
//                           the pair step, then pass 2 over the slice: Z_c
//                           again, the slice backward in place (G_c),
//                           grad_W_r (+)= G_cᵀ·H_c, grad_b_r (+)= Σ_rows G_c,
//                           grad_H partial = G_c·W_r
//   4. (the caller)         sums the K partials of grad_H (an all-reduce);
//                           grad_W_r and grad_b_r are the rank's own, complete.
//
// grad_hidden is a partial: this rank's G_r·W_r, which is what the backward
// of a column-parallel linear layer leaves for its all-reduce (Megatron's
// "copy to tensor-parallel region"). Summing the K partials is the caller's
// collective's business, and so is the determinism of that sum: NCCL's
// all-reduce gives the same bits run after run for a fixed communicator and
// size, but is free to sum in another order on another topology. A caller
// that needs the sum in rank order all-gathers the partials ([K, N, Hd],
// K× the bytes) and adds them in slot order of rank, or reduces to one
// rank in a fixed tree.
//
// Everything else follows geopref/cuda/fused_linear.cuh (chunk budget in
// linear_inputs::chunk_bytes, the cuBLAS handle, accumulate vs overwrite,
// dtypes) and geopref/cuda/vocab_parallel.cuh (vocab_slice, the gathered
// records in any slot order, invalid_vocab_records): in both calls `in`
// describes the rank's slice (in.weight = W_r, in.bias = b_r, in.vocab =
// V_r) and the global labels; labels are validated against slice.total.
// The outputs other than the three gradients (loss, metrics, log-probs,
// grad_seq_logps) are the full combined ones, bitwise the same on every
// rank and whatever slot each rank's records landed in.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "geopref/cuda/fused_linear.cuh"  // scored_linear, linear_step_args
#include "geopref/cuda/vocab_args.cuh"    // vocab_record, vocab_slice

namespace geopref::cuda {

/// Arguments of vocab_linear_stats: the rank's slice of the projection (no
/// token weights: a record holds no sequence sum) and where it lies;
/// records [N] out (e.g. the rank's slot of the gather buffer).
struct vocab_linear_stats_args {
  scored_linear in;
  vocab_slice slice;
  vocab_record* records = nullptr;  // [N] out
};

/// Arguments of vocab_linear_step: linear_step_args over the rank's slice
/// (grad_weight [V_r, ·] and grad_bias [V_r] its own slices; grad_hidden
/// [N, ·] this rank's partial, always overwritten), plus the shard. No host
/// copies of the layout: the step always runs two passes.
struct vocab_linear_train_args : vocab_shard {
  linear_step_args train;
};

/// Step 1: pass 1 over the rank's slice → its records. The workspace query
/// takes the chunk budget (in.chunk_bytes, rows of V_r logits).
inline status vocab_linear_stats(void* workspace, size_t& workspace_bytes,
                                 const vocab_linear_stats_args& args, const options& opt,
                                 cudaStream_t stream = nullptr) noexcept;

/// Step 3: combine, pair step and pass 2 over the rank's slice.
inline status vocab_linear_step(void* workspace, size_t& workspace_bytes,
                                const vocab_linear_train_args& args, const options& opt,
                                cudaStream_t stream = nullptr) noexcept;

/// The same with a caller's margin loss (see train_step<Loss>).
template <class Loss, class = std::enable_if_t<is_margin_loss_v<Loss>>>
inline status vocab_linear_step(void* workspace, size_t& workspace_bytes,
                                const vocab_linear_train_args& args, const options& opt,
                                const Loss& loss, cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/detail/vocab_linear.cuh"
