// geopref/cuda/detail/dispatch.cuh — turns the runtime choices (logits
// dtype, label/offset index types, gradient dtype) into template arguments
// once, and enqueues the kernels of a pass in data-flow order.
//
// Only forward_kernel (3 dtypes) and backward_kernel (5 dtype pairs) are
// large; labels and offsets are converted by tiny kernels so that the large
// ones are not also templated on index types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "geopref/cuda/args.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/cuda/detail/workspace.cuh"
// Included by geopref/cuda/geopref.cuh after the argument structs.

namespace geopref::cuda::detail {

template <class T>
struct type_tag {
  using type = T;
};

/// Calls fn(type_tag<T>{}) for the logits element type; fn returns status.
template <class Fn>
status visit_dtype(dtype d, Fn&& fn) {
  switch (d) {
    case dtype::float32: return fn(type_tag<float>{});
    case dtype::float16: return fn(type_tag<__half>{});
    case dtype::bfloat16: return fn(type_tag<__nv_bfloat16>{});
  }
  return status::unsupported_dtype;
}

/// Calls fn(map) with the logits kernels' map (arith.cuh) of the transform
/// `tr` for logits of type T: identity_map for the identity (the plain
/// kernels), scale_map without a cap, softcap_map with one (the MUFU's tanh
/// for 16-bit logits, tanhf for float). The constants are formed in double
/// and rounded once. fn returns status.
template <class T, class Fn>
status visit_map(const logit_transform& tr, Fn&& fn) {
  constexpr double log2e = 1.4426950408889634;
  if (is_identity(tr)) return fn(identity_map{});
  const double slope = tr.scale / tr.temperature;
  if (tr.softcap == 0.0) {
    scale_map m;
    m.a = static_cast<float>(slope);
    m.a_log2e = static_cast<float>(slope * log2e);
    return fn(m);
  }
  softcap_map<sizeof(T) == 2> m;
  m.u = static_cast<float>(tr.scale / tr.softcap);
  m.k = static_cast<float>(tr.softcap / tr.temperature);
  m.k_log2e = static_cast<float>(tr.softcap / tr.temperature * log2e);
  m.slope = static_cast<float>(slope);
  return fn(m);
}

template <class Fn>
status visit_index(index_type d, Fn&& fn) {
  switch (d) {
    case index_type::int32: return fn(type_tag<int32_t>{});
    case index_type::int64: return fn(type_tag<int64_t>{});
  }
  return status::unsupported_dtype;
}

/// 1-D grid for a grid-stride loop over n items.
inline unsigned grid_1d(int64_t n) {
  constexpr int64_t MAX_BLOCKS = 4096;
  int64_t b = (n + BLOCK - 1) / BLOCK;
  if (b > MAX_BLOCKS) b = MAX_BLOCKS;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

/// Whether the launches so far failed. Peeks, never clears: the runtime's
/// error code stays retrievable by the caller (cudaGetLastError) after a call
/// returns status::cuda_error, and an error the caller left pending is
/// reported rather than silently consumed.
inline status last_launch() {
  return cudaPeekAtLastError() == cudaSuccess ? status::success : status::cuda_error;
}

/// Typed views of the carved workspace.
struct workspace_view {
  int* flag;
  int64_t* offsets;
  int32_t* cols;
  int32_t* row_seq;
  float* lse;
  float* token_logp;
  lse_state* partials;
  double* seq_logp;
  int64_t* seq_count;
  double* pair_coef;
  char* pair_scratch;
  float* seq_grad;
  float* row_coef;
};

inline workspace_view carve(void* workspace, const workspace_layout& w) {
  char* base = reinterpret_cast<char*>(align_up_ptr(reinterpret_cast<uintptr_t>(workspace)));
  workspace_view v;
  v.flag = reinterpret_cast<int*>(base + w.flag);
  v.offsets = reinterpret_cast<int64_t*>(base + w.offsets);
  v.cols = reinterpret_cast<int32_t*>(base + w.cols);
  v.row_seq = reinterpret_cast<int32_t*>(base + w.row_seq);
  v.lse = reinterpret_cast<float*>(base + w.lse);
  v.token_logp = reinterpret_cast<float*>(base + w.token_logp);
  v.partials = reinterpret_cast<lse_state*>(base + w.partials);
  v.seq_logp = reinterpret_cast<double*>(base + w.seq_logp);
  v.seq_count = reinterpret_cast<int64_t*>(base + w.seq_count);
  v.pair_coef = reinterpret_cast<double*>(base + w.pair_coef);
  v.pair_scratch = base + w.pair_scratch;
  v.seq_grad = reinterpret_cast<float*>(base + w.seq_grad);
  v.row_coef = reinterpret_cast<float*>(base + w.row_coef);
  return v;
}

/// Resets the flag, then offsets → rows: the canonical offsets, the label
/// column and the sequence of every row (forward and logits_grad).
inline status enqueue_rows(const vocab_rows& x, const sequences& q, int64_t ignore_index,
                           const workspace_view& ws, cudaStream_t stream) {
  if (cudaMemsetAsync(ws.flag, 0x7f, sizeof(int), stream) != cudaSuccess) return status::cuda_error;
  const int64_t n = x.n_rows, s = q.n_seqs;
  if (s > 0) {
    const status st = visit_index(q.offset_type, [&](auto tag) {
      using O = typename decltype(tag)::type;
      launch(offsets_kernel<O, BLOCK>, grid_1d(s + 1), BLOCK, stream,
             static_cast<const O*>(q.offsets), s, n, ws.offsets, ws.flag);
      return last_launch();
    });
    if (st != status::success) return st;
  }
  if (n > 0) {
    return visit_index(x.label_type, [&](auto tag) {
      using L = typename decltype(tag)::type;
      launch(rows_kernel<L, BLOCK>, grid_1d(n), BLOCK, stream, static_cast<const L*>(x.labels), n,
             x.vocab, ignore_index, ws.offsets, s, ws.cols, ws.row_seq, ws.flag);
      return last_launch();
    });
  }
  return status::success;
}

/// The per-sequence sums L_s, n_s from the per-row ℓ_t in the workspace
/// (and the caller's copies); validates `ref_logps` (train_step). Also the
/// fused-linear path's step after its chunks.
inline status enqueue_sequences(const vocab_rows& x, const sequences& q,
                                const token_weighting& tw, const options& opt,
                                const workspace_view& ws, const float* ref_logps, float* out_seq,
                                int64_t* out_counts, cudaStream_t stream) {
  const int64_t n = x.n_rows, s = q.n_seqs;
  if (s > 0) {
    constexpr int64_t MAX_SEQ_BLOCKS = 65535;
    const auto blocks = static_cast<unsigned>(s < MAX_SEQ_BLOCKS ? s : MAX_SEQ_BLOCKS);
    launch(sequence_kernel<BLOCK>, blocks, BLOCK, stream, ws.offsets, s, n, ws.token_logp, ws.cols,
           tw.token_weights, uses_average_logps(opt), ref_logps, ws.seq_logp, ws.seq_count, out_seq,
           out_counts, ws.flag, static_cast<const int64_t*>(nullptr), int64_t{0});
    if (last_launch() != status::success) return status::cuda_error;
  }
  return status::success;
}

/// Forward pass up to the per-sequence log-probs: enqueue_rows, then
/// forward (→ combine) → sequence. `ref_logps` is only validated here
/// (train_step). Writes out's seq_logps and seq_counts (when non-null).
inline status enqueue_forward(const token_inputs& x, const options& opt, const workspace_layout& w,
                              const workspace_view& ws, const float* ref_logps,
                              const logps_outputs& out, cudaStream_t stream) {
  status st = enqueue_rows(x, x, opt.ignore_index, ws, stream);
  if (st != status::success) return st;
  const int64_t n = x.n_rows;
  if (n > 0) {
    st = visit_dtype(x.logits_dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(w.splits));
      return visit_map<T>(x.logit_transform, [&](auto map) {
        launch(forward_kernel<T, decltype(map), BLOCK>, grid, BLOCK, stream,
               static_cast<const T*>(x.logits), x.ld, x.vocab, ws.cols, ws.lse, ws.token_logp,
               ws.partials, map);
        return last_launch();
      });
    });
    if (st != status::success) return st;
    if (w.splits > 1) {
      launch(combine_kernel<BLOCK>, grid_1d(n), BLOCK, stream, ws.partials, w.splits, n, ws.cols,
             ws.lse, ws.token_logp);
      if (last_launch() != status::success) return status::cuda_error;
    }
  }
  return enqueue_sequences(x, x, x, opt, ws, ref_logps, out.seq_logps, out.seq_counts, stream);
}

