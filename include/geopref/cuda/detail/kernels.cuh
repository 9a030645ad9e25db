// geopref/cuda/detail/kernels.cuh — the kernels, in data-flow order:
//
//   offsets_kernel   offsets (int32/int64) → canonical int64 [S+1], validated
//   rows_kernel      labels (int32/int64) → column [N] and sequence [N] per row,
//                    −1 for unscored rows; validates labels
//   forward_kernel   one pass over each scored row: online logsumexp, label
//                    logit → lse [N], ℓ [N]; or per-split partials
//   combine_kernel   merges the partials of split rows in split order
//   sequence_kernel  L_s (token-weighted) and n_s, one block per sequence
//   pair_kernel      every loss term: pair losses, metrics, per-pair
//                    coefficients, the batch-coupled terms (one block,
//                    double, fixed-order reductions)
//   seq_grad_kernel  g_s = Σ of the coefficients of the pairs naming s
//   row_coef_kernel  g_t = g_s · w_t per row (the per-token coefficient)
//   backward_kernel  grad[t, v] = g_t (𝟙[v = y_t] − exp(z − lse_t)), the
//                    per-token primitive's backward, shared by every caller
//
// The per-token primitive (token_kernels.cuh) adds token_rows_kernel (labels
// and g_t per row, no sequences) and stats_kernel (entropy, statistics).
//
// Only forward_kernel and backward_kernel (and the per-token primitive's
// optional stats_kernel) touch the N × V logits; the others are O(N + S + P). All indices into N × V buffers are 64-bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "geopref/cuda/args.cuh"
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
///
/// `map` is the logit transform (arith.cuh): the softmax is of map.value(z).
/// Since every map is increasing, the group's maximum is taken on the raw
/// words and mapped once; each element's FFMA becomes map.exp2_arg (the same
/// FFMA with another constant for a scale, a tanh before it for a soft-cap).
template <class T, class Map, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    forward_kernel(const T* __restrict__ logits, int64_t ld, int64_t vocab,
                   const int32_t* __restrict__ cols, float* __restrict__ lse,
                   float* __restrict__ token_logp, lse_state* __restrict__ partials, Map map) {
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
    st = lse_raise(st, map.log2(max_words<T, U>(buf)));
    const float neg_m = -st.m;
    float part[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) {
      float x[W];
      unpack<T>(buf[u], x);
      part[u] = ex2_ftz(map.exp2_arg(x[0], neg_m));
GEOPREF_UNROLL
      for (int e = 1; e < W; ++e) part[u] += ex2_ftz(map.exp2_arg(x[e], neg_m));
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
GEOPREF_UNROLL
    for (int e = 0; e < W; ++e) x[e] = map.value(x[e]);
    st = lse_update<W>(st, x);
  }
  if (j == 0)
    for (int64_t i = threadIdx.x; i < sp.pro; i += BLOCK_SIZE)
      st = lse_update1(st, map.value(to_float(row[i])));
  if (j == k - 1)
    for (int64_t i = sp.tail + threadIdx.x; i < vocab; i += BLOCK_SIZE)
      st = lse_update1(st, map.value(to_float(row[i])));

  st = block_reduce<BLOCK_SIZE>(st, merge_lse{}, lse_empty(), smem);
  if (threadIdx.x == 0) {
    const float z_label = map.value(to_float(row[c]));  // c in [0, V): validated by rows_kernel
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

/// For the combines: whether row t is unscored (cols[t] < 0), in which case
/// its lse and token log-prob are set to 0.
__device__ __forceinline__ bool zero_unscored(int64_t t, const int32_t* cols, float* lse,
                                              float* token_logp) {
  if (cols[t] < 0) {
    lse[t] = 0.0f;
    token_logp[t] = 0.0f;
    return true;
  }
  return false;
}

/// One thread per row: merges the k partial states of row t in split order.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    combine_kernel(const lse_state* __restrict__ partials, int k, int64_t n_rows,
                   const int32_t* __restrict__ cols, float* __restrict__ lse,
                   float* __restrict__ token_logp) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    if (zero_unscored(t, cols, lse, token_logp)) continue;
    lse_state st = lse_empty();
    for (int j = 0; j < k; ++j) st = lse_merge(st, partials[t * k + j]);
    const float l = lse_finish(st);
    lse[t] = l;
    token_logp[t] = token_logp[t] - l;  // held z[t, y_t]
  }
}

