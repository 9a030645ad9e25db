// geopref/cuda/detail/kernels.cuh — the kernels, in data-flow order:
//
//   offsets_kernel   offsets (int32/int64) → canonical int64 [S+1], validated
//   rows_kernel      labels (int32/int64) → column [N] and sequence [N] per row,
//                    −1 for unscored rows; validates labels
//   forward_kernel   one pass over each scored row: online logsumexp, label
//                    logit → lse [N], ℓ [N]; or per-split partials
//   combine_kernel   merges the partials of split rows in split order
//   sequence_kernel  L_s (or L̄_s) and n_s, one block per sequence
//   pair_kernel      margins, pair losses, metrics, per-pair coefficients
//                    (one block, double, fixed-order reduction)
//   seq_grad_kernel  g_s = Σ of the coefficients of the pairs naming s
//   backward_kernel  grad[t, v] = g_s (𝟙[v = y_t] − exp(z − lse_t))
//
// Only forward_kernel and backward_kernel touch the N × V logits; the
// others are O(N + S + P). All indices into N × V buffers are 64-bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/cuda/detail/device.cuh"
#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

inline constexpr int BLOCK = 256;       // threads per block of every kernel
inline constexpr int FWD_UNROLL = 4;    // 16-byte loads in flight per thread, forward
inline constexpr int BWD_UNROLL = 4;    // and backward

// ---------------------------------------------------------------------------
/// [S+1] offsets of type Offset → int64, checking offsets[0] == 0, that they
/// never decrease and that offsets[S] <= N. Invalid offsets are copied as
/// they are; every consumer clamps them into [0, N].
template <class Offset, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    offsets_kernel(const Offset* __restrict__ in, int64_t n_seqs, int64_t n_rows,
                   int64_t* __restrict__ out, int* __restrict__ flag) {
  for (int64_t i = global_thread(); i <= n_seqs; i += grid_threads()) {
    const auto v = static_cast<int64_t>(in[i]);
    out[i] = v;
    const bool ok = (i == 0 ? v == 0 : static_cast<int64_t>(in[i - 1]) <= v) && v <= n_rows;
    if (!ok) record(flag, status::invalid_offsets);
  }
}

/// Per row: the label column (−1 when the row is unscored: ignore_index,
/// outside every sequence, or an invalid label, which is also recorded) and
/// the row's sequence (−1 when unscored). Every row's label is validated,
/// scored or not; the logits of unscored rows are never read.
template <class Label, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    rows_kernel(const Label* __restrict__ labels, int64_t n_rows, int64_t vocab,
                int64_t ignore_index, const int64_t* __restrict__ offsets, int64_t n_seqs,
                int32_t* __restrict__ cols, int32_t* __restrict__ row_seq, int* __restrict__ flag) {
  const int64_t rows_end = n_seqs > 0 ? clamp64(offsets[n_seqs], 0, n_rows) : 0;
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    int32_t c = -1, s = -1;
    const auto y = static_cast<int64_t>(labels[t]);
    if (y != ignore_index) {
      if (y < 0 || y >= vocab) {
        record(flag, status::label_out_of_range);  // checked on every row, as the reference does
      } else if (t < rows_end) {
        c = static_cast<int32_t>(y);
        s = static_cast<int32_t>(find_sequence(offsets, n_seqs, t));
      }
    }
    cols[t] = c;
    row_seq[t] = s;
  }
}

