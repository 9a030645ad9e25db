// geopref/cuda/detail/fused_linear.cuh — definitions of
// geopref/cuda/fused_linear.cuh: checks, the chunked workspace, the cuBLAS
// calls and the chunk loop around the existing fused kernels.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <limits>

// geopref.cuh before anything of detail/ (it declares the entries, then
// includes api.cuh); fused_linear.cuh for linear_inputs (it includes this
// file last, so either header may come first).
#include "geopref/cuda/geopref.cuh"
#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/detail/api.cuh"
#include "geopref/cuda/detail/dispatch.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/cuda/detail/one_pass.cuh"
#include "geopref/cuda/detail/row_forward.cuh"
#include "geopref/cuda/detail/workspace.cuh"

namespace geopref::cuda::detail {

// ---------------------------------------------------------------------------
// The two small kernels of the path (everything else is cuBLAS or the
// kernels of train_step).

/// out[r, v] = bias[v] for r < rows, v < V: the chunk is then the C operand
/// of the logits GEMM with beta = 1, so Z = H·Wᵀ + b is rounded once, as a
/// GEMM with a bias epilogue rounds it.
template <class T, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    bias_rows_kernel(const T* __restrict__ bias, int64_t vocab, int64_t rows, int64_t ld,
                     T* __restrict__ out) {
  const int64_t n = rows * vocab;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / vocab, v = i - r * vocab;
    out[r * ld + v] = bias[v];
  }
}

/// One thread per column: grad_bias[v] (+)= Σ_r grad[r, v] over the chunk's
/// rows in row order (fixed order, no atomics: deterministic).
template <class T, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    bias_grad_kernel(const T* __restrict__ grad, int64_t ld, int64_t rows, int64_t vocab,
                     bool add, float* __restrict__ grad_bias) {
  for (int64_t v = global_thread(); v < vocab; v += grid_threads()) {
    float s = 0.0f;
    for (int64_t r = 0; r < rows; ++r) s += to_float(grad[r * ld + v]);
    grad_bias[v] = add ? grad_bias[v] + s : s;
  }
}

// ---------------------------------------------------------------------------
// Workspace: train_step's per-row / per-sequence / per-pair bookkeeping for
// all N rows (without its per-row split partials), then the chunk's split
// partials and the chunk's logits.

struct linear_layout {
  workspace_layout base;  // offsets relative to the aligned base
  int64_t chunk_rows = 0;  // C
  int64_t ldc = 0;         // chunk row stride: V rounded up to 16 bytes
  size_t slice_cols = 0;   // [N] int32 when asked (the vocab-parallel path's label columns)
  size_t plan = 0;         // [one_pass_slots(S, P)] int64 (fused_linear_step, either path)
  size_t partials = 0;     // [C, base.splits] lse_state when base.splits > 1
  size_t chunk = 0;        // [C, ldc] of the input dtype
  size_t bytes = 0;        // total from the aligned base
};

inline int64_t linear_ld(int64_t v, int64_t def) { return v == 0 ? def : v; }

/// Rows of logits the budget holds (0 when not even one).
inline int64_t budget_rows(size_t chunk_bytes, int64_t ldc, int elem) {
  const auto row = static_cast<size_t>(ldc) * static_cast<size_t>(elem);
  return row == 0 ? 0 : static_cast<int64_t>(chunk_bytes / row);
}

/// min_splits: the vocab-parallel records need the forward's per-split
/// partial states, so at least 2 there; slice_cols: a [N] int32 piece for
/// the slice's label columns (geopref/cuda/detail/vocab_linear.cuh).
/// plan: fused_linear_step's room for the one-pass plan (reserved whether or
/// not that path runs, so the size never depends on the path).
inline linear_layout make_linear_layout(const scored_linear& in, int64_t n_pairs, bool train,
                                        int min_splits = 1, bool slice_cols = false,
                                        bool plan = false) {
  linear_layout l;
  const int elem = dtype_bytes(in.type);
  // vocab 0: choose_splits then gives 1, so the base has no [N, splits]
  // partials; the chunk's own follow.
  l.base = make_layout(in.n_rows, 0, elem, in.n_seqs, n_pairs, train);
  const int64_t per16 = 16 / elem;
  l.ldc = (in.vocab + per16 - 1) / per16 * per16;
  const int64_t fit = budget_rows(in.chunk_bytes, l.ldc, elem);
  l.chunk_rows = fit < in.n_rows ? fit : in.n_rows;
  l.base.splits = choose_splits(l.chunk_rows, in.vocab, elem);
  if (l.base.splits < min_splits) l.base.splits = min_splits;
  size_t used = l.base.bytes;
  l.slice_cols = used;
  if (slice_cols) used += align_up(static_cast<size_t>(in.n_rows) * sizeof(int32_t), WORKSPACE_ALIGN);
  l.plan = used;
  if (plan) used += align_up(one_pass_slots(in.n_seqs, n_pairs) * sizeof(int64_t), WORKSPACE_ALIGN);
  l.partials = used;
  if (l.base.splits > 1)
    used += align_up(static_cast<size_t>(l.chunk_rows) * static_cast<size_t>(l.base.splits) *
                         sizeof(lse_state),
                     WORKSPACE_ALIGN);
  l.chunk = used;
  used += align_up(static_cast<size_t>(l.chunk_rows) * static_cast<size_t>(l.ldc) *
                       static_cast<size_t>(elem),
                   WORKSPACE_ALIGN);
  l.bytes = used;
  return l;
}