// ---------------------------------------------------------------------------
/// One block per sequence (grid-stride over S): L_s = Σ w_t ℓ_t in double
/// (w_t = 1 without token weights), n_s; the caller's copy in the reported
/// form (L̄_s = L_s / n_s, 0 when n_s = 0, if `average`). Also validates
/// ref_logps[s] (NaN or +inf is an error) and the weights of scored rows
/// (NaN or ±inf: an error, the row then counts with weight 0).
///
/// `subset` (fused linear's one pass, else null): the sequences subset[0 ..
/// n_subset) only, each summed exactly as without it.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    sequence_kernel(const int64_t* __restrict__ offsets, int64_t n_seqs, int64_t n_rows,
                    const float* __restrict__ token_logp, const int32_t* __restrict__ cols,
                    const float* __restrict__ token_weights, bool average,
                    const float* __restrict__ ref_logps, double* __restrict__ seq_sum,
                    int64_t* __restrict__ seq_count, float* __restrict__ out_logps,
                    int64_t* __restrict__ out_counts, int* __restrict__ flag,
                    const int64_t* __restrict__ subset, int64_t n_subset) {
  __shared__ double sum_smem[BLOCK_SIZE / 32];
  __shared__ long long count_smem[BLOCK_SIZE / 32];
  const int64_t n_list = subset != nullptr ? n_subset : n_seqs;
  for (int64_t q = blockIdx.x; q < n_list; q += gridDim.x) {  // uniform over the block
    const int64_t s = subset != nullptr ? subset[q] : q;
    const int64_t b = clamp64(offsets[s], 0, n_rows);
    const int64_t e = clamp64(offsets[s + 1], b, n_rows);
    double sum = 0.0;
    long long n = 0;
    for (int64_t t = b + threadIdx.x; t < e; t += BLOCK_SIZE) {
      if (cols[t] >= 0) {
        double l = static_cast<double>(token_logp[t]);
        if (token_weights != nullptr) {
          const float w = token_weights[t];
          if (!isfinite(w)) record(flag, status::invalid_weight);
          l = isfinite(w) ? l * static_cast<double>(w) : 0.0;
        }
        sum += l;
        ++n;
      }
    }
    sum = block_reduce<BLOCK_SIZE>(sum, plus{}, 0.0, sum_smem);
    n = block_reduce<BLOCK_SIZE>(n, plus{}, 0LL, count_smem);
    if (threadIdx.x == 0) {
      const double v = average ? (n > 0 ? sum / static_cast<double>(n) : 0.0) : sum;
      seq_sum[s] = sum;
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
/// Everything pair_kernel reads and writes. The per-pair scratch arrays are
/// workspace; coef is [P, 2]: ∂Loss/∂L_{a_i} and ∂Loss/∂L_{b_i} of the
/// *summed* log-probs (1/n_s already applied for averaged forms).
struct pair_params : pair_set {  // the step's pairs block as given (geopref/cuda/args.cuh)
  int64_t n_seqs;
  const double* seq_sum;     // [S] L_s, token-weighted sums
  const int64_t* seq_count;  // [S] n_s
  loss_config config;        // the terms, transform, geometric flag, parameters
  bool average_logps;        // options::average_logps
  bool shown_average;        // uses_average_logps(options): the metrics' form
  double divisor;     // reduction_divisor(options, P)
  bool per_pair;      // reduction::none
  float* loss_out;    // [1] or [P], optional
  metrics* stats;     // optional
  metric_sums* sums;  // optional: the metrics as sums and P (data parallel)
  double nll_tokens, nll_weight;  // options' global NLL normaliser (0: this batch's own)
  double* coef;       // [P, 2]
  double* pair_loss;  // [P] Σ_k λ_k w_i f_k (scratch)
  double* scale;      // [P] upstream · w_i / divisor (scratch)
  double* prob;       // [P] p̂_i, validated (scratch)
  double* weight;     // [P] w_i, validated (scratch)
  double* sort_x, *sort_y;    // [P] the values sorted terms sort (scratch)
  uint64_t* key_x, *key_y;    // [P] their total-order keys (scratch)
  int64_t* perm_x, *perm_y, *live;  // [P] sorted orders and the non-zero-weight pairs
  int* flag;
  // Fused linear's one pass: phase A over the pairs subset[0 .. n_subset)
  // only (their coef), then return; never with a batch-coupled term (the
  // caller checks: phases B and C would need every pair).
  const int64_t* subset = nullptr;
  int64_t n_subset = 0;
};

/// The metrics' sums, then the batch counts, in the order they are reduced.
enum pair_sum : int {
  SUM_CHOSEN, SUM_REJECTED, SUM_ACCURACY, SUM_MARGIN, SUM_LOGP_CHOSEN,
  SUM_LOGP_REJECTED, SUM_CALIBRATION, SUM_LIVE, SUM_COUNT
};

/// The built-in margin loss of a term type.
struct builtin_margin {
  any_loss<double> base;
  GEOPREF_HD any_loss<double> operator()(loss_type t) const {
    any_loss<double> l = base;
    l.type = t;
    return l;
  }
};

/// A caller's margin loss, for every margin term.
template <class Loss>
struct custom_margin {
  Loss loss;
  GEOPREF_HD const Loss& operator()(loss_type) const { return loss; }
};

/// A fixed-order sum over the block of K doubles per thread; every thread
/// gets the totals. `red` is [K][BLOCK_SIZE] shared memory.
template <int BLOCK_SIZE, int K>
__device__ void block_sums(double (&v)[K], double (*red)[BLOCK_SIZE]) {
GEOPREF_UNROLL
  for (int q = 0; q < K; ++q) red[q][threadIdx.x] = v[q];
  __syncthreads();
  for (int half = BLOCK_SIZE / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
GEOPREF_UNROLL
      for (int q = 0; q < K; ++q) red[q][threadIdx.x] += red[q][threadIdx.x + half];
    }
    __syncthreads();  // level done before the next reads it
  }
GEOPREF_UNROLL
  for (int q = 0; q < K; ++q) v[q] = red[q][0];
  __syncthreads();  // red may be reused after this
}

/// A single block, in phases separated by barriers (docs/math.md §7,
/// "The pair step"): (A) thread i handles pairs i, i + BLOCK, ...: validation,
/// metrics, every per-pair term; (B) each sft term from block sums; (C) each
/// sorted term: ranks by counting (stable, deterministic), then one thread
/// per sorted position; (D) the loss, a fixed-order sum of the pair losses.
/// Double throughout. P is a batch size (the sorted terms' ranks are O(P²/BLOCK)
/// per thread), so one block is plenty.
template <int BLOCK_SIZE, class MarginFor>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE) pair_kernel(pair_params p, MarginFor margin_for) {
  __shared__ double red[SUM_COUNT][BLOCK_SIZE];
  const loss_config& lc = p.config;
  const double beta = lc.beta;
  const transform_fn<double> phi{lc.transform, lc.f_alpha};
  const int n_terms = term_count(lc);
  const int64_t P = p.n_pairs;

  auto first = [&](int64_t i) { return p.pairs != nullptr ? p.pairs[2 * i] : i; };
  auto second = [&](int64_t i) { return p.pairs != nullptr ? p.pairs[2 * i + 1] : P + i; };
  auto valid = [&](int64_t s) { return s >= 0 && s < p.n_seqs; };
  // Bad pair indices read nothing: an empty sequence, reference 0.
  auto count = [&](int64_t s) { return valid(s) ? p.seq_count[s] : int64_t{0}; };
  auto form = [&](int64_t s, bool av) {
    if (!valid(s)) return 0.0;
    const double l = p.seq_sum[s];
    const int64_t n = p.seq_count[s];
    return av ? (n > 0 ? l / static_cast<double>(n) : 0.0) : l;
  };
  auto to_sum = [&](int64_t s, bool av, double d) {
    if (!av) return d;
    const int64_t n = count(s);
    return n > 0 ? d / static_cast<double>(n) : 0.0;
  };
  auto ref = [&](int64_t s) {
    return valid(s) && p.ref_logps != nullptr ? static_cast<double>(p.ref_logps[s]) : 0.0;
  };

  // ---- (A) per pair.
  double acc[SUM_COUNT] = {};
  const int64_t n_list = p.subset != nullptr ? p.n_subset : P;
  for (int64_t q = threadIdx.x; q < n_list; q += BLOCK_SIZE) {
    const int64_t i = p.subset != nullptr ? p.subset[q] : q;
    const int64_t a = first(i), b = second(i);
    if (!valid(a) || !valid(b)) record(p.flag, status::pair_index_out_of_range);
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
    const double sc = go * (w / p.divisor);
    p.prob[i] = prob;
    p.weight[i] = w;
    p.scale[i] = sc;

    // Metrics in the reported form.
    const double ma = form(a, p.shown_average), mb = form(b, p.shown_average);
    const double ha = ma - ref(a), hb = mb - ref(b);
    const double h_shown = phi.phi(ha) - phi.phi(hb);
    const double rc = beta * ha, rr = beta * hb;
    acc[SUM_CHOSEN] += rc;
    acc[SUM_REJECTED] += rr;
    acc[SUM_ACCURACY] += rc > rr ? 1.0 : 0.0;
    acc[SUM_MARGIN] += rc - rr;
    acc[SUM_LOGP_CHOSEN] += ma;
    acc[SUM_LOGP_REJECTED] += mb;
    acc[SUM_CALIBRATION] += fabs(math::sigmoid(beta * h_shown) - prob);
    acc[SUM_LIVE] += w != 0.0 ? 1.0 : 0.0;

    // Every per-pair term. A zero-weight pair contributes exactly nothing,
    // even where f is infinite (0·∞ would be NaN).
    double f = 0.0, ca = 0.0, cb = 0.0;
    if (w != 0.0) {
      for (int k = 0; k < n_terms; ++k) {
        const loss_type t = term_type(lc, k);
        const double lambda = term_weight(lc, k);
        const loss_kind kind = kind_of(t);
        if (kind == loss_kind::sorted || kind == loss_kind::sft) continue;  // phases B, C
        const bool av = p.average_logps || forces_average_logps(t);
        const bool free = is_reference_free(t);
        const double xa = form(a, av), xb = form(b, av);
        const double rw = xa - (free ? 0.0 : ref(a)), rl = xb - (free ? 0.0 : ref(b));
        pair_grad<double> r{0.0, 0.0, 0.0};
        if (kind == loss_kind::margin) {
          const auto fn = margin_for(t);
          const double h = lc.transform == margin_transform::reverse_kl ? rw - rl
                                                                         : phi.phi(rw) - phi.phi(rl);
          const double g = lc.geometric ? 2.0 * prob - 1.0 : 1.0;
          const double d = g * fn.derivative(g * h, prob);
          r = {fn.value(g * h, prob), d * phi.dphi(rw), -d * phi.dphi(rl)};
        } else {
          r = two_sided_term<double>(t, beta, lc.bco_delta, rw, rl);
        }
        f += lambda * w * r.value;
        ca += sc * lambda * to_sum(a, av, r.d_w);
        cb += sc * lambda * to_sum(b, av, r.d_l);
      }
    }
    p.pair_loss[i] = f;
    p.coef[2 * i] = ca;
    p.coef[2 * i + 1] = cb;
  }
  if (p.subset != nullptr) return;  // uniform: the chunk's coefficients are all it wants
  block_sums<BLOCK_SIZE, SUM_COUNT>(acc, red);  // also orders (A)'s writes before (B)
  const auto n_live = static_cast<int64_t>(acc[SUM_LIVE]);

  for (int k = 0; k < n_terms; ++k) {
    const loss_type t = term_type(lc, k);
    const double lambda = term_weight(lc, k);
    if (kind_of(t) == loss_kind::sft) {
      // ---- (B) NLL = −Σ L_{a_i} / Σ n_{a_i} over live pairs; every live
      // pair's loss gains w_i λ NLL and L_{a_i} the coefficient −λ Σ scale / Σ n.
      double v[3] = {0.0, 0.0, 0.0};
      for (int64_t i = threadIdx.x; i < P; i += BLOCK_SIZE)
        if (p.weight[i] != 0.0) {
          v[0] += form(first(i), false);
          v[1] += static_cast<double>(count(first(i)));
          v[2] += p.scale[i];
        }
      block_sums<BLOCK_SIZE, 3>(v, red);
      const double nll = v[1] > 0.0 ? -v[0] / v[1] : 0.0;
      double c = v[1] > 0.0 ? -lambda * v[2] / v[1] : 0.0;
      // Data parallel (the reference's run_pairs has the derivation): the
      // global W_g and n_g replace this batch's sums; u is the one upstream
      // gradient of every pair (reduction::none is refused by validate).
      const bool global = p.nll_tokens > 0.0;
      if (global) {
        double u = p.grad_loss;
        if (p.grad_output != nullptr && isfinite(p.grad_output[0]))
          u *= static_cast<double>(p.grad_output[0]);
        c = -lambda * u * (p.nll_weight / p.divisor) / p.nll_tokens;
      }
      for (int64_t i = threadIdx.x; i < P; i += BLOCK_SIZE)
        if (p.weight[i] != 0.0) {
          p.pair_loss[i] += global ? lambda * (p.nll_weight / p.nll_tokens) * -form(first(i), false)
                                   : lambda * p.weight[i] * nll;
          p.coef[2 * i] += c;
        }
      __syncthreads();
    } else if (kind_of(t) == loss_kind::sorted) {
      // ---- (C) aot: x_i = x_{a_i} − x_{b_i}, y_i = R_{a_i} − R_{b_i};
      // aot_unpaired: x_i = ρ_w, y_i = ρ_l. Sorted ascending over the live
      // pairs, ties in pair order; position q takes live pair q's weight, p̂
      // and upstream gradient; cdpo's loss of δ_q = x_(q) − y_(q).
      const bool av = p.average_logps || forces_average_logps(t);
      for (int64_t i = threadIdx.x; i < P; i += BLOCK_SIZE) {
        const int64_t a = first(i), b = second(i);
        const double xa = form(a, av), xb = form(b, av);
        double x, y;
        if (t == loss_type::aot) x = xa - xb, y = ref(a) - ref(b);
        else x = xa - ref(a), y = xb - ref(b);
        p.sort_x[i] = x;
        p.sort_y[i] = y;
        p.key_x[i] = math::sort_key(x);
        p.key_y[i] = math::sort_key(y);
      }
      __syncthreads();  // keys complete before ranking
      for (int64_t i = threadIdx.x; i < P; i += BLOCK_SIZE) {
        if (p.weight[i] == 0.0) continue;
        const uint64_t kx = p.key_x[i], ky = p.key_y[i];
        int64_t rx = 0, ry = 0, rl = 0;
        for (int64_t j = 0; j < P; ++j) {  // every thread reads j in step: broadcast
          if (p.weight[j] == 0.0) continue;
          const bool before = j < i;
          rx += p.key_x[j] < kx || (p.key_x[j] == kx && before);
          ry += p.key_y[j] < ky || (p.key_y[j] == ky && before);
          rl += before;
        }
        p.perm_x[rx] = i;
        p.perm_y[ry] = i;
        p.live[rl] = i;
      }
      __syncthreads();  // permutations complete
      const cdpo_loss<double> fn{beta};
      for (int64_t q = threadIdx.x; q < n_live; q += BLOCK_SIZE) {
        const int64_t j = p.live[q], i = p.perm_x[q], r = p.perm_y[q];
        const double delta = p.sort_x[i] - p.sort_y[r];
        p.pair_loss[j] += lambda * p.weight[j] * fn.value(delta, p.prob[j]);
        const double d = p.scale[j] * lambda * fn.derivative(delta, p.prob[j]);
        p.coef[2 * i] += to_sum(first(i), av, d);
        if (t == loss_type::aot) p.coef[2 * i + 1] -= to_sum(second(i), av, d);
        else p.coef[2 * r + 1] -= to_sum(second(r), av, d);
      }
      __syncthreads();  // this term's updates before the next term's
    }
  }

  // ---- (D) the loss and the per-pair outputs.
  double tot[1] = {0.0};
  for (int64_t i = threadIdx.x; i < P; i += BLOCK_SIZE) {
    tot[0] += p.pair_loss[i];
    if (p.per_pair && p.loss_out != nullptr) p.loss_out[i] = static_cast<float>(p.pair_loss[i]);
  }
  block_sums<BLOCK_SIZE, 1>(tot, red);
  if (threadIdx.x == 0) {
    if (!p.per_pair && p.loss_out != nullptr) p.loss_out[0] = static_cast<float>(tot[0] / p.divisor);
    if (p.sums != nullptr)
      *p.sums = {acc[SUM_CHOSEN], acc[SUM_REJECTED], acc[SUM_ACCURACY], acc[SUM_MARGIN],
                 acc[SUM_LOGP_CHOSEN], acc[SUM_LOGP_REJECTED], acc[SUM_CALIBRATION],
                 static_cast<double>(P)};
    if (p.stats != nullptr) {
      const double inv = P > 0 ? 1.0 / static_cast<double>(P) : 0.0;
      metrics m;
      m.rewards_chosen = acc[SUM_CHOSEN] * inv;
      m.rewards_rejected = acc[SUM_REJECTED] * inv;
      m.rewards_accuracies = acc[SUM_ACCURACY] * inv;
      m.rewards_margins = acc[SUM_MARGIN] * inv;
      m.logps_chosen = acc[SUM_LOGP_CHOSEN] * inv;
      m.logps_rejected = acc[SUM_LOGP_REJECTED] * inv;
      m.calibration_error = acc[SUM_CALIBRATION] * inv;
      *p.stats = m;
    }
  }
}

/// One thread per sequence: g_s = Σ_{i: a_i = s} coef[i, 0] + Σ_{i: b_i = s}
/// coef[i, 1] (pairs in index order); g_s is w.r.t. the summed log-prob.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    seq_grad_kernel(const int64_t* __restrict__ pairs, int64_t n_pairs, int64_t n_seqs,
                    const double* __restrict__ coef, float* __restrict__ seq_grad,
                    float* __restrict__ out_grad) {
  for (int64_t s = global_thread(); s < n_seqs; s += grid_threads()) {
    double g = 0.0;
    if (pairs == nullptr) {  // a_i = i, b_i = P + i: each sequence is in one pair at most
      if (s < n_pairs) g = coef[2 * s];
      else if (s < 2 * n_pairs) g = coef[2 * (s - n_pairs) + 1];
    } else {
      for (int64_t i = 0; i < n_pairs; ++i) {  // same pair read by the whole warp: broadcast
        if (pairs[2 * i] == s) g += coef[2 * i];
        if (pairs[2 * i + 1] == s) g += coef[2 * i + 1];
      }
    }
    seq_grad[s] = static_cast<float>(g);
    if (out_grad != nullptr) out_grad[s] = static_cast<float>(g);
  }
}