// ---------------------------------------------------------------------------
/// grid (N, splits), BLOCK_SIZE threads. Block (t, j) folds its share of row
/// t into one online-softmax state (split_columns: prologue with split 0,
/// tail with split k − 1). With one split it writes lse_t and ℓ_t directly;
/// otherwise state (t, j) goes to partials [N, splits] and split 0 stores the
/// label logit z[t, y_t] in token_logp[t] for combine_kernel.
/// Unscored rows are not read.
///
/// The hot loop takes FWD_UNROLL vectors per thread at a time, all loads
/// issued first; it raises the state once for the group's maximum (an exact
/// power-of-two rescale, only when the maximum rises), then each element is
/// one FFMA (x·log₂e − m), one ex2 and one add. Vector q of the split is
/// always handled by thread (q − begin) mod BLOCK_SIZE.
template <class T, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    forward_kernel(const T* __restrict__ logits, int64_t ld, int64_t vocab,
                   const int32_t* __restrict__ cols, float* __restrict__ lse,
                   float* __restrict__ token_logp, lse_state* __restrict__ partials) {
  constexpr int W = vec_width<T>::value;
  constexpr int U = FWD_UNROLL;
  constexpr int ELEM = static_cast<int>(sizeof(T));
  __shared__ lse_state smem[BLOCK_SIZE / 32];
  const int64_t t = blockIdx.x;
  const int j = static_cast<int>(blockIdx.y), k = static_cast<int>(gridDim.y);
  const int32_t c = cols[t];
  if (c < 0) {  // uniform over the block: no barrier is skipped by only some threads
    if (k == 1 && threadIdx.x == 0) {
      lse[t] = 0.0f;
      token_logp[t] = 0.0f;
    }
    return;  // with splits, combine_kernel writes the zeros
  }
  const T* row = logits + t * ld;
  const row_span sp = partition_row(reinterpret_cast<uint64_t>(row), vocab, ELEM);
  const vec_range vr = split_range(sp.nvec, j, k);
  const auto* body = reinterpret_cast<const uint4*>(row + sp.pro);  // 16-byte aligned

  lse_state st = lse_empty();
  int64_t q = vr.begin + threadIdx.x;
  for (; q + (U - 1) * BLOCK_SIZE < vr.end; q += U * BLOCK_SIZE) {
    uint4 buf[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) buf[u] = load_once(body + q + u * BLOCK_SIZE);
    // The group's maximum straight from the packed words, then each element
    // unpacked once for its FFMA.
    st = lse_raise(st, max_words<T, U>(buf) * LOG2E);
    const float neg_m = -st.m;
    float part[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) {
      float x[W];
      unpack<T>(buf[u], x);
      part[u] = ex2_ftz(fmaf(x[0], LOG2E, neg_m));
GEOPREF_UNROLL
      for (int e = 1; e < W; ++e) part[u] += ex2_ftz(fmaf(x[e], LOG2E, neg_m));
    }
    float sum = part[0];
GEOPREF_UNROLL
    for (int u = 1; u < U; ++u) sum += part[u];
    st.s += sum;
  }
  // The last (at most U − 1) vectors, one at a time; kept a loop (not
  // unrolled), so the loop above stays the only one with 16-byte loads.
GEOPREF_NO_UNROLL
  for (; q < vr.end; q += BLOCK_SIZE) {
    float x[W];
    unpack<T>(load_once(body + q), x);
    st = lse_update<W>(st, x);
  }
  if (j == 0)
    for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE) st = lse_update1(st, to_float(row[i]));
  if (j == k - 1)
    for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE)
      st = lse_update1(st, to_float(row[i]));

  st = block_reduce<BLOCK_SIZE>(st, merge_lse{}, lse_empty(), smem);
  if (threadIdx.x == 0) {
    const float z_label = to_float(row[c]);  // c in [0, V): validated by rows_kernel
    if (k == 1) {
      const float l = lse_finish(st);
      lse[t] = l;
      token_logp[t] = z_label - l;
    } else {
      partials[t * k + j] = st;
      if (j == 0) token_logp[t] = z_label;
    }
  }
}

/// One thread per row: merges the k partial states of row t in split order.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    combine_kernel(const lse_state* __restrict__ partials, int k, int64_t n_rows,
                   const int32_t* __restrict__ cols, float* __restrict__ lse,
                   float* __restrict__ token_logp) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    if (cols[t] < 0) {
      lse[t] = 0.0f;
      token_logp[t] = 0.0f;
      continue;
    }
    lse_state st = lse_empty();
    for (int j = 0; j < k; ++j) st = lse_merge(st, partials[t * k + j]);
    const float l = lse_finish(st);
    lse[t] = l;
    token_logp[t] = token_logp[t] - l;  // held z[t, y_t]
  }
}