// ---------------------------------------------------------------------------
// Checks.

inline status check_linear_shapes(const scored_linear& in) noexcept {
  constexpr int64_t I32 = std::numeric_limits<int32_t>::max();
  if (in.n_rows < 0 || in.vocab < 0 || in.hidden_size < 0 || in.n_seqs < 0)
    return status::invalid_shape;
  // cuBLAS takes int sizes and strides; rows and sequences are int32 per row.
  if (in.n_rows > I32 || in.vocab > I32 || in.hidden_size > I32 || in.n_seqs >= I32)
    return status::invalid_shape;
  if (in.n_rows > 0 && (in.vocab == 0 || in.hidden_size == 0)) return status::invalid_shape;
  if (const status s = validate(in.logit_transform); s != status::success) return s;
  const int64_t ldh = linear_ld(in.ld_hidden, in.hidden_size);
  const int64_t ldw = linear_ld(in.ld_weight, in.hidden_size);
  if (ldh < in.hidden_size || ldw < in.hidden_size || ldh > I32 || ldw > I32)
    return status::invalid_stride;
  if (dtype_bytes(in.type) == 0 || index_bytes(in.label_type) == 0 ||
      index_bytes(in.offset_type) == 0)
    return status::unsupported_dtype;
  // The chunk's stride (V rounded up to 16 bytes) must also be an int.
  if (in.vocab > I32 - 8) return status::invalid_shape;
  if (in.n_rows > 0 &&
      budget_rows(in.chunk_bytes, make_linear_layout(in, 0, false).ldc, dtype_bytes(in.type)) < 1)
    return status::workspace_too_small;  // the budget holds less than one row of logits
  return status::success;
}

/// Every null pointer is reported before any misaligned one; tw non-null:
/// the token weights' alignment too.
inline status check_linear_buffers(const scored_linear& in,
                                   const token_weighting* tw = nullptr) noexcept {
  const int elem = dtype_bytes(in.type);
  if (in.n_rows > 0 && (in.hidden == nullptr || in.weight == nullptr || in.labels == nullptr))
    return status::null_pointer;
  if (in.n_seqs > 0 && in.offsets == nullptr) return status::null_pointer;
  if (!aligned(in.hidden, elem) || !aligned(in.weight, elem) || !aligned(in.bias, elem) ||
      !aligned(in.labels, index_bytes(in.label_type)) ||
      !aligned(in.offsets, index_bytes(in.offset_type)) ||
      (tw != nullptr && !aligned(tw->token_weights, 4)))
    return status::misaligned_pointer;
  return status::success;
}
inline status check_linear_buffers(const linear_inputs& in) noexcept {
  return check_linear_buffers(in, &in);
}

