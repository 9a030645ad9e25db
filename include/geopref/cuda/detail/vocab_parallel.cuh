// geopref/cuda/detail/vocab_parallel.cuh — definitions of
// geopref/cuda/vocab_parallel.cuh: three small kernels around the existing
// ones, and the host side.
//
//   stats:  offsets → rows (labels against the whole V) → slice_cols
//           (label → slice column, 0 when outside: read, then discarded) →
//           forward_kernel over the slice, always in ≥ 2 splits so that it
//           leaves per-split partial states → slice_record_kernel merges them
//           in split order into the rank's record (combine_kernel's
//           arithmetic: a rank's slice is one more partial of the row)
//   step:   offsets → rows → vocab_combine_kernel (records in rank order →
//           lse, ℓ) → sequence_kernel → pair_kernel → seq_grad →
//           slice_cols (outside → V_r: scored, but no label column here) →
//           backward_kernel over the slice (row_coef_kernel with token
//           weights): the single-GPU tail, unchanged
// Included at the end of geopref/cuda/vocab_parallel.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "geopref/cuda/detail/api.cuh"
#include "geopref/cuda/vocab_args.cuh"
#include "geopref/cuda/detail/dispatch.cuh"
#include "geopref/cuda/detail/kernels.cuh"

namespace geopref::cuda {
namespace detail {

/// Per row: the label's column inside the slice [begin, begin + width), or
/// `outside` when the label lies in another rank's slice; −1 stays −1
/// (unscored).
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    slice_cols_kernel(const int32_t* __restrict__ cols, int64_t n_rows, int64_t begin,
                      int64_t width, int32_t outside, int32_t* __restrict__ out) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    const int64_t c = cols[t];
    out[t] = c < 0 ? -1 : (c >= begin && c < begin + width ? static_cast<int32_t>(c - begin) : outside);
  }
}

/// One thread per row: the k partial states of forward_kernel merged in
/// split order (as combine_kernel does), the label logit split 0 left in
/// label_logit[t] when the slice owns the label, and the rank's tag.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    slice_record_kernel(const lse_state* __restrict__ partials, int k, int64_t n_rows,
                        const int32_t* __restrict__ cols, int64_t begin, int64_t width,
                        const float* __restrict__ label_logit, int rank,
                        vocab_record* __restrict__ out) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    const int64_t c = cols[t];
    vocab_record r;
    const lse_state e = lse_empty();
    r.m = e.m;
    r.s = e.s;
    r.label = 0.0f;
    r.tag = 2 * rank;
    if (c >= 0) {
      lse_state st = lse_empty();
      for (int j = 0; j < k; ++j) st = lse_merge(st, partials[t * k + j]);
      r.m = st.m;
      r.s = st.s;
      if (c >= begin && c < begin + width) {
        r.label = label_logit[t];
        r.tag += 1;
      }
    }
    out[t] = r;
  }
}

/// One thread per row: the K records of row t merged in rank order —
/// whichever slot of the gathered [K, N] buffer each rank's records landed
/// in — so every rank computes the same bits. Writes lse_t and
/// ℓ_t = z[t, y_t] − lse_t (0 for unscored rows). A scored row whose records
/// do not hold every rank exactly once, or whose label is owned by other
/// than exactly one slice, records invalid_vocab_records (the missing rank
/// then counts as an empty slice, the label as the lowest owner's or 0).
/// O(K²) per row: K is a tensor-parallel degree, a handful.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    vocab_combine_kernel(const vocab_record* __restrict__ records, int n_ranks, int64_t n_rows,
                         const int32_t* __restrict__ cols, float* __restrict__ lse,
                         float* __restrict__ token_logp, int* __restrict__ flag) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    if (zero_unscored(t, cols, lse, token_logp)) continue;
    lse_state st = lse_empty();
    float label = 0.0f;
    int owners = 0;
    bool bad = false;
    for (int r = 0; r < n_ranks; ++r) {
      int found = 0;
      vocab_record x{};
      for (int j = 0; j < n_ranks; ++j) {
        const vocab_record q = records[static_cast<int64_t>(j) * n_rows + t];
        if ((q.tag >> 1) == r) {
          if (found == 0) x = q;
          ++found;
        }
      }
      if (found != 1) bad = true;
      if (found == 0) continue;
      st = lse_merge(st, lse_state{x.m, x.s});
      if ((x.tag & 1) != 0) {
        if (owners == 0) label = x.label;
        ++owners;
      }
    }
    if (bad || owners != 1) record(flag, status::invalid_vocab_records);
    const float l = lse_finish(st);
    lse[t] = l;
    token_logp[t] = label - l;
  }
}