/// The sequence-level backward as a per-token one: the coefficient of row t
/// is g_t = g_{s(t)} · w_t (w_t = 1 without per-token weights), 0 for an
/// unscored row, so backward_kernel is the per-token primitive's backward
/// (token_logps_grad) whatever the caller. A scored row's weight that is not
/// finite is recorded (invalid_weight) and counts as 0, as in
/// sequence_kernel: logits_grad, which runs no sequence_kernel, validates the
/// weights here. Without weights the coefficient is g_s itself, bit for bit.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    row_coef_kernel(const int32_t* __restrict__ row_seq, const float* __restrict__ seq_grad,
                    const float* __restrict__ token_weights, int64_t n_rows,
                    float* __restrict__ row_coef, int* __restrict__ flag) {
  for (int64_t t = global_thread(); t < n_rows; t += grid_threads()) {
    const int32_t s = row_seq[t];
    if (s < 0) {
      row_coef[t] = 0.0f;
      continue;
    }
    if (token_weights == nullptr) {
      row_coef[t] = seq_grad[s];
      continue;
    }
    float w = token_weights[t];
    if (!isfinite(w)) {
      record(flag, status::invalid_weight);
      w = 0.0f;
    }
    row_coef[t] = static_cast<float>(static_cast<double>(seq_grad[s]) * static_cast<double>(w));
  }
}

