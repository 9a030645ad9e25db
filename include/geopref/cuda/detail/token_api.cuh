// geopref/cuda/detail/token_api.cuh — definitions of geopref/cuda/token_logps.cuh:
// host-side checks, the workspace protocol, then the kernels train_step runs
// (forward_kernel, backward_kernel) with the per-token rows of token_kernels.cuh.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "geopref/cuda/args.cuh"
#include "geopref/cuda/detail/api.cuh"
#include "geopref/cuda/detail/dispatch.cuh"
#include "geopref/cuda/detail/row_forward.cuh"
#include "geopref/cuda/detail/token_kernels.cuh"
#include "geopref/cuda/detail/workspace.cuh"
#include "geopref/cuda/token_logps.cuh"

namespace geopref::cuda {
namespace detail {

/// [N] float arrays: their bytes (empty for a null pointer).
inline byte_range row_bytes(const void* p, int64_t n) noexcept {
  if (p == nullptr || n == 0) return {0, 0};
  return used_bytes(p, n, 1, 1, 4);
}
/// [N] byte arrays (is_top1): their bytes (empty for a null pointer).
inline byte_range byte_rows(const void* p, int64_t n) noexcept {
  if (p == nullptr || n == 0) return {0, 0};
  return used_bytes(p, n, 1, 1, 1);
}
/// Whether any statistic beyond the entropy is asked for.
inline bool wants_statistics(const token_outputs& o) noexcept {
  return o.log_sum_sq_probs != nullptr || o.mean_logits != nullptr || o.is_top1 != nullptr;
}
/// The outputs of the second read (stats_kernel), offset by r0 rows.
inline token_stats_out stats_out(const token_outputs& o, int64_t r0) noexcept {
  token_stats_out s;
  s.entropy = o.entropy != nullptr ? o.entropy + r0 : nullptr;
  s.log_sum_sq_probs = o.log_sum_sq_probs != nullptr ? o.log_sum_sq_probs + r0 : nullptr;
  s.mean_logits = o.mean_logits != nullptr ? o.mean_logits + r0 : nullptr;
  s.is_top1 = o.is_top1 != nullptr ? o.is_top1 + r0 : nullptr;
  return s;
}

/// The bytes of token_outputs' six outputs over N rows (empty when null).
inline std::array<byte_range, 6> token_output_bytes(const token_outputs& a, int64_t n) noexcept {
  return {{row_bytes(a.token_logps, n), row_bytes(a.lse, n), row_bytes(a.entropy, n),
           row_bytes(a.log_sum_sq_probs, n), row_bytes(a.mean_logits, n),
           byte_rows(a.is_top1, n)}};
}

/// The bytes of the per-token backward's four upstream [N] arrays: lse, g_t,
/// e_t and H_t (empty when null).
inline std::array<byte_range, 4> upstream_bytes(const token_grad_inputs& g,
                                                const entropy_upstream& e, int64_t n) noexcept {
  return {{row_bytes(g.lse, n), row_bytes(g.grad_token_logps, n), row_bytes(e.grad_entropy, n),
           row_bytes(e.entropy, n)}};
}

/// Whether any of the byte ranges meets the workspace.
template <size_t K>
inline bool any_meets_workspace(const std::array<byte_range, K>& ranges, const void* workspace,
                                const workspace_layout& w) noexcept {
  for (const byte_range& r : ranges)
    if (meets_workspace(r, workspace, w)) return true;
  return false;
}

/// The per-token backward's upstream checks over N rows: lse and g_t
/// required when N > 0, H_t with e_t; all four 4-byte aligned.
inline status check_upstream(const token_grad_inputs& g, const entropy_upstream& e,
                             int64_t n) noexcept {
  if (n > 0 && (g.lse == nullptr || g.grad_token_logps == nullptr ||
                (e.grad_entropy != nullptr && e.entropy == nullptr)))
    return status::null_pointer;
  if (!aligned(g.lse, 4) || !aligned(g.grad_token_logps, 4) || !aligned(e.grad_entropy, 4) ||
      !aligned(e.entropy, 4))
    return status::misaligned_pointer;
  return status::success;
}

/// The checks of a token_outputs call over N rows before its overlaps
/// (token_logps, linear_token_logps): the inputs' shapes (`shapes()`), then
/// with buffers the inputs' buffers (`inputs()`) and the outputs' own
/// (token_logps required when N > 0, every float output 4-byte aligned).
template <class Shapes, class Inputs>
inline status check_token_entry(const token_outputs& a, int64_t n, bool buffers,
                                const Shapes& shapes, const Inputs& inputs) noexcept {
  status s = shapes();
  if (s != status::success || !buffers) return s;
  s = inputs();
  if (s != status::success) return s;
  if (n > 0 && a.token_logps == nullptr) return status::null_pointer;
  if (!aligned(a.token_logps, 4) || !aligned(a.lse, 4) || !aligned(a.entropy, 4) ||
      !aligned(a.log_sum_sq_probs, 4) || !aligned(a.mean_logits, 4))
    return status::misaligned_pointer;
  return status::success;
}

inline status check_token_logps(const token_logps_args& a, bool buffers) noexcept {
  // The sequence entries' checks, over the rows' blocks (no sequences).
  const token_rows& x = a.rows;
  const int64_t n = x.n_rows;
  const status s = check_token_entry(
      a, n, buffers, [&] { return check_shapes(x, x); }, [&] { return check_buffers(x, x); });
  if (s != status::success || !buffers || n == 0) return s;
  // The outputs are written while blocks still read the logits (and the
  // statistics pass reads lse): none may meet the logits or another output.
  const byte_range z = used_bytes(x.logits, n, x.ld, x.vocab, dtype_bytes(x.logits_dtype));
  const std::array<byte_range, 6> out = token_output_bytes(a, n);
  for (int i = 0; i < 6; ++i) {
    if (ranges_meet(out[i], z)) return status::overlapping_buffers;
    for (int k = i + 1; k < 6; ++k)
      if (ranges_meet(out[i], out[k])) return status::overlapping_buffers;
  }
  return status::success;
}

inline status check_token_grad(const token_grad_args& a, bool buffers) noexcept {
  const token_rows& x = a.rows;
  status s = check_shapes(x, x);
  if (s != status::success) return s;
  s = check_grad_stride(x, x, a.grad_ld);
  if (s != status::success || !buffers) return s;
  s = check_buffers(x, x);
  if (s != status::success) return s;
  const int64_t n = x.n_rows;
  if (n > 0 && a.grad_logits == nullptr) return status::null_pointer;
  s = check_upstream(a, a, n);
  if (s != status::success || n == 0) return s;
  byte_range g{};
  s = check_grad_buffer(x, x, a, &g);
  if (s != status::success) return s;
  // backward_kernel reads lse (and e_t, H_t) while other blocks write the gradient.
  for (const byte_range& u : upstream_bytes(a, a, n))
    if (ranges_meet(u, g)) return status::overlapping_buffers;
  return status::success;
}

/// The rows' label columns (and, grad_in non-null, g_t checked into
/// ws.row_coef); shared with the hidden-state primitive.
inline status enqueue_token_rows(const vocab_rows& r, int64_t ignore_index,
                                 const workspace_view& ws, const float* grad_in,
                                 cudaStream_t stream, const float* egrad_in = nullptr) {
  if (cudaMemsetAsync(ws.flag, 0x7f, sizeof(int), stream) != cudaSuccess) return status::cuda_error;
  if (r.n_rows == 0) return status::success;
  return visit_index(r.label_type, [&](auto tag) {
    using L = typename decltype(tag)::type;
    launch(token_rows_kernel<L, BLOCK>, grid_1d(r.n_rows), BLOCK, stream,
           static_cast<const L*>(r.labels), r.n_rows, r.vocab, ignore_index, grad_in, ws.cols,
           ws.row_coef, ws.flag, egrad_in);
    return last_launch();
  });
}

}  // namespace detail

inline status token_logps(void* workspace, size_t& workspace_bytes, const token_logps_args& args,
                          cudaStream_t stream) noexcept {
  status s = detail::check_token_logps(args, workspace != nullptr);
  if (s != status::success) return s;
  const token_rows& r = args.rows;
  const detail::workspace_layout w =
      detail::make_token_layout(r.n_rows, r.vocab, detail::dtype_bytes(r.logits_dtype), false);
  s = detail::size_workspace(workspace, workspace_bytes, w);
  if (s != status::success || workspace == nullptr) return s;
  if (detail::tokens_meet_workspace(r, r, logits_gradient{}, workspace, w))
    return status::overlapping_buffers;
  if (detail::any_meets_workspace(detail::token_output_bytes(args, r.n_rows), workspace, w))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, w);
  s = detail::enqueue_token_rows(r, r.ignore_index, ws, nullptr, stream);
  if (s != status::success || r.n_rows == 0) return s;
  float* lse = args.lse != nullptr ? args.lse : ws.lse;
  return detail::visit_dtype(r.logits_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using namespace detail;
    const auto* z = static_cast<const T*>(r.logits);
    const status f = enqueue_row_forward(z, r.ld, r.vocab, r.logit_transform, r.n_rows, w.splits,
                                         ws.cols, lse, args.token_logps, ws.partials, stream);
    const bool stats = wants_statistics(args);
    if (f != status::success || (args.entropy == nullptr && !stats)) return f;
    return visit_map<T>(r.logit_transform, [&](auto map) {
      const token_stats_out out = stats_out(args, 0);
      if (stats)
        launch(stats_kernel<T, decltype(map), true, BLOCK>, static_cast<unsigned>(r.n_rows),
               BLOCK, stream, z, r.ld, r.vocab, ws.cols, static_cast<const float*>(lse), out, map);
      else
        launch(stats_kernel<T, decltype(map), false, BLOCK>, static_cast<unsigned>(r.n_rows),
               BLOCK, stream, z, r.ld, r.vocab, ws.cols, static_cast<const float*>(lse), out, map);
      return last_launch() == status::success ? status::success : status::cuda_error;
    });
  });
}