// ---------------------------------------------------------------------------
// Host side.

/// The slice against the slice's token_inputs (whose vocab is V_r).
inline status check_slice(const vocab_rows& x, const vocab_slice& sl) noexcept {
  if (sl.n_ranks < 1 || sl.rank < 0 || sl.rank >= sl.n_ranks) return status::invalid_vocab_records;
  // The tag 2·rank + 1 must fit an int32.
  if (sl.n_ranks > std::numeric_limits<int32_t>::max() / 2) return status::invalid_vocab_records;
  if (sl.total < x.vocab || sl.total > std::numeric_limits<int32_t>::max() || sl.begin < 0 ||
      sl.begin > sl.total - x.vocab)
    return status::invalid_vocab_records;
  return status::success;
}

/// The rows as the whole vocabulary sees them: labels are validated against V.
inline vocab_rows global_rows(const vocab_rows& x, const vocab_slice& sl) noexcept {
  vocab_rows g = x;
  g.vocab = sl.total;
  return g;
}

/// A layout plus one [N] int32 piece (the slice columns) and, when the
/// single-GPU choice is one split, a [N, 2] partials piece of its own.
struct vocab_layout {
  workspace_layout base;
  size_t slice_cols = 0;
  size_t partials = 0;  // used when own_partials
  bool own_partials = false;
  int splits = 1;       // the local forward's splits (>= 2)
};

inline vocab_layout make_vocab_layout(const vocab_rows& x, const sequences& q, int elem_bytes,
                                      int64_t n_pairs, bool train, bool stats) noexcept {
  vocab_layout v;
  v.base = make_layout(x.n_rows, x.vocab, elem_bytes, q.n_seqs, n_pairs, train);
  const auto n = static_cast<size_t>(x.n_rows);
  v.slice_cols = v.base.bytes;
  v.base.bytes += align_up(n * sizeof(int32_t), WORKSPACE_ALIGN);
  v.splits = v.base.splits;
  if (stats && v.splits < 2) {
    v.own_partials = true;
    v.splits = 2;
    v.partials = v.base.bytes;
    v.base.bytes += align_up(n * 2 * sizeof(lse_state), WORKSPACE_ALIGN);
  }
  return v;
}

template <class T>
T* piece(void* workspace, size_t offset) {
  return reinterpret_cast<T*>(reinterpret_cast<char*>(align_up_ptr(reinterpret_cast<uintptr_t>(workspace))) +
                              offset);
}

inline status enqueue_slice_cols(const workspace_view& ws, int64_t n, const vocab_slice& sl,
                                 int64_t width, int32_t outside, int32_t* out,
                                 cudaStream_t stream) {
  launch(slice_cols_kernel<BLOCK>, grid_1d(n), BLOCK, stream, ws.cols, n, sl.begin, width, outside,
         out);
  return last_launch();
}

/// offsets → rows → combine → sequences: the forward half of the step.
inline status enqueue_vocab_combine(const vocab_rows& x, const sequences& q,
                                    const token_weighting& tw, const vocab_shard& sh,
                                    const options& opt, const workspace_view& ws,
                                    const float* ref_logps, const logps_outputs& out,
                                    cudaStream_t stream) {
  status s = enqueue_rows(global_rows(x, sh.slice), q, opt.ignore_index, ws, stream);
  if (s != status::success) return s;
  if (x.n_rows > 0) {
    launch(vocab_combine_kernel<BLOCK>, grid_1d(x.n_rows), BLOCK, stream, sh.records,
           sh.slice.n_ranks, x.n_rows, ws.cols, ws.lse, ws.token_logp, ws.flag);
    if (last_launch() != status::success) return status::cuda_error;
  }
  s = enqueue_sequences(x, q, tw, opt, ws, ref_logps, out.seq_logps, out.seq_counts, stream);
  if (s != status::success) return s;
  return copy_rows(ws, x.n_rows, out, stream);
}