// ---------------------------------------------------------------------------
/// One block per sequence (grid-stride over S): L_s in double, n_s, and the
/// margin form (L̄_s = L_s / n_s, 0 when n_s = 0, if `average`). Optional
/// float/int64 copies for the caller. Also validates ref_logps[s] (NaN or
/// +inf is an error) when given.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    sequence_kernel(const int64_t* __restrict__ offsets, int64_t n_seqs, int64_t n_rows,
                    const float* __restrict__ token_logp, const int32_t* __restrict__ cols,
                    bool average, const float* __restrict__ ref_logps,
                    double* __restrict__ seq_logp, int64_t* __restrict__ seq_count,
                    float* __restrict__ out_logps, int64_t* __restrict__ out_counts,
                    int* __restrict__ flag) {
  __shared__ double sum_smem[BLOCK_SIZE / 32];
  __shared__ long long count_smem[BLOCK_SIZE / 32];
  for (int64_t s = blockIdx.x; s < n_seqs; s += gridDim.x) {  // uniform over the block
    const int64_t b = clamp64(offsets[s], 0, n_rows);
    const int64_t e = clamp64(offsets[s + 1], b, n_rows);
    double sum = 0.0;
    long long n = 0;
    for (int64_t t = b + threadIdx.x; t < e; t += BLOCK_SIZE) {
      if (cols[t] >= 0) {
        sum += static_cast<double>(token_logp[t]);
        ++n;
      }
    }
    sum = block_reduce<BLOCK_SIZE>(sum, plus{}, 0.0, sum_smem);
    n = block_reduce<BLOCK_SIZE>(n, plus{}, 0LL, count_smem);
    if (threadIdx.x == 0) {
      const double v = average ? (n > 0 ? sum / static_cast<double>(n) : 0.0) : sum;
      seq_logp[s] = v;
      seq_count[s] = n;
      if (out_logps != nullptr) out_logps[s] = static_cast<float>(v);
      if (out_counts != nullptr) out_counts[s] = n;
      if (ref_logps != nullptr) {
        const float r = ref_logps[s];
        if (isnan(r) || r == INFINITY) record(flag, status::invalid_reference);
      }
    }
  }
}

// ---------------------------------------------------------------------------
/// Everything pair_kernel reads and writes.
struct pair_params {
  int64_t n_pairs, n_seqs;
  const int64_t* pairs;  // [P, 2] or null (a_i = i, b_i = P + i)
  const float* soft_labels, *ref_logps, *weights, *grad_output;
  const double* seq_logp;  // [S]
  any_loss<double> loss;
  double beta;        // for the rewards metrics
  double divisor;     // reduction_divisor(options, P)
  double grad_loss;   // host upstream gradient
  bool per_pair;      // reduction::none
  float* loss_out;    // [1] or [P], optional
  metrics* stats;     // optional
  double* pair_coef;  // [P] ∂Loss/∂(margin-form log-prob of a_i); −that for b_i
  int* flag;
};

/// The sums pair_kernel reduces, in the order they are reduced.
enum pair_sum : int {
  SUM_LOSS, SUM_CHOSEN, SUM_REJECTED, SUM_ACCURACY, SUM_MARGIN, SUM_LOGP_CHOSEN,
  SUM_LOGP_REJECTED, SUM_CALIBRATION, SUM_COUNT
};

/// A single block: thread i handles pairs i, i + BLOCK, ... in order, then a
/// fixed shared-memory tree adds the per-thread sums: deterministic, in
/// double. P is a batch size (thousands at most), so one block is plenty.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE) pair_kernel(pair_params p) {
  __shared__ double red[SUM_COUNT][BLOCK_SIZE];
  double acc[SUM_COUNT] = {};
  for (int64_t i = threadIdx.x; i < p.n_pairs; i += BLOCK_SIZE) {
    int64_t a = i, b = p.n_pairs + i;
    if (p.pairs != nullptr) {
      a = p.pairs[2 * i];
      b = p.pairs[2 * i + 1];
    }
    bool ok = true;
    if (a < 0 || a >= p.n_seqs || b < 0 || b >= p.n_seqs) {
      record(p.flag, status::pair_index_out_of_range);
      ok = false;
    }
    double prob = 1.0;
    if (p.soft_labels != nullptr) {
      prob = static_cast<double>(p.soft_labels[i]);
      if (!(prob >= 0.0 && prob <= 1.0)) {  // NaN fails too
        record(p.flag, status::soft_label_out_of_range);
        prob = 1.0;
      }
    }
    double w = 1.0;
    if (p.weights != nullptr) {
      w = static_cast<double>(p.weights[i]);
      if (!(isfinite(w) && w >= 0.0)) {
        record(p.flag, status::invalid_weight);
        w = 0.0;
      }
    }
    double go = p.grad_loss;
    if (p.grad_output != nullptr) {
      const double g = static_cast<double>(p.grad_output[p.per_pair ? i : 0]);
      if (!isfinite(g)) record(p.flag, status::invalid_upstream_grad);
      else go *= g;
    }
    // Margin-form log-probs (bad indices read nothing and count as 0).
    const double la = ok ? p.seq_logp[a] : 0.0, lb = ok ? p.seq_logp[b] : 0.0;
    const double ra = ok && p.ref_logps != nullptr ? static_cast<double>(p.ref_logps[a]) : 0.0;
    const double rb = ok && p.ref_logps != nullptr ? static_cast<double>(p.ref_logps[b]) : 0.0;
    const double h = (la - ra) - (lb - rb);
    // A zero-weight pair contributes exactly nothing, even where f is
    // infinite (0·∞ would be NaN).
    const double f = w != 0.0 ? w * p.loss.value(h, prob) : 0.0;
    p.pair_coef[i] = w != 0.0 ? go * (w / p.divisor) * p.loss.derivative(h, prob) : 0.0;
    if (p.per_pair && p.loss_out != nullptr) p.loss_out[i] = static_cast<float>(f);
    const double rc = p.beta * (la - ra), rr = p.beta * (lb - rb);
    acc[SUM_LOSS] += f;
    acc[SUM_CHOSEN] += rc;
    acc[SUM_REJECTED] += rr;
    acc[SUM_ACCURACY] += rc > rr ? 1.0 : 0.0;
    acc[SUM_MARGIN] += rc - rr;
    acc[SUM_LOGP_CHOSEN] += la;
    acc[SUM_LOGP_REJECTED] += lb;
    acc[SUM_CALIBRATION] += fabs(math::sigmoid(p.beta * h) - prob);
  }