inline status check_linear_train(const linear_step_args& a, const options& opt,
                                 bool buffers) noexcept {
  const linear_inputs& in = a.in;
  status s = check_step_pairs(a, in.n_seqs, opt, [&] { return check_linear_shapes(in); });
  if (s != status::success) return s;
  const int64_t Hd = in.hidden_size;
  const int64_t ldgh = linear_ld(a.ld_grad_hidden, Hd), ldgw = linear_ld(a.ld_grad_weight, Hd);
  constexpr int64_t I32 = std::numeric_limits<int32_t>::max();
  if (ldgh < Hd || ldgw < Hd || ldgh > I32 || ldgw > I32) return status::invalid_stride;
  if (a.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;
  if (!buffers) return status::success;

  s = check_linear_buffers(in);
  if (s != status::success) return s;
  const int elem = dtype_bytes(in.type);
  if (!aligned(a.pairs, 8) || !aligned(a.soft_labels, 4) || !aligned(a.ref_logps, 4) ||
      !aligned(a.weights, 4) || !aligned(a.grad_output, 4) || !aligned(a.loss, 4) ||
      !aligned(a.stats, alignof(metrics)) || !aligned(a.stat_sums, alignof(metric_sums)) ||
      !aligned(a.seq_logps, 4) ||
      !aligned(a.seq_counts, 8) || !aligned(a.token_logps, 4) || !aligned(a.lse, 4) ||
      !aligned(a.grad_seq_logps, 4) || !aligned(a.grad_hidden, elem) ||
      !aligned(a.grad_weight, a.grad_weight_float32 ? 4 : elem) || !aligned(a.grad_bias, 4))
    return status::misaligned_pointer;
  // The gradients are written while the inputs are still read (pass 2 reads
  // H and W for every chunk): no gradient may meet an input or another.
  if (in.vocab == 0 || Hd == 0) return status::success;
  byte_range inputs[3] = {{0, 0}, {0, 0}, {0, 0}};
  if (in.n_rows > 0)
    inputs[0] = used_bytes(in.hidden, in.n_rows, linear_ld(in.ld_hidden, Hd), Hd, elem);
  inputs[1] = used_bytes(in.weight, in.vocab, linear_ld(in.ld_weight, Hd), Hd, elem);
  if (in.bias != nullptr) inputs[2] = used_bytes(in.bias, 1, in.vocab, in.vocab, elem);
  byte_range outs[3] = {{0, 0}, {0, 0}, {0, 0}};
  if (a.grad_hidden != nullptr && in.n_rows > 0)
    outs[0] = used_bytes(a.grad_hidden, in.n_rows, ldgh, Hd, elem);
  if (a.grad_weight != nullptr)
    outs[1] = used_bytes(a.grad_weight, in.vocab, ldgw, Hd, a.grad_weight_float32 ? 4 : elem);
  if (a.grad_bias != nullptr) outs[2] = used_bytes(a.grad_bias, 1, in.vocab, in.vocab, 4);
  for (int i = 0; i < 3; ++i) {
    if (outs[i].begin == outs[i].end) continue;
    for (int j = 0; j < 3; ++j)
      if (inputs[j].begin != inputs[j].end && ranges_meet(outs[i], inputs[j]))
        return status::overlapping_buffers;
    for (int j = i + 1; j < 3; ++j)
      if (outs[j].begin != outs[j].end && ranges_meet(outs[i], outs[j]))
        return status::overlapping_buffers;
  }
  return status::success;
}

inline status check_linear_logps(const linear_logps_args& a, const options& opt,
                                 bool buffers) noexcept {
  return check_forward(
      a, a.in.n_seqs, opt, buffers, [&] { return check_linear_shapes(a.in); },
      [&] { return check_linear_buffers(a.in); });
}

/// Inputs and gradients against the workspace (the chunk and bookkeeping
/// are written while they are read or written).
inline bool linear_meets_workspace(const scored_linear& in, const void* workspace,
                                   const workspace_layout& w, const linear_gradients* a) {
  const int elem = dtype_bytes(in.type);
  const int64_t Hd = in.hidden_size;
  if (in.n_rows == 0 || Hd == 0 || in.vocab == 0) return false;
  if (meets_workspace(used_bytes(in.hidden, in.n_rows, linear_ld(in.ld_hidden, Hd), Hd, elem),
                      workspace, w) ||
      meets_workspace(used_bytes(in.weight, in.vocab, linear_ld(in.ld_weight, Hd), Hd, elem),
                      workspace, w) ||
      (in.bias != nullptr &&
       meets_workspace(used_bytes(in.bias, 1, in.vocab, in.vocab, elem), workspace, w)))
    return true;
  if (a == nullptr) return false;
  return (a->grad_hidden != nullptr &&
          meets_workspace(used_bytes(a->grad_hidden, in.n_rows, linear_ld(a->ld_grad_hidden, Hd),
                                     Hd, elem),
                          workspace, w)) ||
         (a->grad_weight != nullptr &&
          meets_workspace(used_bytes(a->grad_weight, in.vocab, linear_ld(a->ld_grad_weight, Hd),
                                     Hd, a->grad_weight_float32 ? 4 : elem),
                          workspace, w)) ||
         (a->grad_bias != nullptr &&
          meets_workspace(used_bytes(a->grad_bias, 1, in.vocab, in.vocab, 4), workspace, w));
}

// ---------------------------------------------------------------------------
// cuBLAS.

inline cudaDataType_t blas_type(dtype d) {
  switch (d) {
    case dtype::float16: return CUDA_R_16F;
    case dtype::bfloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

/// The handle for one call: the caller's (stream and pointer mode set, then
/// restored) or one of its own (created, destroyed at the end).
class blas_scope {
 public:
  status open(cublasHandle_t caller, cudaStream_t stream) {
    if (caller == nullptr) {
      if (cublasCreate(&h_) != CUBLAS_STATUS_SUCCESS) return status::cuda_error;
      own_ = true;
    } else {
      h_ = caller;
      if (cublasGetStream(h_, &old_stream_) != CUBLAS_STATUS_SUCCESS ||
          cublasGetPointerMode(h_, &old_mode_) != CUBLAS_STATUS_SUCCESS)
        return status::cuda_error;
      restore_ = true;
    }
    if (cublasSetStream(h_, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetPointerMode(h_, CUBLAS_POINTER_MODE_HOST) != CUBLAS_STATUS_SUCCESS)
      return status::cuda_error;
    return status::success;
  }
  ~blas_scope() {
    if (own_) {
      cublasDestroy(h_);
    } else if (restore_) {
      cublasSetStream(h_, old_stream_);
      cublasSetPointerMode(h_, old_mode_);
    }
  }
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
  bool own_ = false, restore_ = false;
  cudaStream_t old_stream_ = nullptr;
  cublasPointerMode_t old_mode_ = CUBLAS_POINTER_MODE_HOST;
};

/// Row-major GEMMs as column-major cuBLAS calls (a row-major [r, c] matrix
/// with stride ld is a column-major [c, r] one with the same ld).
/// C = α·op(A)·op(B) + β·C in cuBLAS's terms; every call fp32-accumulated.
inline status gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                   int64_t n, int64_t k, const void* A, cudaDataType_t at, int64_t lda,
                   const void* B, int64_t ldb, float beta, void* C, cudaDataType_t ct,
                   int64_t ldc) {
  const float alpha = 1.0f;
  const cublasStatus_t s = cublasGemmEx(
      h, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha, A, at,
      static_cast<int>(lda), B, at, static_cast<int>(ldb), &beta, C, ct, static_cast<int>(ldc),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return s == CUBLAS_STATUS_SUCCESS ? status::success : status::cuda_error;
}

/// The chunk's logits: Z_c [rows, ldc] = H_c [rows, Hd] · Wᵀ (+ b).
template <class T>
inline status chunk_logits(cublasHandle_t h, const scored_linear& in, int64_t r0, int64_t rows,
                           int64_t ldc, T* chunk, cudaStream_t stream) {
  const int elem = static_cast<int>(sizeof(T));
  const int64_t ldh = linear_ld(in.ld_hidden, in.hidden_size);
  const int64_t ldw = linear_ld(in.ld_weight, in.hidden_size);
  float beta = 0.0f;
  if (in.bias != nullptr) {
    launch(bias_rows_kernel<T, BLOCK>, grid_1d(rows * in.vocab), BLOCK, stream,
           static_cast<const T*>(in.bias), in.vocab, rows, ldc, chunk);
    if (last_launch() != status::success) return status::cuda_error;
    beta = 1.0f;
  }
  const auto* hc = static_cast<const char*>(in.hidden) + r0 * ldh * elem;
  return gemm(h, CUBLAS_OP_T, CUBLAS_OP_N, in.vocab, rows, in.hidden_size, in.weight,
              blas_type(in.type), ldw, hc, ldh, beta, chunk, blas_type(in.type), ldc);
}

// ---------------------------------------------------------------------------
// The passes.

/// The chunk loop of both passes (and of the vocab-parallel ones): f(r0,
/// rows) for the chunks [r0, r0 + rows) in row order, stopping at the first
/// error.
template <class F>
inline status for_each_chunk(int64_t n_rows, int64_t chunk_rows, F&& f) {
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk_rows) {
    const int64_t rows = n_rows - r0 < chunk_rows ? n_rows - r0 : chunk_rows;
    const status st = f(r0, rows);
    if (st != status::success) return st;
  }
  return status::success;
}

/// One chunk of pass 1: Z_c, then forward_kernel over it with the label
/// columns `cols` [N] (→ lse, ℓ_t of the chunk's rows, or with splits > 1
/// the per-split partials and split 0's label logit in ws.token_logp).
template <class T>
inline status chunk_forward(cublasHandle_t h, const scored_linear& in, const linear_layout& l,
                            int64_t r0, int64_t rows, const int32_t* cols, const workspace_view& ws,
                            lse_state* partials, T* chunk, cudaStream_t stream) {
  const status st = chunk_logits<T>(h, in, r0, rows, l.ldc, chunk, stream);
  if (st != status::success) return st;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(l.base.splits));
  return visit_map<T>(in.logit_transform, [&](auto map) {
    launch(forward_kernel<T, decltype(map), BLOCK>, grid, BLOCK, stream, chunk, l.ldc, in.vocab,
           cols + r0, ws.lse + r0, ws.token_logp + r0, partials, map);
    return last_launch() == status::success ? status::success : status::cuda_error;
  });
}

/// Pass 1: every chunk's logits and fused forward (→ lse, ℓ_t in the
/// workspace), then the per-sequence sums.
template <class T>
inline status linear_forward(cublasHandle_t h, const linear_inputs& in, const options& opt,
                             const linear_layout& l, const workspace_view& ws,
                             lse_state* partials, T* chunk, const float* ref_logps,
                             float* out_seq, int64_t* out_counts, cudaStream_t stream) {
  status st = enqueue_rows(in, in, opt.ignore_index, ws, stream);
  if (st != status::success) return st;
  const int k = l.base.splits;
  st = for_each_chunk(in.n_rows, l.chunk_rows, [&](int64_t r0, int64_t rows) {
    const status c = chunk_forward<T>(h, in, l, r0, rows, ws.cols, ws, partials, chunk, stream);
    if (c != status::success) return c;
    return enqueue_combine(partials, k, rows, ws.cols + r0, ws.lse + r0, ws.token_logp + r0,
                           stream);
  });
  if (st != status::success) return st;
  return enqueue_sequences(in, in, in, opt, ws, ref_logps, out_seq, out_counts, stream);
}

/// The per-token primitive from hidden states (docs/math.md §7, "The
/// per-token primitive", paragraph "From hidden states") is these two passes
/// with the pair step left out: pass 1 plus copy_rows gives lse_t and ℓ_t;
/// the backward for any per-token g_t is pass 2 with ws.row_coef = g_t, the
/// one coefficient per row backward_kernel reads (issue 16), so
/// backward_kernel and the GEMMs stay as they are.
///
/// Pass 2: every chunk's logits again, the fused backward in place, then
/// grad_H_c = G_c·W, grad_W (+)= G_cᵀ·H_c, grad_b (+)= Σ_rows G_c. g_s is in
/// ws.seq_grad; or, with row_coef_ready (linear_token_logps_grad), the
/// per-token g_t is already in ws.row_coef. ENTROPY_UPSTREAM
/// (linear_token_logps_grad only): the entropy's upstream e_t [N] (checked)
/// and the forward's H_t [N] join g_t (with_entropy, arith.cuh).
template <class T, bool ENTROPY_UPSTREAM = false>
inline status linear_backward(cublasHandle_t h, const linear_step_args& a,
                              const linear_layout& l, const workspace_view& ws, T* chunk,
                              cudaStream_t stream, bool row_coef_ready = false,
                              const float* row_egrad = nullptr, const float* entropy = nullptr) {
  const linear_inputs& in = a.in;
  const int64_t Hd = in.hidden_size;
  const int64_t ldh = linear_ld(in.ld_hidden, Hd), ldw = linear_ld(in.ld_weight, Hd);
  const int64_t ldgh = linear_ld(a.ld_grad_hidden, Hd), ldgw = linear_ld(a.ld_grad_weight, Hd);
  const cudaDataType_t t = blas_type(in.type);
  const cudaDataType_t gwt = a.grad_weight_float32 ? CUDA_R_32F : t;
  const int elem = static_cast<int>(sizeof(T));
  // One coefficient per row, g_t = g_s · w_t, as enqueue_backward does.
  if (in.n_rows > 0 && !row_coef_ready) {
    launch(row_coef_kernel<BLOCK>, grid_1d(in.n_rows), BLOCK, stream, ws.row_seq, ws.seq_grad,
           in.token_weights, in.n_rows, ws.row_coef, ws.flag);
    if (last_launch() != status::success) return status::cuda_error;
  }
  if (in.n_rows == 0) {  // nothing to add; an overwrite still means zeros
    // A memset, not a k = 0 GEMM with beta = 0: whether a BLAS writes C for
    // k = 0 is the library's choice, the zeros are ours.
    if (!a.accumulate && a.grad_weight != nullptr && in.vocab > 0 && Hd > 0) {
      const size_t gw_elem = gwt == CUDA_R_32F ? 4 : sizeof(T);
      if (cudaMemset2DAsync(a.grad_weight, static_cast<size_t>(ldgw) * gw_elem, 0,
                            static_cast<size_t>(Hd) * gw_elem, static_cast<size_t>(in.vocab),
                            stream) != cudaSuccess)
        return status::cuda_error;
    }
    if (!a.accumulate && a.grad_bias != nullptr && in.vocab > 0 &&
        cudaMemsetAsync(a.grad_bias, 0, static_cast<size_t>(in.vocab) * 4, stream) != cudaSuccess)
      return status::cuda_error;
    return status::success;
  }
  return for_each_chunk(in.n_rows, l.chunk_rows, [&](int64_t r0, int64_t rows) {
    const bool add = a.accumulate || r0 > 0;
    status st = chunk_logits<T>(h, in, r0, rows, l.ldc, chunk, stream);
    if (st != status::success) return st;
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(l.base.splits));
    st = visit_map<T>(in.logit_transform, [&](auto base) {
      const auto map = [&] {
        if constexpr (ENTROPY_UPSTREAM) {
          with_entropy<decltype(base)> m;  // the chunk's rows: e_t and H_t from r0
          m.base = base;
          m.egrad = row_egrad + r0;
          m.entropy = entropy + r0;
          return m;
        } else {
          return base;
        }
      }();
      using Map = std::remove_const_t<decltype(map)>;
      launch(backward_kernel<T, T, Map, BLOCK>, grid, BLOCK, stream, chunk, l.ldc, in.vocab,
             ws.cols + r0, ws.row_coef + r0, ws.lse + r0, chunk, l.ldc, map);
      return last_launch();
    });
    if (st != status::success) return status::cuda_error;
    const auto* hc = static_cast<const char*>(in.hidden) + r0 * ldh * elem;
    if (a.grad_hidden != nullptr) {
      auto* gh = static_cast<char*>(a.grad_hidden) + r0 * ldgh * elem;
      st = gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, Hd, rows, in.vocab, in.weight, t, ldw, chunk, l.ldc,
                0.0f, gh, t, ldgh);
      if (st != status::success) return st;
    }
    if (a.grad_weight != nullptr) {
      st = gemm(h, CUBLAS_OP_N, CUBLAS_OP_T, Hd, in.vocab, rows, hc, t, ldh, chunk, l.ldc,
                add ? 1.0f : 0.0f, a.grad_weight, gwt, ldgw);
      if (st != status::success) return st;
    }
    if (a.grad_bias != nullptr) {
      launch(bias_grad_kernel<T, BLOCK>, grid_1d(in.vocab), BLOCK, stream, chunk, l.ldc, rows,
             in.vocab, add, a.grad_bias);
      if (last_launch() != status::success) return status::cuda_error;
    }
    return status::success;
  });
}