/// The gathered records: present, aligned, clear of the workspace.
inline status check_records(const vocab_rows& x, const vocab_shard& sh, const void* workspace,
                            const workspace_layout& w) noexcept {
  const vocab_slice& sl = sh.slice;
  const vocab_record* records = sh.records;
  if (x.n_rows == 0) return status::success;
  if (records == nullptr) return status::null_pointer;
  if (!aligned(records, alignof(vocab_record))) return status::misaligned_pointer;
  if (workspace != nullptr &&
      meets_workspace(used_bytes(records, x.n_rows * sl.n_ranks, 1, 1, sizeof(vocab_record)),
                      workspace, w))
    return status::overlapping_buffers;
  return status::success;
}

template <class MarginFor>
inline status vocab_train_with(void* workspace, size_t& workspace_bytes, const vocab_train_args& args,
                               const options& opt, const MarginFor& margin_for,
                               cudaStream_t stream) noexcept {
  const train_args& a = args.train;
  const token_inputs& x = a.tokens;
  status s = check_train(a, opt, workspace != nullptr);
  if (s != status::success) return s;
  s = check_slice(x, args.slice);
  if (s != status::success) return s;
  const vocab_layout v = make_vocab_layout(x, x, dtype_bytes(x.logits_dtype), a.n_pairs, true, false);
  s = size_workspace(workspace, workspace_bytes, v.base);
  if (s != status::success || workspace == nullptr) return s;
  s = check_records(x, args, workspace, v.base);
  if (s != status::success) return s;
  if (tokens_meet_workspace(x, x, a, workspace, v.base)) return status::overlapping_buffers;
  workspace_view ws = carve(workspace, v.base);
  s = enqueue_vocab_combine(x, x, x, args, opt, ws, a.ref_logps, a, stream);
  if (s != status::success) return s;
  if (a.grad_logits != nullptr && x.n_rows > 0) {
    // The local backward: the slice's own label column, or none (V_r: a
    // column no split covers) when the label lies in another rank's slice.
    int32_t* local = piece<int32_t>(workspace, v.slice_cols);
    s = enqueue_slice_cols(ws, x.n_rows, args.slice, x.vocab, static_cast<int32_t>(x.vocab), local,
                           stream);
    if (s != status::success) return status::cuda_error;
    ws.cols = local;
  }
  return enqueue_train_tail(a, opt, v.base, ws, margin_for, stream);
}

}  // namespace detail

