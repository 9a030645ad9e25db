// geopref/cuda/detail/linear_token.cuh — definitions of
// geopref/cuda/linear_token_logps.cuh: the per-token primitive's rows
// (token_rows_kernel) around fused_linear's chunked passes, with the pair
// step left out.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/linear_token_logps.cuh"
#include "geopref/cuda/token_logps.cuh"
#include "geopref/cuda/detail/fused_linear.cuh"
#include "geopref/cuda/detail/row_forward.cuh"
#include "geopref/cuda/detail/token_api.cuh"
#include "geopref/cuda/detail/token_kernels.cuh"

namespace geopref::cuda {
namespace detail {

/// The rows as fused_linear's inputs: the same two blocks (linear_source,
/// vocab_rows), no sequences and no token weights, so that its shape,
/// buffer, workspace and overlap checks and its chunk loop apply unchanged.
inline linear_inputs unsequenced(const linear_token_rows& r) noexcept {
  linear_inputs in;
  static_cast<linear_source&>(in) = r;
  static_cast<vocab_rows&>(in) = r;
  return in;
}

/// The [N] float arrays `rows` against the inputs H, W, b (read by every
/// chunk's GEMM while they are written or read) and one another.
inline bool token_rows_meet(const linear_inputs& in, const byte_range* rows, int n_rows_arrays,
                            const byte_range* others, int n_others) noexcept {
  const int elem = dtype_bytes(in.type);
  const int64_t Hd = in.hidden_size;
  byte_range inputs[3] = {{0, 0}, {0, 0}, {0, 0}};
  inputs[0] = used_bytes(in.hidden, in.n_rows, linear_ld(in.ld_hidden, Hd), Hd, elem);
  inputs[1] = used_bytes(in.weight, in.vocab, linear_ld(in.ld_weight, Hd), Hd, elem);
  if (in.bias != nullptr) inputs[2] = used_bytes(in.bias, 1, in.vocab, in.vocab, elem);
  for (int i = 0; i < n_rows_arrays; ++i) {
    if (rows[i].begin == rows[i].end) continue;
    for (const byte_range& x : inputs)
      if (x.begin != x.end && ranges_meet(rows[i], x)) return true;
    for (int j = 0; j < n_others; ++j)
      if (others[j].begin != others[j].end && ranges_meet(rows[i], others[j])) return true;
    for (int j = i + 1; j < n_rows_arrays; ++j)
      if (rows[j].begin != rows[j].end && ranges_meet(rows[i], rows[j])) return true;
  }
  return false;
}

inline status check_linear_token_logps(const linear_token_logps_args& a, bool buffers) noexcept {
  const linear_inputs in = unsequenced(a.rows);
  const int64_t n = in.n_rows;
  const status s = check_token_entry(
      a, n, buffers, [&] { return check_linear_shapes(in); },
      [&] { return check_linear_buffers(in); });
  if (s != status::success || !buffers || n == 0) return s;
  const std::array<byte_range, 6> out = token_output_bytes(a, n);
  return token_rows_meet(in, out.data(), 6, nullptr, 0) ? status::overlapping_buffers
                                                        : status::success;
}

inline status check_linear_token_grad(const linear_token_grad_args& a, bool buffers) noexcept {
  linear_step_args t;  // no pairs: check_linear_train checks shapes, strides, gradients
  t.in = unsequenced(a.rows);
  static_cast<linear_gradients&>(t) = a;
  status s = check_linear_train(t, options{}, buffers);
  if (s != status::success || !buffers) return s;
  const linear_inputs& in = t.in;
  const int64_t n = in.n_rows, Hd = in.hidden_size;
  s = check_upstream(a, a, n);
  if (s != status::success || n == 0) return s;
  // lse is read by every chunk's backward_kernel while the gradients are
  // written; an lse or g_t inside H, W or b would be read as both.
  const int elem = dtype_bytes(in.type);
  byte_range outs[3] = {{0, 0}, {0, 0}, {0, 0}};
  if (a.grad_hidden != nullptr)
    outs[0] = used_bytes(a.grad_hidden, n, linear_ld(a.ld_grad_hidden, Hd), Hd, elem);
  if (a.grad_weight != nullptr)
    outs[1] = used_bytes(a.grad_weight, in.vocab, linear_ld(a.ld_grad_weight, Hd), Hd,
                         a.grad_weight_float32 ? 4 : elem);
  if (a.grad_bias != nullptr) outs[2] = used_bytes(a.grad_bias, 1, in.vocab, in.vocab, 4);
  const std::array<byte_range, 4> rows = upstream_bytes(a, a, n);
  // lse, g_t, e_t and H_t may share memory with one another (all only read):
  // check each alone against the inputs and the gradients.
  for (int i = 0; i < 4; ++i)
    if (token_rows_meet(in, &rows[i], 1, outs, 3)) return status::overlapping_buffers;
  return status::success;
}

/// The forward over every chunk, through fused_linear's chunk loop: Z_c and
/// forward_kernel (chunk_forward, writing through `out`: the caller's lse
/// and ℓ_t), combine_kernel for split rows, stats_kernel (the entropy) when asked.
template <class T>
inline status linear_token_forward(cublasHandle_t h, const linear_inputs& in,
                                   const linear_layout& l, const workspace_view& ws,
                                   lse_state* partials, T* chunk, float* lse, float* token_logps,
                                   const token_outputs& stats, cudaStream_t stream) {
  const int k = l.base.splits;
  workspace_view out = ws;
  out.lse = lse;
  out.token_logp = token_logps;
  return for_each_chunk(in.n_rows, l.chunk_rows, [&](int64_t r0, int64_t rows) {
    status st = chunk_forward<T>(h, in, l, r0, rows, ws.cols, out, partials, chunk, stream);
    if (st != status::success) return st;
    st = enqueue_combine(partials, k, rows, ws.cols + r0, lse + r0, token_logps + r0, stream);
    if (st != status::success) return st;
    const bool more = wants_statistics(stats);
    if (stats.entropy != nullptr || more) {
      st = visit_map<T>(in.logit_transform, [&](auto map) {
        const token_stats_out o = stats_out(stats, r0);
        if (more)
          launch(stats_kernel<T, decltype(map), true, BLOCK>, static_cast<unsigned>(rows), BLOCK,
                 stream, static_cast<const T*>(chunk), l.ldc, in.vocab, ws.cols + r0,
                 static_cast<const float*>(lse + r0), o, map);
        else
          launch(stats_kernel<T, decltype(map), false, BLOCK>, static_cast<unsigned>(rows), BLOCK,
                 stream, static_cast<const T*>(chunk), l.ldc, in.vocab, ws.cols + r0,
                 static_cast<const float*>(lse + r0), o, map);
        return last_launch();
      });
      if (st != status::success) return status::cuda_error;
    }
    return status::success;
  });
}

}  // namespace detail

inline status linear_token_logps(void* workspace, size_t& workspace_bytes,
                                 const linear_token_logps_args& args,
                                 cudaStream_t stream) noexcept {
  status s = detail::check_linear_token_logps(args, workspace != nullptr);
  if (s != status::success) return s;
  const linear_inputs in = detail::unsequenced(args.rows);
  detail::linear_layout l;
  s = detail::linear_workspace(workspace, workspace_bytes, in, 0, false, nullptr, &l);
  if (s != status::success || workspace == nullptr) return s;
  detail::workspace_layout whole = l.base;
  whole.bytes = l.bytes;
  if (detail::any_meets_workspace(detail::token_output_bytes(args, in.n_rows), workspace, whole))
    return status::overlapping_buffers;
  detail::lse_state* partials = nullptr;
  void* chunk = nullptr;
  const detail::workspace_view ws = detail::carve_linear(workspace, l, &partials, &chunk);
  s = detail::enqueue_token_rows(args.rows, args.rows.ignore_index, ws, nullptr, stream);
  if (s != status::success || in.n_rows == 0) return s;
  detail::blas_scope blas;
  s = blas.open(in.cublas, stream);
  if (s != status::success) return s;
  float* lse = args.lse != nullptr ? args.lse : ws.lse;
  return detail::visit_dtype(in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return detail::linear_token_forward<T>(blas.get(), in, l, ws, partials, static_cast<T*>(chunk),
                                           lse, args.token_logps, args, stream);
  });
}