inline workspace_view carve_linear(void* workspace, const linear_layout& l, lse_state** partials,
                                   void** chunk) {
  const workspace_view ws = carve(workspace, l.base);
  char* base = reinterpret_cast<char*>(align_up_ptr(reinterpret_cast<uintptr_t>(workspace)));
  *partials = reinterpret_cast<lse_state*>(base + l.partials);
  *chunk = base + l.chunk;
  return ws;
}

/// The workspace protocol shared by both entries: size query, size and
/// overlap checks; *layout and the carved pointers on success.
inline status linear_workspace(void* workspace, size_t& workspace_bytes, const scored_linear& in,
                               int64_t n_pairs, bool train, const linear_gradients* a,
                               linear_layout* l, int min_splits = 1, bool slice_cols = false,
                               bool plan = false) {
  *l = make_linear_layout(in, n_pairs, train, min_splits, slice_cols, plan);
  workspace_layout whole = l->base;
  whole.bytes = l->bytes;
  const status s = size_workspace(workspace, workspace_bytes, whole);
  if (s != status::success || workspace == nullptr) return s;
  if (linear_meets_workspace(in, workspace, whole, a)) return status::overlapping_buffers;
  return status::success;
}

/// After pass 1 (lse, ℓ_t, the sequence sums in ws): the pair step as
/// train_step runs it (no logits: its backward is ours), g_s, then pass 2.
/// Shared with the vocab-parallel step, whose ws.cols are the slice's.
template <class T, class MarginFor>
inline status linear_pair_and_backward(cublasHandle_t h, const linear_step_args& a,
                                       const options& opt, const linear_layout& l,
                                       const workspace_view& ws, T* chunk,
                                       const MarginFor& margin_for, cudaStream_t stream) {
  const bool backward =
      a.grad_hidden != nullptr || a.grad_weight != nullptr || a.grad_bias != nullptr;
  const status st =
      enqueue_pair_step(a, a, a.in.n_seqs, backward, opt, ws, margin_for, stream);
  if (st != status::success || !backward) return st;
  return linear_backward<T>(h, a, l, ws, chunk, stream);
}

