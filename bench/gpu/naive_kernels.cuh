// bench/gpu/naive_kernels.cuh — the naive formulation, the kernel-level
// baseline: the loss computed the way a framework runs it op by op (TRL's
// `logits.log_softmax(-1).gather(...)`, masked sum, DPO-family loss, then
// autograd's backward), one plain kernel per op, an fp32 log-softmax
// materialised in between. Bench-only; the library never does this.
//
// Forward (naive_forward):
//   row_max_kernel            read Z                         -> m [N]
//   log_softmax_kernel        read Z twice (Σexp, then write) -> LP [N, V] fp32
//   gather_kernel             LP[t, y_t] with ignored labels clamped to 0, × mask -> ℓ [N]
//   masked_seq_sum_kernel     Σ over each sequence          -> L [S]
//   pair_loss_kernel          gdpo on h = (L_a − R_a) − (L_b − R_b) -> loss [1], g [S]
// Backward (naive_backward), as autograd runs it:
//   cudaMemsetAsync           dLP = 0 [N, V] fp32               (gather backward)
//   expand_scatter_kernel     dLP[t, y_t] = g_s for scored t     (sum + gather backward)
//   log_softmax_backward_kernel  dZ = dLP − exp(LP) · Σ_v dLP   (read dLP twice, LP once)
//
// Loads are coalesced (consecutive threads read consecutive columns) but not
// vectorised, reductions use cub::BlockReduce: ordinary framework-quality
// code, not a strawman. All index arithmetic is 64-bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "common/synthetic.hpp"
#include "geopref/cuda/detail/device.cuh"
#include "geopref/losses.hpp"

namespace geopref::bench::naive {

inline constexpr int BLOCK = 512;  // threads per row-kernel block

// Element conversions: the library's own (fp32 arithmetic, round-to-nearest
// stores), so the naive and fused paths round identically.
using geopref::cuda::detail::from_float;
using geopref::cuda::detail::to_float;

struct max_op {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// One block per row: m[t] = max_v z[t, v].
template <class T>
__global__ void __launch_bounds__(BLOCK)
    row_max_kernel(const T* __restrict__ z, int64_t vocab, float* __restrict__ row_max) {
  using reduce_t = cub::BlockReduce<float, BLOCK>;
  __shared__ typename reduce_t::TempStorage tmp;
  const T* row = z + static_cast<int64_t>(blockIdx.x) * vocab;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += BLOCK) m = fmaxf(m, to_float(row[v]));
  m = reduce_t(tmp).Reduce(m, max_op{});
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

/// One block per row: LP[t, v] = z[t, v] − m_t − log Σ_v exp(z[t, v] − m_t).
template <class T>
__global__ void __launch_bounds__(BLOCK)
    log_softmax_kernel(const T* __restrict__ z, int64_t vocab, const float* __restrict__ row_max,
                       float* __restrict__ log_probs) {
  using reduce_t = cub::BlockReduce<float, BLOCK>;
  __shared__ typename reduce_t::TempStorage tmp;
  __shared__ float shift;
  const int64_t t = blockIdx.x;
  const T* row = z + t * vocab;
  const float m = row_max[t];
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += BLOCK) sum += expf(to_float(row[v]) - m);
  sum = reduce_t(tmp).Sum(sum);
  if (threadIdx.x == 0) shift = m + logf(sum);
  __syncthreads();  // shift is read by every thread below
  float* out = log_probs + t * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += BLOCK) out[v] = to_float(row[v]) - shift;
}

/// One thread per row: ℓ_t = LP[t, y'_t] · mask_t, y'_t = y_t clamped to 0 when ignored.
template <class Label>
__global__ void gather_kernel(const float* __restrict__ log_probs, int64_t n_rows, int64_t vocab,
                              const Label* __restrict__ labels, int64_t ignore_index,
                              float* __restrict__ token_logps) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_rows) return;
  const int64_t y = static_cast<int64_t>(labels[t]);
  const bool scored = y != ignore_index;
  const float mask = scored ? 1.0f : 0.0f;
  token_logps[t] = log_probs[t * vocab + (scored ? y : 0)] * mask;
}