inline status vocab_parallel_stats(void* workspace, size_t& workspace_bytes,
                                   const vocab_stats_args& args, const options& opt,
                                   cudaStream_t stream) noexcept {
  const scored_logits& x = args.tokens;
  status s = validate(opt);
  if (s != status::success) return s;
  s = detail::check_shapes(x);
  if (s != status::success) return s;
  s = detail::check_slice(x, args.slice);
  if (s != status::success) return s;
  const detail::vocab_layout v =
      detail::make_vocab_layout(x, x, detail::dtype_bytes(x.logits_dtype), 0, false, true);
  if (workspace == nullptr) {
    workspace_bytes = detail::workspace_request(v.base);
    return status::success;
  }
  s = detail::check_buffers(x);
  if (s != status::success) return s;
  if (x.n_rows > 0 && args.records == nullptr) return status::null_pointer;
  if (!detail::aligned(args.records, alignof(vocab_record))) return status::misaligned_pointer;
  if (workspace_bytes < detail::workspace_request(v.base)) return status::workspace_too_small;
  if (detail::tokens_meet_workspace(x, x, logits_gradient{}, workspace, v.base) ||
      (x.n_rows > 0 &&
       detail::meets_workspace(detail::used_bytes(args.records, x.n_rows, 1, 1, sizeof(vocab_record)),
                               workspace, v.base)))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, v.base);
  s = detail::enqueue_rows(detail::global_rows(x, args.slice), x, opt.ignore_index, ws, stream);
  if (s != status::success || x.n_rows == 0) return s;
  int32_t* local = detail::piece<int32_t>(workspace, v.slice_cols);
  // Outside the slice: column 0, which forward_kernel's split 0 reads as the
  // "label" and slice_record_kernel discards.
  s = detail::enqueue_slice_cols(ws, x.n_rows, args.slice, x.vocab, 0, local, stream);
  if (s != status::success) return status::cuda_error;
  detail::lse_state* partials =
      v.own_partials ? detail::piece<detail::lse_state>(workspace, v.partials) : ws.partials;
  s = detail::visit_dtype(x.logits_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dim3 grid(static_cast<unsigned>(x.n_rows), static_cast<unsigned>(v.splits));
    return detail::visit_map<T>(x.logit_transform, [&](auto map) {
      detail::launch(detail::forward_kernel<T, decltype(map), detail::BLOCK>, grid, detail::BLOCK,
                     stream, static_cast<const T*>(x.logits), x.ld, x.vocab, local, ws.lse,
                     ws.token_logp, partials, map);
      return detail::last_launch();
    });
  });
  if (s != status::success) return s;
  detail::launch(detail::slice_record_kernel<detail::BLOCK>, detail::grid_1d(x.n_rows),
                 detail::BLOCK, stream, partials, v.splits, x.n_rows, ws.cols, args.slice.begin,
                 x.vocab, ws.token_logp, args.slice.rank, args.records);
  return detail::last_launch();
}

inline status vocab_parallel_train_step(void* workspace, size_t& workspace_bytes,
                                        const vocab_train_args& args, const options& opt,
                                        cudaStream_t stream) noexcept {
  if (const status s = validate(opt); s != status::success) return s;
  return detail::vocab_train_with(workspace, workspace_bytes, args, opt,
                                  detail::builtin_margin{any_loss<double>(opt.loss)}, stream);
}

template <class Loss, class>
inline status vocab_parallel_train_step(void* workspace, size_t& workspace_bytes,
                                        const vocab_train_args& args, const options& opt,
                                        const Loss& loss, cudaStream_t stream) noexcept {
  return detail::vocab_train_with(workspace, workspace_bytes, args, opt,
                                  detail::custom_margin<Loss>{loss}, stream);
}

inline status vocab_parallel_logps(void* workspace, size_t& workspace_bytes,
                                   const vocab_logps_args& args, const options& opt,
                                   cudaStream_t stream) noexcept {
  // No logits are read: the rows' own checks (check_shapes' with ld = V_r,
  // float32), the records' and the outputs'.
  const sequence_rows& x = args.tokens;
  status s = validate(opt);
  if (s != status::success) return s;
  logits_source no_logits;
  no_logits.ld = x.vocab;
  s = detail::check_shapes(no_logits, x, x);
  if (s != status::success) return s;
  if (workspace != nullptr) {
    s = detail::check_row_buffers(x, x, &x);
    if (s != status::success) return s;
    s = detail::check_logps_outputs(args, x.n_seqs);
    if (s != status::success) return s;
  }
  s = detail::check_slice(x, args.slice);
  if (s != status::success) return s;
  // The workspace size depends on N, V_r and S alone (4-byte rows).
  const detail::vocab_layout v = detail::make_vocab_layout(x, x, 4, 0, false, false);
  s = detail::size_workspace(workspace, workspace_bytes, v.base);
  if (s != status::success || workspace == nullptr) return s;
  s = detail::check_records(x, args, workspace, v.base);
  if (s != status::success) return s;
  const detail::workspace_view ws = detail::carve(workspace, v.base);
  return detail::enqueue_vocab_combine(x, x, x, args, opt, ws, nullptr, args, stream);
}

}  // namespace geopref::cuda