/// Copies the optional per-row outputs out of the workspace.
inline status copy_rows(const workspace_view& ws, int64_t n, const row_outputs& out,
                        cudaStream_t stream) {
  float* const lse = out.lse;
  float* const token_logps = out.token_logps;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (n > 0 && lse != nullptr &&
      cudaMemcpyAsync(lse, ws.lse, bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
    return status::cuda_error;
  if (n > 0 && token_logps != nullptr &&
      cudaMemcpyAsync(token_logps, ws.token_logp, bytes, cudaMemcpyDeviceToDevice, stream) !=
          cudaSuccess)
    return status::cuda_error;
  return status::success;
}

/// The one backward pass over N > 0 rows, for every caller: grid (N, splits)
/// of backward_kernel from the label columns [N] (−1: unscored, zero row),
/// one coefficient per row g_t [N] and lse [N]. ENTROPY_UPSTREAM (the
/// per-token primitive only): also the entropy's upstream e_t [N] (checked,
/// 0 for unscored rows) and the forward's H_t [N] (with_entropy, arith.cuh).
template <bool ENTROPY_UPSTREAM = false>
inline status enqueue_row_backward(const void* logits, dtype logits_dtype, int64_t n_rows,
                                   int64_t vocab, int64_t ld, const logit_transform& transform,
                                   int splits, const int32_t* cols, const float* row_grad,
                                   const float* lse, void* grad_logits, int64_t grad_ld,
                                   bool grad_float32, cudaStream_t stream,
                                   const float* row_egrad = nullptr,
                                   const float* entropy = nullptr) {
  return visit_dtype(logits_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(splits));
    const auto* z = static_cast<const T*>(logits);
    return visit_map<T>(transform, [&](auto base) {
      const auto map = [&] {
        if constexpr (ENTROPY_UPSTREAM) {
          with_entropy<decltype(base)> m;
          m.base = base;
          m.egrad = row_egrad;
          m.entropy = entropy;
          return m;
        } else {
          return base;
        }
      }();
      using Map = std::remove_const_t<decltype(map)>;
      if (grad_float32) {
        launch(backward_kernel<T, float, Map, BLOCK>, grid, BLOCK, stream, z, ld, vocab, cols,
               row_grad, lse, static_cast<float*>(grad_logits), grad_ld, map);
      } else {
        launch(backward_kernel<T, T, Map, BLOCK>, grid, BLOCK, stream, z, ld, vocab, cols,
               row_grad, lse, static_cast<T*>(grad_logits), grad_ld, map);
      }
      return last_launch();
    });
  });
}