/// One block per sequence: L_s = Σ_{t ∈ s} ℓ_t (ℓ already masked).
__global__ void __launch_bounds__(BLOCK)
    masked_seq_sum_kernel(const float* __restrict__ token_logps, const int64_t* __restrict__ offsets,
                          float* __restrict__ seq_logps) {
  using reduce_t = cub::BlockReduce<float, BLOCK>;
  __shared__ typename reduce_t::TempStorage tmp;
  const int64_t s = blockIdx.x;
  float acc = 0.0f;
  for (int64_t t = offsets[s] + threadIdx.x; t < offsets[s + 1]; t += BLOCK) acc += token_logps[t];
  acc = reduce_t(tmp).Sum(acc);
  if (threadIdx.x == 0) seq_logps[s] = acc;
}

/// One block: pair i = (i, P + i); loss = (1/P) Σ f̄(h_i; p̂_i) with the
/// geometric DPO loss, and the coefficients g_s = ∂loss/∂L_s.
__global__ void __launch_bounds__(BLOCK)
    pair_loss_kernel(const float* __restrict__ seq_logps, const float* __restrict__ ref_logps,
                     const float* __restrict__ soft_labels, int64_t n_pairs, float beta,
                     float* __restrict__ loss, float* __restrict__ grad_seq) {
  using reduce_t = cub::BlockReduce<float, BLOCK>;
  __shared__ typename reduce_t::TempStorage tmp;
  const gdpo_loss<float> f{{beta}};
  const float inv_p = 1.0f / static_cast<float>(n_pairs);
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n_pairs; i += BLOCK) {
    const float h = (seq_logps[i] - ref_logps[i]) - (seq_logps[n_pairs + i] - ref_logps[n_pairs + i]);
    const float p = soft_labels[i];
    acc += f.value(h, p);
    const float d = f.derivative(h, p) * inv_p;
    grad_seq[i] = d;
    grad_seq[n_pairs + i] = -d;
  }
  acc = reduce_t(tmp).Sum(acc);
  if (threadIdx.x == 0) *loss = acc * inv_p;
}

/// One block per sequence: the backward of the masked sum (broadcast g_s over
/// the sequence, times the mask) fused with the gather's scatter, as autograd's
/// index-put does it: dLP[t, y_t] = g_s for the scored rows t of s.
template <class Label>
__global__ void expand_scatter_kernel(const float* __restrict__ grad_seq,
                                      const int64_t* __restrict__ offsets,
                                      const Label* __restrict__ labels, int64_t ignore_index,
                                      int64_t vocab, float* __restrict__ grad_log_probs) {
  const int64_t s = blockIdx.x;
  const float g = grad_seq[s];
  for (int64_t t = offsets[s] + threadIdx.x; t < offsets[s + 1]; t += blockDim.x) {
    const int64_t y = static_cast<int64_t>(labels[t]);
    if (y != ignore_index) grad_log_probs[t * vocab + y] = g;
  }
}

/// One block per row: dZ[t, v] = dLP[t, v] − exp(LP[t, v]) · Σ_u dLP[t, u].
template <class T>
__global__ void __launch_bounds__(BLOCK)
    log_softmax_backward_kernel(const float* __restrict__ grad_log_probs,
                                const float* __restrict__ log_probs, int64_t vocab,
                                T* __restrict__ grad_z) {
  using reduce_t = cub::BlockReduce<float, BLOCK>;
  __shared__ typename reduce_t::TempStorage tmp;
  __shared__ float row_sum;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * vocab;
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += BLOCK) sum += grad_log_probs[base + v];
  sum = reduce_t(tmp).Sum(sum);
  if (threadIdx.x == 0) row_sum = sum;
  __syncthreads();  // row_sum is read by every thread below
  for (int64_t v = threadIdx.x; v < vocab; v += BLOCK)
    grad_z[base + v] =
        from_float<T>(grad_log_probs[base + v] - expf(log_probs[base + v]) * row_sum);
}