// ---------------------------------------------------------------------------
// The one pass (fused_linear.cuh's header comment; the plan and its kernels
// in detail/one_pass.cuh).

/// Whether the call asks for what the one-pass path needs, before any plan.
inline bool wants_one_pass(const linear_train_args& a, const options& opt) noexcept {
  return a.host_offsets != nullptr && (a.pairs == nullptr || a.host_pairs != nullptr) &&
         !has_coupled_term(opt.loss) && a.in.n_rows > 0 &&
         (a.grad_hidden != nullptr || a.grad_weight != nullptr || a.grad_bias != nullptr);
}

/// The host copies' checks (when given).
inline status check_linear_host_layout(const linear_train_args& a) noexcept {
  return check_host_layout(a.host_offsets, a.in.n_seqs, a.in.n_rows, a.host_pairs, a.pairs,
                           a.n_pairs);
}

/// The plan's piece of the workspace: [host offsets (S+1) | host pairs (2P)
/// | the plan's lists].
struct plan_view {
  int64_t* offsets;
  int64_t* pairs;
  int64_t* lists;
};

inline plan_view carve_plan(void* workspace, const linear_layout& l, int64_t n_seqs,
                            int64_t n_pairs) {
  char* base = reinterpret_cast<char*>(align_up_ptr(reinterpret_cast<uintptr_t>(workspace)));
  plan_view v;
  v.offsets = reinterpret_cast<int64_t*>(base + l.plan);
  v.pairs = v.offsets + n_seqs + 1;
  v.lists = v.pairs + 2 * n_pairs;
  return v;
}

