// geopref/nccl.cuh — the vocab-parallel step over an NCCL communicator: a
// thin layer on geopref/cuda/vocab_parallel.cuh whose only communication is
// one ncclAllGather of 16 bytes per row per rank on the caller's
// communicator and stream. Needs nccl.h and libnccl (link it yourself); the
// rest of the library does not.
//
//   geopref::nccl::train_step(ws, bytes, args, records, opt, comm, stream):
//     vocab_parallel_stats  → records + rank·N   (this rank's slot)
//     ncclAllGather         records + rank·N → records [K, N]   (in place)
//     vocab_parallel_train_step
//
//   geopref::nccl::linear_train_step(ws, bytes, args, records, opt, comm, stream):
//     the same for the fused-linear path with W sharded by vocabulary
//     (geopref/cuda/vocab_linear.cuh): vocab_linear_stats → ncclAllGather →
//     vocab_linear_step. grad_hidden comes back as this rank's partial: sum
//     it over the ranks yourself (ncclAllReduce, or in rank order; see
//     vocab_linear.cuh).
//
// The communicator's rank and size must be the slice's rank and n_ranks
// (checked: invalid_vocab_records). Everything is enqueued on `stream`; the
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

/// The whole vocab-parallel step of this rank. args.records is ignored:
/// `records` is the caller's [K, N] gather buffer (device memory, not part
/// of the workspace). workspace == nullptr: only workspace_bytes is set (the
/// larger of the two phases').
inline status train_step(void* workspace, size_t& workspace_bytes, const cuda::vocab_train_args& args,
                         cuda::vocab_record* records, const options& opt, ncclComm_t comm,
                         cudaStream_t stream = nullptr, ncclResult_t* nccl_result = nullptr) noexcept {
  int rank = -1, count = -1;
  if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &count) != ncclSuccess)
    return status::cuda_error;
  if (rank != args.slice.rank || count != args.slice.n_ranks) return status::invalid_vocab_records;
  cuda::vocab_stats_args stats;
  stats.tokens = args.train.tokens;
  stats.slice = args.slice;
  const int64_t n = args.train.tokens.n_rows;
  stats.records = records != nullptr ? records + static_cast<int64_t>(rank) * n : nullptr;
  cuda::vocab_train_args step = args;
  step.records = records;
  size_t need_stats = 0, need_step = 0;
  status s = cuda::vocab_parallel_stats(nullptr, need_stats, stats, opt, stream);
  if (s != status::success) return s;
  s = cuda::vocab_parallel_train_step(nullptr, need_step, step, opt, stream);
  if (s != status::success) return s;
  const size_t need = need_stats > need_step ? need_stats : need_step;
  if (workspace == nullptr) {
    workspace_bytes = need;
    return status::success;
  }
  if (workspace_bytes < need) return status::workspace_too_small;
  if (n > 0 && records == nullptr) return status::null_pointer;
  s = cuda::vocab_parallel_stats(workspace, workspace_bytes, stats, opt, stream);
  if (s != status::success) return s;
  s = gather_records(stats.records, records, n, comm, stream, nccl_result);
  if (s != status::success) return s;
  // The stats' device flag is overwritten by the step's reset: a label out
  // of range is found again by the step's own rows pass.
  return cuda::vocab_parallel_train_step(workspace, workspace_bytes, step, opt, stream);
}

/// The whole vocab-parallel fused-linear step of this rank, as train_step:
/// args.records is ignored, `records` is the caller's [K, N] gather buffer.
/// grad_hidden is the rank's partial (not summed here).
inline status linear_train_step(void* workspace, size_t& workspace_bytes,
                                const cuda::vocab_linear_train_args& args, cuda::vocab_record* records,
                                const options& opt, ncclComm_t comm, cudaStream_t stream = nullptr,
                                ncclResult_t* nccl_result = nullptr) noexcept {
  int rank = -1, count = -1;
  if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &count) != ncclSuccess)
    return status::cuda_error;
  if (rank != args.slice.rank || count != args.slice.n_ranks) return status::invalid_vocab_records;
  cuda::vocab_linear_stats_args stats;
  stats.in = args.train.in;
  stats.slice = args.slice;
  const int64_t n = args.train.in.n_rows;
  stats.records = records != nullptr ? records + static_cast<int64_t>(rank) * n : nullptr;
  cuda::vocab_linear_train_args step = args;
  step.records = records;
  size_t need_stats = 0, need_step = 0;
  status s = cuda::vocab_linear_stats(nullptr, need_stats, stats, opt, stream);
  if (s != status::success) return s;
  s = cuda::vocab_linear_step(nullptr, need_step, step, opt, stream);
  if (s != status::success) return s;
  const size_t need = need_stats > need_step ? need_stats : need_step;
  if (workspace == nullptr) {
    workspace_bytes = need;
    return status::success;
  }
  if (workspace_bytes < need) return status::workspace_too_small;
  if (n > 0 && records == nullptr) return status::null_pointer;
  s = cuda::vocab_linear_stats(workspace, workspace_bytes, stats, opt, stream);
  if (s != status::success) return s;
  s = gather_records(stats.records, records, n, comm, stream, nccl_result);
  if (s != status::success) return s;
  return cuda::vocab_linear_step(workspace, workspace_bytes, step, opt, stream);
}

}  // namespace geopref::nccl