/// Device buffers of the naive formulation, beyond inputs and gradient.
struct workspace {
  float* row_max = nullptr;         // [N]
  float* log_probs = nullptr;       // [N, V] LP
  float* grad_log_probs = nullptr;  // [N, V] dLP
  float* token_logps = nullptr;     // [N]
  float* seq_logps = nullptr;       // [S]
  float* grad_seq = nullptr;        // [S]
  float* loss = nullptr;            // [1]
};

/// Floats in the small buffer that make_workspace carves: row_max and
/// token_logps [N], seq_logps and grad_seq [S], loss [1].
inline size_t small_floats(int64_t n_rows, int64_t n_seqs) {
  return static_cast<size_t>(2 * n_rows + 2 * n_seqs + 1);
}

/// The workspace over caller buffers: `small` of small_floats(N, S) floats,
/// `lp` and `dlp` of N·V floats each.
inline workspace make_workspace(float* small, float* lp, float* dlp, int64_t n_rows,
                                int64_t n_seqs) {
  workspace ws;
  ws.row_max = small;
  ws.token_logps = small + n_rows;
  ws.seq_logps = small + 2 * n_rows;
  ws.grad_seq = small + 2 * n_rows + n_seqs;
  ws.loss = small + 2 * n_rows + 2 * n_seqs;
  ws.log_probs = lp;
  ws.grad_log_probs = dlp;
  return ws;
}

/// The problem as the naive path sees it: default pairing (i, P + i), fp32 side inputs.
template <class T, class Label>
struct problem {
  const T* logits = nullptr;        // [N, V]
  int64_t n_rows = 0, vocab = 0;
  const Label* labels = nullptr;    // [N]
  const int64_t* offsets = nullptr; // [S + 1]
  int64_t n_seqs = 0, n_pairs = 0;
  const float* soft_labels = nullptr;  // [P]
  const float* ref_logps = nullptr;    // [S]
  float beta = 0.1f;
  int64_t ignore_index = IGNORE_INDEX;
};

// Preconditions (bench data satisfies them; the naive path checks nothing, as
// a framework's eager ops would not): labels in [0, V) or ignore_index,
// offsets[0] = 0 non-decreasing up to N, S = 2P.
template <class T, class Label>
void forward(const problem<T, Label>& pb, const workspace& ws, cudaStream_t stream) {
  if (pb.n_rows == 0 || pb.n_pairs == 0) return;
  const auto rows = static_cast<unsigned>(pb.n_rows);
  row_max_kernel<T><<<rows, BLOCK, 0, stream>>>(pb.logits, pb.vocab, ws.row_max);
  log_softmax_kernel<T><<<rows, BLOCK, 0, stream>>>(pb.logits, pb.vocab, ws.row_max, ws.log_probs);
  gather_kernel<Label><<<static_cast<unsigned>((pb.n_rows + 255) / 256), 256, 0, stream>>>(
      ws.log_probs, pb.n_rows, pb.vocab, pb.labels, pb.ignore_index, ws.token_logps);
  masked_seq_sum_kernel<<<static_cast<unsigned>(pb.n_seqs), BLOCK, 0, stream>>>(
      ws.token_logps, pb.offsets, ws.seq_logps);
  pair_loss_kernel<<<1, BLOCK, 0, stream>>>(ws.seq_logps, pb.ref_logps, pb.soft_labels,
                                            pb.n_pairs, pb.beta, ws.loss, ws.grad_seq);
}

template <class T, class Label>
void backward(const problem<T, Label>& pb, const workspace& ws, T* grad_z, cudaStream_t stream) {
  if (pb.n_rows == 0 || pb.n_pairs == 0) return;
  cudaMemsetAsync(ws.grad_log_probs, 0,
                  static_cast<size_t>(pb.n_rows) * static_cast<size_t>(pb.vocab) * sizeof(float),
                  stream);
  expand_scatter_kernel<Label><<<static_cast<unsigned>(pb.n_seqs), 256, 0, stream>>>(
      ws.grad_seq, pb.offsets, pb.labels, pb.ignore_index, pb.vocab, ws.grad_log_probs);
  log_softmax_backward_kernel<T><<<static_cast<unsigned>(pb.n_rows), BLOCK, 0, stream>>>(
      ws.grad_log_probs, ws.log_probs, pb.vocab, grad_z);
}

}  // namespace geopref::bench::naive