/// After enqueue_rows (ws.offsets canonical): uploads the host copies into
/// the workspace and records host_layout_mismatch where they differ from
/// the device arrays.
inline status enqueue_host_layout(const linear_train_args& a, const workspace_view& ws,
                                  const plan_view& pv, cudaStream_t stream) {
  const int64_t S = a.in.n_seqs;
  const int64_t n_pv = a.pairs != nullptr && a.host_pairs != nullptr ? 2 * a.n_pairs : 0;
  if (cudaMemcpyAsync(pv.offsets, a.host_offsets, static_cast<size_t>(S + 1) * sizeof(int64_t),
                      cudaMemcpyHostToDevice, stream) != cudaSuccess ||
      (n_pv > 0 && cudaMemcpyAsync(pv.pairs, a.host_pairs, static_cast<size_t>(n_pv) * sizeof(int64_t),
                                   cudaMemcpyHostToDevice, stream) != cudaSuccess))
    return status::cuda_error;
  // S == 0: ws.offsets was not written by enqueue_rows; offsets[0] == 0 is
  // all there is (checked on the host).
  const int64_t n_off = S > 0 ? S + 1 : 0;
  if (n_off + n_pv == 0) return status::success;
  launch(host_layout_kernel<BLOCK>, grid_1d(n_off + n_pv), BLOCK, stream, ws.offsets, pv.offsets,
         n_off, a.pairs, pv.pairs, n_pv, ws.flag);
  return last_launch();
}

