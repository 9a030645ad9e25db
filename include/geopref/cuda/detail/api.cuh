// geopref/cuda/detail/api.cuh — definitions of geopref/cuda/geopref.cuh:
// host-side argument checks, the workspace protocol, then dispatch.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "geopref/cuda/args.cuh"
#include "geopref/cuda/detail/dispatch.cuh"
#include "geopref/cuda/detail/workspace.cuh"
// Included at the end of geopref/cuda/geopref.cuh (include that header).

namespace geopref::cuda {
namespace detail {

/// Bytes per element, 0 for a value outside the enum.
inline int dtype_bytes(dtype d) noexcept {
  switch (d) {
    case dtype::float32: return 4;
    case dtype::float16:
    case dtype::bfloat16: return 2;
  }
  return 0;
}

inline int index_bytes(index_type d) noexcept {
  switch (d) {
    case index_type::int32: return 4;
    case index_type::int64: return 8;
  }
  return 0;
}

inline bool aligned(const void* p, int bytes) noexcept {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

/// The checks the workspace size depends on (also made by the size query).
/// The per-token entries have no sequences (q default: S = 0).
inline status check_shapes(const logits_source& z, const vocab_rows& r,
                           const sequences& q = sequences{}) noexcept {
  constexpr int64_t I32 = std::numeric_limits<int32_t>::max();
  if (r.n_rows < 0 || r.vocab < 0 || z.ld < 0 || q.n_seqs < 0) return status::invalid_shape;
  // Rows are gridDim.x and labels/sequences are stored as int32 per row.
  if (r.n_rows > I32 || r.vocab > I32 || q.n_seqs >= I32) return status::invalid_shape;
  if (r.n_rows > 0 && r.vocab == 0) return status::invalid_shape;
  if (const status s = validate(r.logit_transform); s != status::success) return s;
  if (z.ld < r.vocab) return status::invalid_stride;
  // N · ld · 4 bytes must be addressable with 64-bit arithmetic.
  if (r.n_rows > 0 && z.ld > std::numeric_limits<int64_t>::max() / 8 / r.n_rows)
    return status::invalid_shape;
  if (dtype_bytes(z.logits_dtype) == 0 || index_bytes(r.label_type) == 0 ||
      index_bytes(q.offset_type) == 0)
    return status::unsupported_dtype;
  return status::success;
}
inline status check_shapes(const scored_logits& x) noexcept { return check_shapes(x, x, x); }

/// The rows' own buffers: labels, offsets and (w non-null) token weights.
inline status check_row_buffers(const vocab_rows& r, const sequences& q,
                                const token_weighting* w) noexcept {
  if (r.n_rows > 0 && r.labels == nullptr) return status::null_pointer;
  if (q.n_seqs > 0 && q.offsets == nullptr) return status::null_pointer;
  if (!aligned(r.labels, index_bytes(r.label_type)) ||
      !aligned(q.offsets, index_bytes(q.offset_type)) ||
      (w != nullptr && !aligned(w->token_weights, 4)))
    return status::misaligned_pointer;
  return status::success;
}

/// Every null pointer is reported before any misaligned one.
inline status check_buffers(const logits_source& z, const vocab_rows& r,
                            const sequences& q = sequences{},
                            const token_weighting* w = nullptr) noexcept {
  if (r.n_rows > 0 && z.logits == nullptr) return status::null_pointer;
  if (const status s = check_row_buffers(r, q, w); s != status::success) return s;
  if (!aligned(z.logits, dtype_bytes(z.logits_dtype))) return status::misaligned_pointer;
  return status::success;
}
inline status check_buffers(const scored_logits& x) noexcept { return check_buffers(x, x, x); }
inline status check_buffers(const token_inputs& x) noexcept { return check_buffers(x, x, x, &x); }

/// Byte range [begin, end) of an [N, ld] buffer's N·V used elements.
struct byte_range {
  uintptr_t begin, end;
};
/// Whether two byte ranges share a byte. An empty range strictly inside the
/// other counts as meeting it: callers skip empty ranges where that matters.
inline bool ranges_meet(byte_range a, byte_range b) noexcept {
  return a.begin < b.end && b.begin < a.end;
}
inline byte_range used_bytes(const void* p, int64_t n, int64_t ld, int64_t v, int elem) noexcept {
  const auto b = reinterpret_cast<uintptr_t>(p);
  return {b, b + static_cast<uintptr_t>(((n - 1) * ld + v) * elem)};
}

/// The gradient's stride (grad_ld 0 means ld), checked with the shapes.
inline status check_grad_stride(const logits_source& z, const vocab_rows& x,
                                int64_t grad_ld_arg) noexcept {
  const int64_t grad_ld = grad_ld_arg == 0 ? z.ld : grad_ld_arg;
  if (grad_ld < x.vocab || grad_ld < 0) return status::invalid_stride;
  if (x.n_rows > 0 && grad_ld > std::numeric_limits<int64_t>::max() / 8 / x.n_rows)
    return status::invalid_shape;
  return status::success;
}

/// A non-null gradient buffer over N > 0 rows: alignment, and no overlap with
/// the logits unless exactly in place. Returns the used bytes in *range.
inline status check_grad_buffer(const logits_source& z, const vocab_rows& x,
                                const logits_gradient& d, byte_range* range) noexcept {
  const void* grad_logits = d.grad_logits;
  const bool grad_float32 = d.grad_float32;
  const int64_t grad_ld = d.grad_ld == 0 ? z.ld : d.grad_ld;
  const int in_bytes = dtype_bytes(z.logits_dtype);
  const int out_bytes = grad_float32 ? 4 : in_bytes;
  if (!aligned(grad_logits, out_bytes)) return status::misaligned_pointer;
  // In place is exactly the same buffer, layout and type; any other overlap
  // would let one block overwrite logits another block has yet to read.
  const bool in_place = grad_logits == z.logits && grad_ld == z.ld && out_bytes == in_bytes &&
                        !(grad_float32 && z.logits_dtype != dtype::float32);
  const byte_range zr = used_bytes(z.logits, x.n_rows, z.ld, x.vocab, in_bytes);
  const byte_range g = used_bytes(grad_logits, x.n_rows, grad_ld, x.vocab, out_bytes);
  if (!in_place && ranges_meet(zr, g)) return status::overlapping_buffers;
  *range = g;
  return status::success;
}

/// The first checks of a training step over S sequences (train_step,
/// fused_linear_step): opt, the inputs' shapes (`shapes()`), then the pairs:
/// P >= 0, S = 2P in the default layout (pairs null), no reference log-probs
/// for a loss without a reference, a finite upstream gradient.
template <class Shapes>
inline status check_step_pairs(const pair_set& a, int64_t n_seqs, const options& opt,
                               const Shapes& shapes) noexcept {
  status s = validate(opt);
  if (s != status::success) return s;
  s = shapes();
  if (s != status::success) return s;
  if (a.n_pairs < 0) return status::invalid_shape;
  if (a.pairs == nullptr && n_seqs != 2 * a.n_pairs) return status::pair_count_mismatch;
  if (all_terms_reference_free(opt.loss) && a.ref_logps != nullptr) return status::reference_not_allowed;
  if (!std::isfinite(a.grad_loss)) return status::invalid_upstream_grad;
  return status::success;
}

inline status check_train(const train_args& a, const options& opt, bool buffers) noexcept {
  const token_inputs& x = a.tokens;
  status s = check_step_pairs(a, x.n_seqs, opt, [&] { return check_shapes(x); });
  if (s != status::success) return s;
  s = check_grad_stride(x, x, a.grad_ld);
  if (s != status::success || !buffers) return s;

  s = check_buffers(x);
  if (s != status::success) return s;
  if (!aligned(a.pairs, 8) || !aligned(a.soft_labels, 4) || !aligned(a.ref_logps, 4) ||
      !aligned(a.weights, 4) || !aligned(a.grad_output, 4) || !aligned(a.loss, 4) ||
      !aligned(a.stats, alignof(metrics)) || !aligned(a.stat_sums, alignof(metric_sums)) || !aligned(a.seq_logps, 4) ||
      !aligned(a.seq_counts, 8) || !aligned(a.token_logps, 4) || !aligned(a.lse, 4) ||
      !aligned(a.grad_seq_logps, 4))
    return status::misaligned_pointer;
  if (a.grad_logits != nullptr && x.n_rows > 0) {
    byte_range g{};
    return check_grad_buffer(x, x, a, &g);
  }
  return status::success;
}

inline status check_grad(const grad_args& a, bool buffers) noexcept {
  const token_inputs& x = a.tokens;
  status s = check_shapes(x);
  if (s != status::success) return s;
  s = check_grad_stride(x, x, a.grad_ld);
  if (s != status::success || !buffers) return s;

  s = check_buffers(x);
  if (s != status::success) return s;
  if (x.n_rows > 0 && (a.lse == nullptr || a.grad_logits == nullptr)) return status::null_pointer;
  if (x.n_seqs > 0 && a.grad_seq_logps == nullptr) return status::null_pointer;
  if (!aligned(a.lse, 4) || !aligned(a.grad_seq_logps, 4)) return status::misaligned_pointer;
  if (x.n_rows == 0) return status::success;
  byte_range g{};
  s = check_grad_buffer(x, x, a, &g);
  if (s != status::success) return s;
  // backward_kernel reads lse and g_s while other blocks write the gradient.
  const byte_range l = used_bytes(a.lse, x.n_rows, 1, 1, 4);
  if (ranges_meet(l, g)) return status::overlapping_buffers;
  if (x.n_seqs > 0) {
    const byte_range q = used_bytes(a.grad_seq_logps, x.n_seqs, 1, 1, 4);
    if (ranges_meet(q, g)) return status::overlapping_buffers;
  }
  return status::success;
}

/// logps_outputs' own buffers for S sequences: seq_logps required when
/// S > 0, every output aligned to its element.
inline status check_logps_outputs(const logps_outputs& a, int64_t n_seqs) noexcept {
  if (n_seqs > 0 && a.seq_logps == nullptr) return status::null_pointer;
  if (!aligned(a.seq_logps, 4) || !aligned(a.seq_counts, 8) || !aligned(a.token_logps, 4) ||
      !aligned(a.lse, 4))
    return status::misaligned_pointer;
  return status::success;
}

/// The checks of a forward-only call over S sequences (sequence_logps,
/// fused_linear_logps): opt, the inputs' shapes (`shapes()`), then with
/// buffers the inputs' buffers (`inputs()`) and the outputs'.
template <class Shapes, class Inputs>
inline status check_forward(const logps_outputs& a, int64_t n_seqs, const options& opt,
                            bool buffers, const Shapes& shapes, const Inputs& inputs) noexcept {
  status s = validate(opt);
  if (s != status::success) return s;
  s = shapes();
  if (s != status::success || !buffers) return s;
  s = inputs();
  if (s != status::success) return s;
  return check_logps_outputs(a, n_seqs);
}

inline status check_logps(const logps_args& a, const options& opt, bool buffers) noexcept {
  return check_forward(
      a, a.tokens.n_seqs, opt, buffers, [&] { return check_shapes(a.tokens); },
      [&] { return check_buffers(a.tokens); });
}

/// Whether the bytes r meet the part of the workspace a call uses (from the
/// aligned base, w.bytes long): a buffer there would be overwritten by the
/// call's own bookkeeping, or would overwrite it.
inline bool meets_workspace(byte_range r, const void* workspace, const workspace_layout& w) noexcept {
  const uintptr_t b = align_up_ptr(reinterpret_cast<uintptr_t>(workspace));
  return r.begin < b + w.bytes && b < r.end;
}

/// The logits and (when given) the gradient of N > 0 rows against the workspace.
inline bool tokens_meet_workspace(const logits_source& z, const vocab_rows& x,
                                  const logits_gradient& d, const void* workspace,
                                  const workspace_layout& w) noexcept {
  if (x.n_rows == 0) return false;
  const int in_bytes = dtype_bytes(z.logits_dtype);
  if (meets_workspace(used_bytes(z.logits, x.n_rows, z.ld, x.vocab, in_bytes), workspace, w))
    return true;
  if (d.grad_logits == nullptr) return false;
  const int64_t grad_ld = d.grad_ld == 0 ? z.ld : d.grad_ld;
  return meets_workspace(
      used_bytes(d.grad_logits, x.n_rows, grad_ld, x.vocab, d.grad_float32 ? 4 : in_bytes),
      workspace, w);
}

inline workspace_layout layout_for(const scored_logits& x, int64_t n_pairs, bool train) noexcept {
  return make_layout(x.n_rows, x.vocab, dtype_bytes(x.logits_dtype), x.n_seqs, n_pairs, train);
}

}  // namespace detail

inline status sequence_logps(void* workspace, size_t& workspace_bytes, const logps_args& args,
                             const options& opt, cudaStream_t stream) noexcept {
  status s = detail::check_logps(args, opt, workspace != nullptr);
  if (s != status::success) return s;
  const detail::workspace_layout w = detail::layout_for(args.tokens, 0, false);
  s = detail::size_workspace(workspace, workspace_bytes, w);
  if (s != status::success || workspace == nullptr) return s;
  if (detail::tokens_meet_workspace(args.tokens, args.tokens, logits_gradient{}, workspace, w))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, w);
  s = detail::enqueue_forward(args.tokens, opt, w, ws, nullptr, args, stream);
  if (s != status::success) return s;
  return detail::copy_rows(ws, args.tokens.n_rows, args, stream);
}

namespace detail {
template <class MarginFor>
inline status train_step_with(void* workspace, size_t& workspace_bytes, const train_args& args,
                              const options& opt, const MarginFor& margin_for,
                              cudaStream_t stream) noexcept {
  status s = detail::check_train(args, opt, workspace != nullptr);
  if (s != status::success) return s;
  const detail::workspace_layout w = detail::layout_for(args.tokens, args.n_pairs, true);
  s = detail::size_workspace(workspace, workspace_bytes, w);
  if (s != status::success || workspace == nullptr) return s;
  if (detail::tokens_meet_workspace(args.tokens, args.tokens, args, workspace, w))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, w);
  s = detail::enqueue_forward(args.tokens, opt, w, ws, args.ref_logps, args, stream);
  if (s != status::success) return s;
  s = detail::copy_rows(ws, args.tokens.n_rows, args, stream);
  if (s != status::success) return s;
  return detail::enqueue_train_tail(args, opt, w, ws, margin_for, stream);
}
}  // namespace detail