/// The sequence-level backward over N > 0 rows, as a per-token one: g_t =
/// g_s · w_t per row (row_coef_kernel), then enqueue_row_backward, from the
/// rows converted by enqueue_rows, g_s [S] and lse [N].
inline status enqueue_backward(const token_inputs& x, const workspace_layout& w,
                               const workspace_view& ws, const float* seq_grad, const float* lse,
                               const logits_gradient& d, cudaStream_t stream) {
  const int64_t grad_ld = d.grad_ld == 0 ? x.ld : d.grad_ld;
  launch(row_coef_kernel<BLOCK>, grid_1d(x.n_rows), BLOCK, stream, ws.row_seq, seq_grad,
         x.token_weights, x.n_rows, ws.row_coef, ws.flag);
  if (last_launch() != status::success) return status::cuda_error;
  return enqueue_row_backward(x.logits, x.logits_dtype, x.n_rows, x.vocab, x.ld,
                              x.logit_transform, w.splits,
                              ws.cols, ws.row_coef, lse, d.grad_logits, grad_ld, d.grad_float32,
                              stream);
}

/// pair_kernel's parameters for a step's pairs, outputs and workspace over
/// S sequences (every pair; fused linear's one pass narrows them to a chunk's).
inline pair_params make_pair_params(const pair_set& a, const train_outputs& out,
                                    int64_t n_seqs, const options& opt, const workspace_view& ws) {
  const int64_t P = a.n_pairs;
  pair_params p;
  static_cast<pair_set&>(p) = a;
  p.n_seqs = n_seqs;
  p.seq_sum = ws.seq_logp;
  p.seq_count = ws.seq_count;
  p.config = opt.loss;
  p.average_logps = opt.average_logps;
  p.shown_average = uses_average_logps(opt);
  p.divisor = reduction_divisor(opt, P);
  p.per_pair = opt.reduce == reduction::none;
  p.loss_out = out.loss;
  p.stats = out.stats;
  p.sums = out.stat_sums;
  p.nll_tokens = opt.nll_tokens;
  p.nll_weight = opt.nll_weight;
  p.coef = ws.pair_coef;
  auto* slot = reinterpret_cast<double*>(ws.pair_scratch);
  p.pair_loss = slot;
  p.scale = slot + P;
  p.prob = slot + 2 * P;
  p.weight = slot + 3 * P;
  p.sort_x = slot + 4 * P;
  p.sort_y = slot + 5 * P;
  p.key_x = reinterpret_cast<uint64_t*>(slot + 6 * P);
  p.key_y = reinterpret_cast<uint64_t*>(slot + 7 * P);
  p.perm_x = reinterpret_cast<int64_t*>(slot + 8 * P);
  p.perm_y = reinterpret_cast<int64_t*>(slot + 9 * P);
  p.live = reinterpret_cast<int64_t*>(slot + 10 * P);
  static_assert(PAIR_SCRATCH_SLOTS == 11, "pair_kernel's scratch: 11 arrays of P 8-byte slots");
  p.flag = ws.flag;
  return p;
}