/// The one pass: per chunk of the plan, per segment the logits and the
/// forward; the chunk's sequence sums, pair terms (phase A over its pairs)
/// and g_s; per segment the backward in place and the three products. Then
/// the sequence sums and the pair step over everything, as two passes end.
template <class T, class MarginFor>
inline status linear_one_pass(cublasHandle_t h, const linear_train_args& a, const options& opt,
                              const linear_layout& l, const workspace_view& ws,
                              lse_state* partials, T* chunk, const one_pass_plan& plan,
                              const plan_view& pv, const MarginFor& margin_for,
                              cudaStream_t stream) {
  const linear_inputs& in = a.in;
  if (has_coupled_term(opt.loss)) return status::internal_error;  // the plan's caller checked
  status st = enqueue_rows(in, in, opt.ignore_index, ws, stream);
  if (st != status::success) return st;
  st = enqueue_host_layout(a, ws, pv, stream);
  if (st != status::success) return st;
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldh = linear_ld(in.ld_hidden, Hd), ldw = linear_ld(in.ld_weight, Hd);
  const int64_t ldgh = linear_ld(a.ld_grad_hidden, Hd), ldgw = linear_ld(a.ld_grad_weight, Hd);
  const cudaDataType_t t = blas_type(in.type);
  const cudaDataType_t gwt = a.grad_weight_float32 ? CUDA_R_32F : t;
  const auto elem = static_cast<int64_t>(sizeof(T));
  const int k = l.base.splits;
  const size_t n_lists = plan.upload.size();
  if (n_lists > 0 && cudaMemcpyAsync(pv.lists, plan.upload.data(), n_lists * sizeof(int64_t),
                                     cudaMemcpyHostToDevice, stream) != cudaSuccess)
    return status::cuda_error;
  const int64_t* seq_list = pv.lists;
  const int64_t* pair_list = pv.lists + plan.n_seq_list;
  // Rows in no segment: lse = ℓ = 0 (as the forward writes for unscored
  // rows), zero gradient rows.
  if (cudaMemsetAsync(ws.lse, 0, static_cast<size_t>(N) * sizeof(float), stream) != cudaSuccess ||
      cudaMemsetAsync(ws.token_logp, 0, static_cast<size_t>(N) * sizeof(float), stream) !=
          cudaSuccess)
    return status::cuda_error;
  if (a.grad_hidden != nullptr && plan.rows_end < N &&
      cudaMemset2DAsync(static_cast<char*>(a.grad_hidden) + plan.rows_end * ldgh * elem,
                        static_cast<size_t>(ldgh * elem), 0, static_cast<size_t>(Hd * elem),
                        static_cast<size_t>(N - plan.rows_end), stream) != cudaSuccess)
    return status::cuda_error;

  pair_params pp = make_pair_params(a, a, in.n_seqs, opt, ws);
  pp.loss_out = nullptr;  // the chunk's pair step writes coefficients only
  pp.stats = nullptr;
  pp.sums = nullptr;
  bool first_product = true;  // grad_W, grad_b: overwrite on the call's first segment
  for (size_t c = 0; c < plan.chunks(); ++c) {
    const int64_t sb = plan.seg_begin[c], se = plan.seg_begin[c + 1];
    for (int64_t g = sb; g < se; ++g) {  // the chunk's logits and forward
      const row_segment& sg = plan.segments[static_cast<size_t>(g)];
      T* z = chunk + sg.at * l.ldc;
      st = chunk_logits<T>(h, in, sg.row0, sg.rows, l.ldc, z, stream);
      if (st != status::success) return st;
      st = enqueue_row_forward<T>(z, l.ldc, V, in.logit_transform, sg.rows, k, ws.cols + sg.row0,
                                  ws.lse + sg.row0, ws.token_logp + sg.row0, partials + sg.at * k,
                                  stream);
      if (st != status::success) return st;
    }
    // The chunk's sequences and pairs: L_s, n_s, the pairs' coefficients, g_s.
    const int64_t q0 = plan.seq_begin[c], nq = plan.seq_begin[c + 1] - q0;
    const int64_t p0 = plan.pair_begin[c], np = plan.pair_begin[c + 1] - p0;
    constexpr int64_t MAX_SEQ_BLOCKS = 65535;
    launch(sequence_kernel<BLOCK>, static_cast<unsigned>(nq < MAX_SEQ_BLOCKS ? nq : MAX_SEQ_BLOCKS),
           BLOCK, stream, ws.offsets, in.n_seqs, N, ws.token_logp, ws.cols, in.token_weights,
           uses_average_logps(opt), static_cast<const float*>(nullptr), ws.seq_logp, ws.seq_count,
           static_cast<float*>(nullptr), static_cast<int64_t*>(nullptr), ws.flag, seq_list + q0,
           nq);
    if (last_launch() != status::success) return status::cuda_error;
    if (np > 0) {
      pp.subset = pair_list + p0;
      pp.n_subset = np;
      launch(pair_kernel<BLOCK, MarginFor>, 1, BLOCK, stream, pp, margin_for);
      if (last_launch() != status::success) return status::cuda_error;
    }
    launch(chunk_seq_grad_kernel<BLOCK>, grid_1d(nq), BLOCK, stream, a.pairs, a.n_pairs,
           seq_list + q0, nq, pair_list + p0, np, static_cast<const double*>(ws.pair_coef),
           ws.seq_grad);
    if (last_launch() != status::success) return status::cuda_error;
    for (int64_t g = sb; g < se; ++g) {  // the backward and the three products
      const row_segment& sg = plan.segments[static_cast<size_t>(g)];
      T* z = chunk + sg.at * l.ldc;
      const float* tw = in.token_weights != nullptr ? in.token_weights + sg.row0 : nullptr;
      launch(row_coef_kernel<BLOCK>, grid_1d(sg.rows), BLOCK, stream, ws.row_seq + sg.row0,
             static_cast<const float*>(ws.seq_grad), tw, sg.rows, ws.row_coef + sg.row0, ws.flag);
      if (last_launch() != status::success) return status::cuda_error;
      st = visit_map<T>(in.logit_transform, [&](auto map) {
        launch(backward_kernel<T, T, decltype(map), BLOCK>,
               dim3(static_cast<unsigned>(sg.rows), static_cast<unsigned>(k)), BLOCK, stream, z,
               l.ldc, V, ws.cols + sg.row0, ws.row_coef + sg.row0, ws.lse + sg.row0, z, l.ldc,
               map);
        return last_launch();
      });
      if (st != status::success) return status::cuda_error;
      const bool add = a.accumulate || !first_product;
      first_product = false;
      if (a.grad_hidden != nullptr) {
        auto* gh = static_cast<char*>(a.grad_hidden) + sg.row0 * ldgh * elem;
        st = gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, Hd, sg.rows, V, in.weight, t, ldw, z, l.ldc, 0.0f,
                  gh, t, ldgh);
        if (st != status::success) return st;
      }
      if (a.grad_weight != nullptr) {
        const auto* hc = static_cast<const char*>(in.hidden) + sg.row0 * ldh * elem;
        st = gemm(h, CUBLAS_OP_N, CUBLAS_OP_T, Hd, V, sg.rows, hc, t, ldh, z, l.ldc,
                  add ? 1.0f : 0.0f, a.grad_weight, gwt, ldgw);
        if (st != status::success) return st;
      }
      if (a.grad_bias != nullptr) {
        launch(bias_grad_kernel<T, BLOCK>, grid_1d(V), BLOCK, stream, z, l.ldc, sg.rows, V, add,
               a.grad_bias);
        if (last_launch() != status::success) return status::cuda_error;
      }
    }
  }
  // Everything the two-pass path reports, from the same per-row values.
  st = enqueue_sequences(in, in, in, opt, ws, a.ref_logps, a.seq_logps, a.seq_counts, stream);
  if (st != status::success) return st;
  st = copy_rows(ws, N, a, stream);
  if (st != status::success) return st;
  // No logits gradient: g_s is written when asked for, the backward is done.
  return enqueue_pair_step(a, a, in.n_seqs, false, opt, ws, margin_for, stream);
}