GEOPREF_UNROLL
  for (int q = 0; q < SUM_COUNT; ++q) red[q][threadIdx.x] = acc[q];
  __syncthreads();
  for (int half = BLOCK_SIZE / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
GEOPREF_UNROLL
      for (int q = 0; q < SUM_COUNT; ++q) red[q][threadIdx.x] += red[q][threadIdx.x + half];
    }
    __syncthreads();  // level done before the next reads it
  }
  if (threadIdx.x == 0) {
    if (!p.per_pair && p.loss_out != nullptr)
      p.loss_out[0] = static_cast<float>(red[SUM_LOSS][0] / p.divisor);
    if (p.stats != nullptr) {
      const double inv = p.n_pairs > 0 ? 1.0 / static_cast<double>(p.n_pairs) : 0.0;
      metrics m;
      m.rewards_chosen = red[SUM_CHOSEN][0] * inv;
      m.rewards_rejected = red[SUM_REJECTED][0] * inv;
      m.rewards_accuracies = red[SUM_ACCURACY][0] * inv;
      m.rewards_margins = red[SUM_MARGIN][0] * inv;
      m.logps_chosen = red[SUM_LOGP_CHOSEN][0] * inv;
      m.logps_rejected = red[SUM_LOGP_REJECTED][0] * inv;
      m.calibration_error = red[SUM_CALIBRATION][0] * inv;
      *p.stats = m;
    }
  }
}

/// One thread per sequence: g_s = Σ_{i: a_i = s} c_i − Σ_{i: b_i = s} c_i
/// (pairs in index order), divided by n_s when the margin uses L̄.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    seq_grad_kernel(const int64_t* __restrict__ pairs, int64_t n_pairs, int64_t n_seqs,
                    const double* __restrict__ pair_coef, const int64_t* __restrict__ seq_count,
                    bool average, float* __restrict__ seq_grad, float* __restrict__ out_grad) {
  for (int64_t s = global_thread(); s < n_seqs; s += grid_threads()) {
    double g = 0.0;
    if (pairs == nullptr) {  // a_i = i, b_i = P + i: each sequence is in one pair at most
      if (s < n_pairs) g = pair_coef[s];
      else if (s < 2 * n_pairs) g = -pair_coef[s - n_pairs];
    } else {
      for (int64_t i = 0; i < n_pairs; ++i) {  // same pair read by the whole warp: broadcast
        if (pairs[2 * i] == s) g += pair_coef[i];
        if (pairs[2 * i + 1] == s) g -= pair_coef[i];
      }
    }
    if (average) {
      const int64_t n = seq_count[s];
      g = n > 0 ? g / static_cast<double>(n) : 0.0;
    }
    seq_grad[s] = static_cast<float>(g);
    if (out_grad != nullptr) out_grad[s] = static_cast<float>(g);
  }
}

