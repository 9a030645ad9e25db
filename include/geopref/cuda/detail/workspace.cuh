// geopref/cuda/detail/workspace.cuh — how one caller-owned blob is carved.
//
// Host-only and free of CUDA types (checked by the host test). Every piece
// starts on a 256-byte boundary. The caller's pointer need not be aligned:
// the size asked for includes WORKSPACE_ALIGN − 1 spare bytes and the base is
// rounded up, the same way on every call (device_status finds the flag by
// the same rounding).
#pragma once

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

inline constexpr size_t WORKSPACE_ALIGN = 256;

/// The device-status flag holds this value when nothing was recorded (the
/// byte 0x7f repeated, so one cudaMemsetAsync resets it); a recorded problem
/// is the smallest geopref::status code seen (atomicMin), which makes the
/// reported code independent of thread scheduling.
inline constexpr int STATUS_NONE = 0x7f7f7f7f;

inline constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

inline uintptr_t align_up_ptr(uintptr_t p) {
  return static_cast<uintptr_t>(align_up(static_cast<size_t>(p), WORKSPACE_ALIGN));
}

/// Byte offsets of every piece, relative to the aligned base.
struct workspace_layout {
  size_t flag = 0;        // int, the device status
  size_t offsets = 0;     // [S + 1] int64, canonical offsets
  size_t cols = 0;        // [N] int32, the label column, −1 for unscored rows
  size_t row_seq = 0;     // [N] int32, the row's sequence, −1 for unscored rows
  size_t lse = 0;         // [N] float
  size_t token_logp = 0;  // [N] float; the label logit between the split forward and the combine
  size_t partials = 0;    // [N, splits] lse_state, only when splits > 1
  size_t seq_logp = 0;    // [S] double, L_s (token-weighted sum)
  size_t seq_count = 0;   // [S] int64
  size_t pair_coef = 0;   // [P, 2] double, ∂Loss/∂L_{a_i}, ∂Loss/∂L_{b_i}        (train only)
  size_t pair_scratch = 0;  // [P] × (4 double + 2 double + 2 uint64 + 3 int64): pair_kernel's
                            // pair losses, scales, p̂, w, sort values, keys, orders (train only)
  size_t seq_grad = 0;    // [S] float, g_s                                       (train only)
  size_t row_coef = 0;    // [N] float, g_t = g_s · w_t, the backward's coefficient (train, grad)
  size_t bytes = 0;       // total, from the aligned base
  int splits = 1;
};

/// Hands out the offsets of consecutive pieces, each WORKSPACE_ALIGN-aligned
/// (take(bytes) returns a piece's offset); `used` is the layout's size so far.
struct layout_cursor {
  size_t used = 0;
  size_t operator()(size_t bytes) {
    const size_t at = used;
    used += align_up(bytes, WORKSPACE_ALIGN);
    return at;
  }
};

/// 8-byte slots per pair of pair_kernel's scratch (see pair_params).
inline constexpr size_t PAIR_SCRATCH_SLOTS = 11;

/// What every pass over N rows of V logits of `elem_bytes` each and S
/// sequences takes first: the split count, the flag, the canonical offsets
/// and the per-row conversion (label columns, rows' sequences).
inline workspace_layout sequence_rows_layout(layout_cursor& take, int64_t n_rows, int64_t vocab,
                                             int elem_bytes, int64_t n_seqs) {
  workspace_layout w;
  const auto n = static_cast<size_t>(n_rows), s = static_cast<size_t>(n_seqs);
  w.splits = choose_splits(n_rows, vocab, elem_bytes);
  w.flag = take(sizeof(int));
  w.offsets = take((s + 1) * sizeof(int64_t));
  w.cols = take(n * sizeof(int32_t));
  w.row_seq = take(n * sizeof(int32_t));
  return w;
}

/// The layout for a pass over N rows of V logits of `elem_bytes` each, S
/// sequences and (train) P pairs.
inline workspace_layout make_layout(int64_t n_rows, int64_t vocab, int elem_bytes, int64_t n_seqs,
                                    int64_t n_pairs, bool train) {
  layout_cursor take;
  workspace_layout w = sequence_rows_layout(take, n_rows, vocab, elem_bytes, n_seqs);
  const auto n = static_cast<size_t>(n_rows), s = static_cast<size_t>(n_seqs);
  w.lse = take(n * sizeof(float));
  w.token_logp = take(n * sizeof(float));
  w.partials = take(w.splits > 1 ? n * static_cast<size_t>(w.splits) * sizeof(lse_state) : 0);
  w.seq_logp = take(s * sizeof(double));
  w.seq_count = take(s * sizeof(int64_t));
  if (train) {
    w.pair_coef = take(2 * static_cast<size_t>(n_pairs) * sizeof(double));
    w.pair_scratch = take(PAIR_SCRATCH_SLOTS * static_cast<size_t>(n_pairs) * 8);
    w.seq_grad = take(s * sizeof(float));
    w.row_coef = take(n * sizeof(float));
  }
  w.bytes = take.used;
  return w;
}

/// The layout of logits_grad: the flag and the per-row conversion only (it
/// reads lse and g_s from the caller); the other offsets stay 0 and unused.
/// The split count is train_step's, so its backward launch is the same.
inline workspace_layout make_grad_layout(int64_t n_rows, int64_t vocab, int elem_bytes,
                                         int64_t n_seqs) {
  layout_cursor take;
  workspace_layout w = sequence_rows_layout(take, n_rows, vocab, elem_bytes, n_seqs);
  w.row_coef = take(static_cast<size_t>(n_rows) * sizeof(float));
  w.bytes = take.used;
  return w;
}

/// The layout of the per-token primitive (token_logps, token_logps_grad):
/// the flag, the label columns [N], and lse [N] plus the split partials
/// (forward) or the checked coefficients g_t [N] (backward). The split count
/// is train_step's for the same shape.
inline workspace_layout make_token_layout(int64_t n_rows, int64_t vocab, int elem_bytes,
                                          bool backward) {
  workspace_layout w;
  layout_cursor take;
  const auto n = static_cast<size_t>(n_rows);
  w.splits = choose_splits(n_rows, vocab, elem_bytes);
  w.flag = take(sizeof(int));
  w.cols = take(n * sizeof(int32_t));
  if (backward) {
    w.row_coef = take(n * sizeof(float));
  } else {
    w.lse = take(n * sizeof(float));
    w.partials = take(w.splits > 1 ? n * static_cast<size_t>(w.splits) * sizeof(lse_state) : 0);
  }
  w.bytes = take.used;
  return w;
}

/// Bytes to ask the caller for: the layout plus room to align the base.
inline size_t workspace_request(const workspace_layout& w) {
  return w.bytes + WORKSPACE_ALIGN - 1;
}

/// The size protocol of every call over layout w: a query (workspace ==
/// nullptr) sets workspace_bytes to the request and succeeds; a workspace
/// below the request is workspace_too_small. The caller returns when the
/// status is not success or the call was a query.
inline status size_workspace(const void* workspace, size_t& workspace_bytes,
                             const workspace_layout& w) noexcept {
  if (workspace == nullptr) {
    workspace_bytes = workspace_request(w);
    return status::success;
  }
  return workspace_bytes < workspace_request(w) ? status::workspace_too_small : status::success;
}

}  // namespace geopref::cuda::detail