/// The one-pass plan for these arguments, when that path applies (the host
/// copies already checked).
inline bool one_pass_plan_for(const linear_train_args& a, const options& opt,
                              const linear_layout& l, one_pass_plan* plan) noexcept {
  if (!wants_one_pass(a, opt)) return false;
  return build_one_pass_plan(a.host_offsets, a.in.n_seqs, a.pairs != nullptr ? a.host_pairs : nullptr,
                             a.n_pairs, l.chunk_rows, plan);
}

template <class MarginFor>
inline status fused_linear_step_with(void* workspace, size_t& workspace_bytes,
                                     const linear_train_args& a, const options& opt,
                                     const MarginFor& margin_for, cudaStream_t stream) {
  status s = check_linear_train(a, opt, workspace != nullptr);
  if (s != status::success) return s;
  linear_layout l;
  s = linear_workspace(workspace, workspace_bytes, a.in, a.n_pairs, true, &a, &l, 1, false, true);
  if (s != status::success || workspace == nullptr) return s;
  s = check_linear_host_layout(a);
  if (s != status::success) return s;
  one_pass_plan plan;
  const bool one_pass = one_pass_plan_for(a, opt, l, &plan);
  lse_state* partials = nullptr;
  void* chunk = nullptr;
  const workspace_view ws = carve_linear(workspace, l, &partials, &chunk);
  const plan_view pv = carve_plan(workspace, l, a.in.n_seqs, a.n_pairs);
  blas_scope blas;
  s = blas.open(a.in.cublas, stream);
  if (s != status::success) return s;
  return visit_dtype(a.in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (one_pass)
      return linear_one_pass<T>(blas.get(), a, opt, l, ws, partials, static_cast<T*>(chunk), plan,
                                pv, margin_for, stream);
    status st = linear_forward<T>(blas.get(), a.in, opt, l, ws, partials, static_cast<T*>(chunk),
                                  a.ref_logps, a.seq_logps, a.seq_counts, stream);
    if (st != status::success) return st;
    if (a.host_offsets != nullptr) {  // given but unused: still checked against the device
      st = enqueue_host_layout(a, ws, pv, stream);
      if (st != status::success) return st;
    }
    st = copy_rows(ws, a.in.n_rows, a, stream);
    if (st != status::success) return st;
    return linear_pair_and_backward<T>(blas.get(), a, opt, l, ws, static_cast<T*>(chunk),
                                       margin_for, stream);
  });
}


}  // namespace geopref::cuda::detail

namespace geopref::cuda {

inline status fused_linear_logps(void* workspace, size_t& workspace_bytes,
                                 const linear_logps_args& args, const options& opt,
                                 cudaStream_t stream) noexcept {
  status s = detail::check_linear_logps(args, opt, workspace != nullptr);
  if (s != status::success) return s;
  detail::linear_layout l;
  s = detail::linear_workspace(workspace, workspace_bytes, args.in, 0, false, nullptr, &l);
  if (s != status::success || workspace == nullptr) return s;
  detail::lse_state* partials = nullptr;
  void* chunk = nullptr;
  const detail::workspace_view ws = detail::carve_linear(workspace, l, &partials, &chunk);
  detail::blas_scope blas;
  s = blas.open(args.in.cublas, stream);
  if (s != status::success) return s;
  return detail::visit_dtype(args.in.type, [&](auto tag) {
    using T = typename decltype(tag)::type;
    status st = detail::linear_forward<T>(blas.get(), args.in, opt, l, ws, partials,
                                          static_cast<T*>(chunk), nullptr, args.seq_logps,
                                          args.seq_counts, stream);
    if (st != status::success) return st;
    return detail::copy_rows(ws, args.in.n_rows, args, stream);
  });
}

inline status fused_linear_step(void* workspace, size_t& workspace_bytes,
                                const linear_train_args& args, const options& opt,
                                cudaStream_t stream) noexcept {
  if (const status s = validate(opt); s != status::success) return s;
  return detail::fused_linear_step_with(workspace, workspace_bytes, args, opt,
                                        detail::builtin_margin{any_loss<double>(opt.loss)}, stream);
}

inline bool fused_linear_one_pass(const linear_train_args& args, const options& opt) noexcept {
  if (detail::check_linear_train(args, opt, false) != status::success ||
      detail::check_linear_host_layout(args) != status::success)
    return false;
  const detail::linear_layout l = detail::make_linear_layout(args.in, args.n_pairs, true);
  detail::one_pass_plan plan;
  return detail::one_pass_plan_for(args, opt, l, &plan);
}

template <class Loss, class>
inline status fused_linear_step(void* workspace, size_t& workspace_bytes,
                                const linear_train_args& args, const options& opt,
                                const Loss& loss, cudaStream_t stream) noexcept {
  return detail::fused_linear_step_with(workspace, workspace_bytes, args, opt,
                                        detail::custom_margin<Loss>{loss}, stream);
}

}  // namespace geopref::cuda