// ---------------------------------------------------------------------------
/// grid (N, splits), BLOCK_SIZE threads: columns split_columns(j) of row t.
///   scored row:   grad[t, v] = g (𝟙[v = y_t] − exp(z[t, v] − lse_t)), g = seq_grad[row_seq[t]]
///   unscored row: zeros, the logits are not read.
/// Every column but the label's is −g·2^(z·log₂e − lse·log₂e): one FFMA with
/// the pre-scaled lse, one ex2, one multiply. The label's g(1 − p) is written
/// last, as −g·expm1(z_y − lse_t), which keeps its precision as p → 1; its
/// logit is read before the loop (a barrier orders that read before any
/// thread's store, and the stores before the label's).
/// In place (grad == logits) is safe: every element is read and then written
/// by the same thread, and no other thread touches it (hence no __restrict__
/// on these two pointers). Columns [V, grad_ld) are never written.
/// The 16-byte path needs the gradient row to be aligned where the logits
/// row is (same prologue); otherwise the block falls back to scalar code.
template <class T, class Out, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    backward_kernel(const T* logits, int64_t ld, int64_t vocab, const int32_t* __restrict__ cols,
                    const int32_t* __restrict__ row_seq, const float* __restrict__ seq_grad,
                    const float* __restrict__ lse, Out* grad, int64_t grad_ld) {
  constexpr int W = vec_width<T>::value;
  constexpr int U = BWD_UNROLL;
  constexpr int ELEM = static_cast<int>(sizeof(T));
  const int64_t t = blockIdx.x;
  const int j = static_cast<int>(blockIdx.y), k = static_cast<int>(gridDim.y);
  const int32_t c = cols[t];
  const T* row = logits + t * ld;
  Out* out = grad + t * grad_ld;
  const row_span sp = partition_row(reinterpret_cast<uint64_t>(row), vocab, ELEM);
  const vec_range vr = split_range(sp.nvec, j, k);
  const vec_range cr = split_columns(sp, vocab, ELEM, j, k);
  const bool vector_ok = reinterpret_cast<uint64_t>(out + sp.pro) % 16u == 0;

  if (c < 0) {
    if (vector_ok) {
      auto* ob = reinterpret_cast<vec<Out, W>*>(out + sp.pro);
      vec<Out, W> zero;
GEOPREF_UNROLL
      for (int e = 0; e < W; ++e) zero.v[e] = from_float<Out>(0.0f);
      for (int64_t q = vr.begin + threadIdx.x; q < vr.end; q += BLOCK_SIZE) ob[q] = zero;
      if (j == 0)
        for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE) out[i] = from_float<Out>(0.0f);
      if (j == k - 1)
        for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE)
          out[i] = from_float<Out>(0.0f);
    } else {
      for (int64_t i = cr.begin + threadIdx.x; i < cr.end; i += BLOCK_SIZE)
        out[i] = from_float<Out>(0.0f);
    }
    return;
  }

  const float g = seq_grad[row_seq[t]];
  const float l = lse[t];
  const float neg_g = -g, neg_l2 = -(l * LOG2E);
  const bool has_label = c >= cr.begin && c < cr.end;  // this split writes the label's column
  float z_label = 0.0f;
  if (has_label && threadIdx.x == 0) z_label = to_float(row[c]);
  __syncthreads();  // z_label is read before any thread overwrites it (in place)
  auto grad_at = [&](float z) { return neg_g * ex2_ftz(fmaf(z, LOG2E, neg_l2)); };
  if (vector_ok) {
    const auto* ib = reinterpret_cast<const uint4*>(row + sp.pro);
    Out* ob = out + sp.pro;
    int64_t q = vr.begin + threadIdx.x;
    for (; q + (U - 1) * BLOCK_SIZE < vr.end; q += U * BLOCK_SIZE) {
      uint4 buf[U];  // every load before the first store
GEOPREF_UNROLL
      for (int u = 0; u < U; ++u) buf[u] = load_once_rw(ib + q + u * BLOCK_SIZE);
GEOPREF_UNROLL
      for (int u = 0; u < U; ++u) {
        float x[W];
        unpack<T>(buf[u], x);
GEOPREF_UNROLL
        for (int e = 0; e < W; ++e) x[e] = grad_at(x[e]);
        store_vector<Out, W>(ob + (q + u * BLOCK_SIZE) * W, x);
      }
    }
    // The last (at most U − 1) vectors, one at a time; kept a loop (not
  // unrolled), so the loop above stays the only one with 16-byte loads.
GEOPREF_NO_UNROLL
  for (; q < vr.end; q += BLOCK_SIZE) {
      float x[W];
      unpack<T>(load_once_rw(ib + q), x);
GEOPREF_UNROLL
      for (int e = 0; e < W; ++e) x[e] = grad_at(x[e]);
      store_vector<Out, W>(ob + q * W, x);
    }
    if (j == 0)
      for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE)
        out[i] = from_float<Out>(grad_at(to_float(row[i])));
    if (j == k - 1)
      for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE)
        out[i] = from_float<Out>(grad_at(to_float(row[i])));
  } else {
    for (int64_t i = cr.begin + threadIdx.x; i < cr.end; i += BLOCK_SIZE)
      out[i] = from_float<Out>(grad_at(to_float(row[i])));
  }
  __syncthreads();  // the label column's first value is stored
  if (has_label && threadIdx.x == 0) out[c] = from_float<Out>(neg_g * expm1f(z_label - l));
}

}  // namespace geopref::cuda::detail
