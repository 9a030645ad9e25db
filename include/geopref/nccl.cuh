// geopref/nccl.cuh — the vocab-parallel step over an NCCL communicator: a
// thin layer on geopref/cuda/vocab_parallel.cuh whose only communication is
// one ncclAllGather of 16 bytes per row per rank on the caller's
// communicator and stream. Needs nccl.h and libnccl (link it yourself); the
// rest of the library does not.
//
//   geopref::nccl::train_step(ws, bytes, args, opt, comm, stream):
//     vocab_parallel_stats  → records + rank·N   (this rank's slot)
//     ncclAllGather         records + rank·N → records [K, N]   (in place)
//     vocab_parallel_train_step
//
//   geopref::nccl::linear_train_step(ws, bytes, args, opt, comm, stream):
//     the same for the fused-linear path with W sharded by vocabulary
//     (geopref/cuda/vocab_linear.cuh): vocab_linear_stats → ncclAllGather →
//     vocab_linear_step. grad_hidden comes back as this rank's partial: sum
//     it over the ranks yourself (ncclAllReduce, or in rank order; see
//     vocab_linear.cuh).
//
// The communicator's rank and size must be the slice's rank and n_ranks
// (checked: invalid_vocab_records). A rank that fails before the exchange
// still takes part in it (with records that make every rank's step report
// invalid_vocab_records), so a bad argument on one rank never hangs the rest. Everything is enqueued on `stream`; the
// call returns without waiting, like every entry of the library. An NCCL
// error is status::cuda_error with the NCCL result in *nccl_result.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/vocab_linear.cuh"
#include "geopref/cuda/vocab_parallel.cuh"