// ---------------------------------------------------------------------------
/// grid (N, splits), BLOCK_SIZE threads: columns split_columns(j) of row t.
///   scored row:   grad[t, v] = g_t (𝟙[v = y_t] − exp(z[t, v] − lse_t)), g_t = row_grad[t]
///   unscored row: zeros, the logits are not read.
/// Every column but the label's is −g·2^(z·log₂e − lse·log₂e): one FFMA with
/// the pre-scaled lse, one ex2, one multiply. The label's g(1 − p) is written
/// last, as −g·expm1(z_y − lse_t), which avoids the cancellation of 1 − p
/// as p → 1 (down to the float lse's own rounding, docs/math.md §7); its
/// logit is read before the loop (a barrier orders that read before any
/// thread's store, and the stores before the label's).
/// In place (grad == logits) is safe: every element is read and then written
/// by the same thread, and no other thread touches it (hence no __restrict__
/// on these two pointers). Columns [V, grad_ld) are never written.
/// The 16-byte path needs the gradient row to be aligned where the logits
/// row is (same prologue); otherwise the block falls back to scalar code.
/// With a logit transform (`map`, arith.cuh) the gradient is with respect to
/// the raw logit: each element times ∂z'/∂z (map.grad, map.label_grad).
template <class T, class Out, class Map, int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    backward_kernel(const T* logits, int64_t ld, int64_t vocab, const int32_t* __restrict__ cols,
                    const float* __restrict__ row_grad, const float* __restrict__ lse, Out* grad,
                    int64_t grad_ld, Map map) {
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

  const float g = row_grad[t];
  const float l = lse[t];
  if constexpr (has_entropy_upstream<Map>::value) map.at_row(t);  // with_entropy (arith.cuh)
  const float neg_g = -g, neg_l2 = -(l * LOG2E), coef = map.coef(neg_g);
  const bool has_label = c >= cr.begin && c < cr.end;  // this split writes the label's column
  float z_label = 0.0f;
  // With a soft-cap the label column's value is formed before the loop and
  // kept in shared memory: a register live across its longer loop body was
  // spilled (the static report's spill count).
  constexpr bool LABEL_IN_SMEM = Map::SOFTCAP;
  __shared__ float label_out[1];  // unused (and removed) without a soft-cap
  if (has_label && threadIdx.x == 0) {
    z_label = to_float(row[c]);
    if constexpr (LABEL_IN_SMEM) label_out[0] = map.label_grad(z_label, neg_g, l);
  }
  __syncthreads();  // z_label is read before any thread overwrites it (in place)
  auto grad_at = [&](float z) { return map.grad(z, coef, neg_l2); };
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
  if (has_label && threadIdx.x == 0) {
    if constexpr (LABEL_IN_SMEM) {
      out[c] = from_float<Out>(label_out[0]);
    } else {
      out[c] = from_float<Out>(map.label_grad(z_label, neg_g, l));
    }
  }
}

}  // namespace geopref::cuda::detail