/// The pair step: pair loss and metrics (pair_kernel), then g_s (written
/// to out.grad_seq_logps when non-null) when asked for or when a backward
/// follows. Shared by train_step and the fused-linear and vocab-parallel steps.
template <class MarginFor>
inline status enqueue_pair_step(const pair_set& a, const train_outputs& out, int64_t n_seqs,
                                bool backward, const options& opt, const workspace_view& ws,
                                const MarginFor& margin_for, cudaStream_t stream) {
  const pair_params p = make_pair_params(a, out, n_seqs, opt, ws);
  launch(pair_kernel<BLOCK, MarginFor>, 1, BLOCK, stream, p, margin_for);
  if (last_launch() != status::success) return status::cuda_error;
  if (n_seqs > 0 && (backward || out.grad_seq_logps != nullptr)) {
    launch(seq_grad_kernel<BLOCK>, grid_1d(n_seqs), BLOCK, stream, a.pairs, a.n_pairs, n_seqs,
           ws.pair_coef, ws.seq_grad, out.grad_seq_logps);
    if (last_launch() != status::success) return status::cuda_error;
  }
  return status::success;
}

/// Pair loss, metrics, per-sequence gradients and the backward pass, with
/// the margin functors `margin_for(t)` (builtin_margin, or a caller's loss).
template <class MarginFor>
inline status enqueue_train_tail(const train_args& a, const options& opt,
                                 const workspace_layout& w, const workspace_view& ws,
                                 const MarginFor& margin_for, cudaStream_t stream) {
  const token_inputs& x = a.tokens;
  const bool backward = a.grad_logits != nullptr && x.n_rows > 0;
  const status st = enqueue_pair_step(a, a, x.n_seqs, backward, opt, ws, margin_for, stream);
  if (st != status::success || !backward) return st;
  return enqueue_backward(x, w, ws, ws.seq_grad, ws.lse, a, stream);
}

}  // namespace geopref::cuda::detail