inline status train_step(void* workspace, size_t& workspace_bytes, const train_args& args,
                         const options& opt, cudaStream_t stream) noexcept {
  if (const status s = validate(opt); s != status::success) return s;
  return detail::train_step_with(workspace, workspace_bytes, args, opt,
                                 detail::builtin_margin{any_loss<double>(opt.loss)}, stream);
}

template <class Loss, class>
inline status train_step(void* workspace, size_t& workspace_bytes, const train_args& args,
                         const options& opt, const Loss& loss, cudaStream_t stream) noexcept {
  return detail::train_step_with(workspace, workspace_bytes, args, opt,
                                 detail::custom_margin<Loss>{loss}, stream);
}

inline status logits_grad(void* workspace, size_t& workspace_bytes, const grad_args& args,
                          const options& opt, cudaStream_t stream) noexcept {
  // Reads opt.ignore_index alone (any value is valid): the loss, reduction
  // and the rest of opt are neither read nor validated.
  status s = detail::check_grad(args, workspace != nullptr);
  if (s != status::success) return s;
  const token_inputs& x = args.tokens;
  const detail::workspace_layout w =
      detail::make_grad_layout(x.n_rows, x.vocab, detail::dtype_bytes(x.logits_dtype), x.n_seqs);
  s = detail::size_workspace(workspace, workspace_bytes, w);
  if (s != status::success || workspace == nullptr) return s;
  // logits_grad reads lse and g_s while rows_kernel writes the workspace.
  if (detail::tokens_meet_workspace(x, x, args, workspace, w) ||
      (x.n_rows > 0 &&
       detail::meets_workspace(detail::used_bytes(args.lse, x.n_rows, 1, 1, 4), workspace, w)) ||
      (x.n_seqs > 0 && detail::meets_workspace(
                           detail::used_bytes(args.grad_seq_logps, x.n_seqs, 1, 1, 4), workspace, w)))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, w);
  s = detail::enqueue_rows(x, x, opt.ignore_index, ws, stream);
  if (s != status::success || x.n_rows == 0) return s;
  return detail::enqueue_backward(x, w, ws, args.grad_seq_logps, args.lse, args, stream);
}

inline status device_status(const void* workspace, cudaStream_t stream, status* result) noexcept {
  if (workspace == nullptr || result == nullptr) return status::null_pointer;
  const auto* flag =
      reinterpret_cast<const int*>(detail::align_up_ptr(reinterpret_cast<uintptr_t>(workspace)));
  int h = 0;
  if (cudaMemcpyAsync(&h, flag, sizeof(int), cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess)
    return status::cuda_error;
  if (h == detail::STATUS_NONE) *result = status::success;
  else if (h > 0 && h <= static_cast<int>(status::internal_error)) *result = static_cast<status>(h);
  else *result = status::internal_error;  // the workspace was never used by a call
  return status::success;
}

}  // namespace geopref::cuda
