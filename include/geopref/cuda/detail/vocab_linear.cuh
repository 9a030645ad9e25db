// geopref/cuda/detail/vocab_linear.cuh — definitions of
// geopref/cuda/vocab_linear.cuh: the fused-linear chunk loop
// (detail/fused_linear.cuh) with the vocab-parallel pieces
// (detail/vocab_parallel.cuh) at its ends; nothing new but the glue.
//
//   stats:  offsets → rows (labels against the whole V) → slice_cols
//           (outside → 0, read then discarded) → per chunk: chunk_forward
//           (GEMM, forward_kernel in ≥ 2 splits) → slice_record_kernel
//   step:   enqueue_vocab_combine (rows, records in rank order → lse, ℓ,
//           sequences) → slice_cols (outside → V_r) → the fused-linear pair
//           step and pass 2 (linear_pair_and_backward) over the slice
// Included at the end of geopref/cuda/vocab_linear.cuh.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/vocab_parallel.cuh"
#include "geopref/cuda/vocab_linear.cuh"

namespace geopref::cuda {
namespace detail {

/// Pointers into the carved workspace of either call.
struct vocab_linear_view {
  workspace_view ws;
  lse_state* partials = nullptr;
  void* chunk = nullptr;
  int32_t* local = nullptr;  // [N] the slice's label columns
};

inline vocab_linear_view carve_vocab_linear(void* workspace, const linear_layout& l) {
  vocab_linear_view v;
  v.ws = carve_linear(workspace, l, &v.partials, &v.chunk);
  v.local = piece<int32_t>(workspace, l.slice_cols);
  return v;
}

}  // namespace detail

inline status vocab_linear_stats(void* workspace, size_t& workspace_bytes,
                                 const vocab_linear_stats_args& args, const options& opt,
                                 cudaStream_t stream) noexcept {
  const scored_linear& in = args.in;
  status s = validate(opt);
  if (s != status::success) return s;
  s = detail::check_linear_shapes(in);
  if (s != status::success) return s;
  s = detail::check_slice(in, args.slice);
  if (s != status::success) return s;
  detail::linear_layout l;
  // Two splits at least: slice_record_kernel merges the forward's partials.
  s = detail::linear_workspace(workspace, workspace_bytes, in, 0, false, nullptr, &l, 2, true);
  if (s != status::success || workspace == nullptr) return s;
  s = detail::check_linear_buffers(in);
  if (s != status::success) return s;
  if (in.n_rows > 0 && args.records == nullptr) return status::null_pointer;
  if (!detail::aligned(args.records, alignof(vocab_record))) return status::misaligned_pointer;
  detail::workspace_layout whole = l.base;
  whole.bytes = l.bytes;
  if (in.n_rows > 0 &&
      detail::meets_workspace(detail::used_bytes(args.records, in.n_rows, 1, 1, sizeof(vocab_record)),
                              workspace, whole))
    return status::overlapping_buffers;
  const detail::vocab_linear_view v = detail::carve_vocab_linear(workspace, l);
  s = detail::enqueue_rows(detail::global_rows(in, args.slice), in, opt.ignore_index, v.ws, stream);
  if (s != status::success || in.n_rows == 0) return s;
  // Outside the slice: column 0, which forward_kernel's split 0 reads as the
  // "label" and slice_record_kernel discards.
  s = detail::enqueue_slice_cols(v.ws, in.n_rows, args.slice, in.vocab, 0, v.local, stream);
  if (s != status::success) return status::cuda_error;
  detail::blas_scope blas;
  s = blas.open(in.cublas, stream);
  if (s != status::success) return s;
  return detail::visit_dtype(in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return detail::for_each_chunk(in.n_rows, l.chunk_rows, [&](int64_t r0, int64_t rows) {
      const status c = detail::chunk_forward<T>(blas.get(), in, l, r0, rows, v.local, v.ws,
                                                v.partials, static_cast<T*>(v.chunk), stream);
      if (c != status::success) return c;
      detail::launch(detail::slice_record_kernel<detail::BLOCK>, detail::grid_1d(rows),
                     detail::BLOCK, stream, v.partials, l.base.splits, rows, v.ws.cols + r0,
                     args.slice.begin, in.vocab, v.ws.token_logp + r0, args.slice.rank,
                     args.records + r0);
      return detail::last_launch() == status::success ? status::success : status::cuda_error;
    });
  });
}

namespace detail {
/// vocab_linear_step with the margin loss of every margin term given by
/// margin_for (builtin_margin or custom_margin<Loss>), as train_step_with.
template <class MarginFor>
inline status vocab_linear_step_with(void* workspace, size_t& workspace_bytes,
                                     const vocab_linear_train_args& args, const options& opt,
                                     const MarginFor& margin, cudaStream_t stream) noexcept {
  const linear_step_args& a = args.train;
  const linear_inputs& in = a.in;
  status s = detail::check_linear_train(a, opt, workspace != nullptr);
  if (s != status::success) return s;
  s = detail::check_slice(in, args.slice);
  if (s != status::success) return s;
  detail::linear_layout l;
  s = detail::linear_workspace(workspace, workspace_bytes, in, a.n_pairs, true, &a, &l, 1, true);
  if (s != status::success || workspace == nullptr) return s;
  detail::workspace_layout whole = l.base;
  whole.bytes = l.bytes;
  s = detail::check_records(in, args, workspace, whole);
  if (s != status::success) return s;
  detail::vocab_linear_view v = detail::carve_vocab_linear(workspace, l);
  s = detail::enqueue_vocab_combine(in, in, in, args, opt, v.ws, a.ref_logps, a, stream);
  if (s != status::success) return s;
  if (in.n_rows > 0) {
    // Pass 2's label columns: the slice's own, or V_r (a column no split
    // covers: scored, no label here) when another rank's slice owns it.
    s = detail::enqueue_slice_cols(v.ws, in.n_rows, args.slice, in.vocab,
                                   static_cast<int32_t>(in.vocab), v.local, stream);
    if (s != status::success) return status::cuda_error;
    v.ws.cols = v.local;
  }
  detail::blas_scope blas;
  s = blas.open(in.cublas, stream);
  if (s != status::success) return s;
  return detail::visit_dtype(in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return detail::linear_pair_and_backward<T>(blas.get(), a, opt, l, v.ws,
                                               static_cast<T*>(v.chunk), margin, stream);
  });
}
}  // namespace detail

inline status vocab_linear_step(void* workspace, size_t& workspace_bytes,
                                const vocab_linear_train_args& args, const options& opt,
                                cudaStream_t stream) noexcept {
  if (const status s = validate(opt); s != status::success) return s;
  return detail::vocab_linear_step_with(workspace, workspace_bytes, args, opt,
                                        detail::builtin_margin{any_loss<double>(opt.loss)}, stream);
}

template <class Loss, class>
inline status vocab_linear_step(void* workspace, size_t& workspace_bytes,
                                const vocab_linear_train_args& args, const options& opt,
                                const Loss& loss, cudaStream_t stream) noexcept {
  return detail::vocab_linear_step_with(workspace, workspace_bytes, args, opt,
                                        detail::custom_margin<Loss>{loss}, stream);
}

}  // namespace geopref::cuda