inline status linear_token_logps_grad(void* workspace, size_t& workspace_bytes,
                                      const linear_token_grad_args& args,
                                      cudaStream_t stream) noexcept {
  status s = detail::check_linear_token_grad(args, workspace != nullptr);
  if (s != status::success) return s;
  linear_step_args t;  // the per-token backward is pass 2 without pairs
  t.in = detail::unsequenced(args.rows);
  static_cast<linear_gradients&>(t) = args;
  detail::linear_layout l;
  // train: the layout's row_coef [N] holds the checked g_t.
  s = detail::linear_workspace(workspace, workspace_bytes, t.in, 0, true, &t, &l);
  if (s != status::success || workspace == nullptr) return s;
  detail::workspace_layout whole = l.base;
  whole.bytes = l.bytes;
  if (detail::any_meets_workspace(detail::upstream_bytes(args, args, t.in.n_rows), workspace,
                                  whole))
    return status::overlapping_buffers;
  detail::lse_state* partials = nullptr;
  void* chunk = nullptr;
  detail::workspace_view ws = detail::carve_linear(workspace, l, &partials, &chunk);
  // Label columns, g_t checked into ws.row_coef (0 for unscored rows), e_t checked.
  s = detail::enqueue_token_rows(args.rows, args.rows.ignore_index, ws, args.grad_token_logps,
                                 stream, args.grad_entropy);
  if (s != status::success) return s;
  // backward_kernel reads lse through the view; the caller's is only read.
  ws.lse = const_cast<float*>(args.lse);
  detail::blas_scope blas;
  s = blas.open(t.in.cublas, stream);
  if (s != status::success) return s;
  return detail::visit_dtype(t.in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (args.grad_entropy != nullptr)  // with_entropy (arith.cuh), as token_logps_grad
      return detail::linear_backward<T, true>(blas.get(), t, l, ws, static_cast<T*>(chunk),
                                              stream, /*row_coef_ready=*/true, args.grad_entropy,
                                              args.entropy);
    return detail::linear_backward<T>(blas.get(), t, l, ws, static_cast<T*>(chunk), stream,
                                      /*row_coef_ready=*/true);
  });
}

}  // namespace geopref::cuda