inline status token_logps_grad(void* workspace, size_t& workspace_bytes,
                               const token_grad_args& args, cudaStream_t stream) noexcept {
  status s = detail::check_token_grad(args, workspace != nullptr);
  if (s != status::success) return s;
  const token_rows& r = args.rows;
  const detail::workspace_layout w =
      detail::make_token_layout(r.n_rows, r.vocab, detail::dtype_bytes(r.logits_dtype), true);
  s = detail::size_workspace(workspace, workspace_bytes, w);
  if (s != status::success || workspace == nullptr) return s;
  if (detail::tokens_meet_workspace(r, r, args, workspace, w) ||
      detail::any_meets_workspace(detail::upstream_bytes(args, args, r.n_rows), workspace, w))
    return status::overlapping_buffers;
  const detail::workspace_view ws = detail::carve(workspace, w);
  s = detail::enqueue_token_rows(r, r.ignore_index, ws, args.grad_token_logps, stream,
                                 args.grad_entropy);
  if (s != status::success || r.n_rows == 0) return s;
  const int64_t grad_ld = args.grad_ld == 0 ? r.ld : args.grad_ld;
  if (args.grad_entropy != nullptr)  // with_entropy (arith.cuh): one FFMA per element more
    return detail::enqueue_row_backward<true>(r.logits, r.logits_dtype, r.n_rows, r.vocab, r.ld,
                                              r.logit_transform, w.splits, ws.cols, ws.row_coef,
                                              args.lse, args.grad_logits, grad_ld,
                                              args.grad_float32, stream, args.grad_entropy,
                                              args.entropy);
  return detail::enqueue_row_backward(r.logits, r.logits_dtype, r.n_rows, r.vocab, r.ld,
                                      r.logit_transform, w.splits,
                                      ws.cols, ws.row_coef, args.lse, args.grad_logits, grad_ld,
                                      args.grad_float32, stream);
}

}  // namespace geopref::cuda