namespace geopref::nccl {

/// Arguments of train_step: this rank's train_args over its slice of the
/// logits (as cuda::vocab_train_args'), where the slice lies, and the gather
/// buffer the exchange fills.
struct train_args {
  cuda::train_args train;
  cuda::vocab_slice slice;
  cuda::vocab_record* records = nullptr;  // [K, N] device memory, not part of the workspace:
                                          // this rank's slot is written by the stats, the
                                          // others by the all-gather (in place)
};

/// Arguments of linear_train_step: this rank's linear_step_args over its
/// slice of the projection (as cuda::vocab_linear_train_args'), the slice and
/// the gather buffer.
struct linear_train_args {
  cuda::linear_step_args train;
  cuda::vocab_slice slice;
  cuda::vocab_record* records = nullptr;  // [K, N], as train_args::records
};

/// All-gathers every rank's records [N] into gathered [K, N] (rank r's at
/// r·N; `mine` may be gathered + rank·N, NCCL's in-place form).
inline status gather_records(const cuda::vocab_record* mine, cuda::vocab_record* gathered,
                             int64_t n_rows, ncclComm_t comm, cudaStream_t stream,
                             ncclResult_t* nccl_result = nullptr) noexcept {
  if (n_rows < 0) return status::invalid_shape;
  if (n_rows > 0 && (mine == nullptr || gathered == nullptr)) return status::null_pointer;
  if (n_rows == 0) return status::success;
  const auto bytes = static_cast<size_t>(n_rows) * sizeof(cuda::vocab_record);
  const ncclResult_t r = ncclAllGather(mine, gathered, bytes, ncclUint8, comm, stream);
  if (nccl_result != nullptr) *nccl_result = r;
  return r == ncclSuccess ? status::success : status::cuda_error;
}

namespace detail {

/// Fills this rank's slot of the gather buffer with records that belong to
/// no rank (every byte 0xff: tag −1), so every rank's combine finds this rank
/// missing and records invalid_vocab_records.
inline status poison_slot(cuda::vocab_record* slot, int64_t n_rows, cudaStream_t stream) noexcept {
  if (n_rows == 0) return status::success;
  const auto bytes = static_cast<size_t>(n_rows) * sizeof(cuda::vocab_record);
  return cudaMemsetAsync(slot, 0xff, bytes, stream) == cudaSuccess ? status::success : status::cuda_error;
}

/// The stats call's arguments of a rank: its scored block (no token
/// weights); exchange_step sets the slice and the records.
inline cuda::vocab_stats_args stats_of(const train_args& a) noexcept {
  cuda::vocab_stats_args s;
  s.tokens = a.train.tokens;  // the scored_logits block
  return s;
}
inline cuda::vocab_linear_stats_args stats_of(const linear_train_args& a) noexcept {
  cuda::vocab_linear_stats_args s;
  s.in = a.train.in;  // the scored_linear block
  return s;
}

/// A cuda:: vocab-parallel call (stats or step) over Args, with the stream.
template <class Args>
using vocab_call = status (*)(void*, size_t&, const Args&, const options&, cudaStream_t) noexcept;

/// stats → all-gather → step, shared by both entries. Every rank must reach
/// the all-gather, or the others wait in it for ever: a failure this rank
/// finds before the exchange (its slice against the communicator, its
/// buffers, its workspace, the stats call's own checks) is therefore made
/// collective — the rank still takes part with a poisoned slot, every other
/// rank's step then reports invalid_vocab_records on the device, and this
/// rank returns its own status without running the step. Only a rank that
/// cannot take part at all (no communicator, a negative N, no gather buffer)
/// returns at once; that is a programming error the caller's group shares.
/// Failures after the exchange need no care: no collective follows.
///
/// `args` is train_args or linear_train_args, `stats` the stats call's
/// block of its rows, N rows; the step gets the whole train block. Both
/// calls are over args.slice.
template <class StepArgs, class Args, class StatsArgs>
status exchange_step(void* workspace, size_t& workspace_bytes, const Args& args, StatsArgs stats,
                     int64_t n, const options& opt, ncclComm_t comm, cudaStream_t stream,
                     ncclResult_t* nccl_result, vocab_call<StatsArgs> run_stats,
                     vocab_call<StepArgs> run_step) noexcept {
  const cuda::vocab_slice& slice = args.slice;
  cuda::vocab_record* const records = args.records;
  stats.slice = slice;
  StepArgs step;
  step.train = args.train;
  step.slice = slice;
  int rank = -1, count = -1;
  if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &count) != ncclSuccess)
    return status::cuda_error;
  if (n < 0) return status::invalid_shape;
  cuda::vocab_record* const slot = records != nullptr ? records + static_cast<int64_t>(rank) * n : nullptr;
  stats.records = slot;
  step.records = records;
  size_t need_stats = 0, need_step = 0;
  status local = (rank == slice.rank && count == slice.n_ranks) ? status::success
                                                                  : status::invalid_vocab_records;
  if (local == status::success) local = run_stats(nullptr, need_stats, stats, opt, stream);
  if (local == status::success) local = run_step(nullptr, need_step, step, opt, stream);
  if (workspace == nullptr) {  // the size query: no collective
    workspace_bytes = need_stats > need_step ? need_stats : need_step;
    return local;
  }
  if (n > 0 && records == nullptr) return status::null_pointer;
  if (local == status::success && workspace_bytes < (need_stats > need_step ? need_stats : need_step))
    local = status::workspace_too_small;
  if (local == status::success) local = run_stats(workspace, workspace_bytes, stats, opt, stream);
  if (local != status::success) {
    const status p = poison_slot(slot, n, stream);
    if (p != status::success) return p;
  }
  const status g = gather_records(slot, records, n, comm, stream, nccl_result);
  if (local != status::success) return local;
  if (g != status::success) return g;
  // The stats' device flag is overwritten by the step's reset: a label out
  // of range is found again by the step's own rows pass.
  return run_step(workspace, workspace_bytes, step, opt, stream);
}

}  // namespace detail

/// The whole vocab-parallel step of this rank. workspace == nullptr: only
/// workspace_bytes is set (the larger of the two phases'). A failure found
/// before the exchange is made collective (detail::exchange_step): no rank
/// is left waiting.
inline status train_step(void* workspace, size_t& workspace_bytes, const train_args& args,
                         const options& opt, ncclComm_t comm, cudaStream_t stream = nullptr,
                         ncclResult_t* nccl_result = nullptr) noexcept {
  return detail::exchange_step<cuda::vocab_train_args>(
      workspace, workspace_bytes, args, detail::stats_of(args), args.train.tokens.n_rows, opt,
      comm, stream, nccl_result, cuda::vocab_parallel_stats, cuda::vocab_parallel_train_step);
}

/// The whole vocab-parallel fused-linear step of this rank, as train_step.
/// grad_hidden is the rank's partial (not summed here).
inline status linear_train_step(void* workspace, size_t& workspace_bytes,
                                const linear_train_args& args, const options& opt,
                                ncclComm_t comm, cudaStream_t stream = nullptr,
                                ncclResult_t* nccl_result = nullptr) noexcept {
  return detail::exchange_step<cuda::vocab_linear_train_args>(
      workspace, workspace_bytes, args, detail::stats_of(args), args.train.in.n_rows, opt, comm,
      stream, nccl_result, cuda::vocab_linear_stats, cuda::vocab_linear_step);
}

}  // namespace geopref::nccl
