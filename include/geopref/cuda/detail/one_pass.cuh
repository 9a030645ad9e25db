// geopref/cuda/detail/one_pass.cuh — the plan of fused_linear_step's one-pass
// path (whole pairs per chunk, three GEMMs; docs/math.md §7, "From hidden
// states: the fused-linear path", paragraph "One pass, three GEMMs") and its
// two small kernels. The chunk loop itself is in detail/fused_linear.cuh, next
// to the two-pass one it mirrors.
//
// The host must know which rows each chunk holds, so the plan is built from
// the caller's host copies of the offsets and pairs (linear_train_args::
// host_offsets, host_pairs), checked here on the host and against the device
// arrays on the device (host_layout_kernel).
//
// Plan: the connected components of the pair graph (sequences the nodes,
// pairs the edges; a sequence in no pair is a component of its own), packed
// greedily, in the order of their first sequence, into chunks of at most C
// rows. A chunk's rows are the union of its sequences' rows, merged into
// contiguous segments stacked in the chunk buffer. Components without rows
// go in no chunk (nothing of theirs is needed before the final pair step).
// Rows outside every sequence ([offsets[S], N): sequences tile [0,
// offsets[S])) are in no segment.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "geopref/cuda/detail/device.cuh"
#include "geopref/cuda/detail/kernels.cuh"
#include "geopref/losses.hpp"
#include "geopref/status.hpp"

namespace geopref::cuda::detail {

/// Whether a loss has a term that couples the batch (sorted: aot; sft: a
/// batch token mean): its pair step needs every pair, so no one pass.
inline bool has_coupled_term(const loss_config& c) noexcept {
  for (int k = 0; k < term_count(c); ++k) {
    const loss_kind kind = kind_of(term_type(c, k));
    if (kind == loss_kind::sorted || kind == loss_kind::sft) return true;
  }
  return false;
}

/// Rows [row0, row0 + rows) of H, at row `at` of the chunk buffer.
struct row_segment {
  int64_t row0 = 0, rows = 0, at = 0;
};

/// The chunks of a one-pass call. Chunk k: segments [seg_begin[k],
/// seg_begin[k+1]), sequences seqs[seq_begin[k] ..), pairs pairs[pair_begin[k]
/// ..) (both ascending). `upload` is the two lists, [seqs | pairs], as they
/// go to the workspace.
struct one_pass_plan {
  std::vector<row_segment> segments;
  std::vector<int64_t> seg_begin, seq_begin, pair_begin;
  std::vector<int64_t> upload;
  int64_t n_seq_list = 0, n_pair_list = 0;  // entries of seqs / pairs used
  int64_t rows_end = 0;                     // offsets[S]: rows after it are in no sequence
  size_t chunks() const { return seg_begin.empty() ? 0 : seg_begin.size() - 1; }
};

/// int64 slots of the plan's piece of the workspace, [host offsets (S+1) |
/// host pairs (2P) | seqs (S) | pairs (P)]; reserved whichever path runs, so
/// the size never depends on the path.
inline size_t one_pass_slots(int64_t n_seqs, int64_t n_pairs) {
  return static_cast<size_t>(n_seqs + 1) + 3 * static_cast<size_t>(n_pairs) +
         static_cast<size_t>(n_seqs);
}

/// The host copies' own checks, the statuses the device checks of the same
/// arrays record: offsets start at 0, never decrease, end at most at N;
/// pair indices in [0, S). host_pairs without pairs is null_pointer (the
/// device has nothing to check it against).
inline status check_host_layout(const int64_t* offsets, int64_t n_seqs, int64_t n_rows,
                                const int64_t* pairs, const int64_t* dev_pairs,
                                int64_t n_pairs) noexcept {
  if (offsets == nullptr) return pairs == nullptr ? status::success : status::null_pointer;
  if (offsets[0] != 0) return status::invalid_offsets;
  for (int64_t s = 0; s < n_seqs; ++s)
    if (offsets[s + 1] < offsets[s]) return status::invalid_offsets;
  if (offsets[n_seqs] > n_rows) return status::invalid_offsets;
  if (pairs != nullptr && dev_pairs == nullptr) return status::null_pointer;
  if (pairs != nullptr)
    for (int64_t i = 0; i < 2 * n_pairs; ++i)
      if (pairs[i] < 0 || pairs[i] >= n_seqs) return status::pair_index_out_of_range;
  return status::success;
}

/// Segments per chunk, on average, beyond which no one-pass plan is made.
constexpr int64_t ONE_PASS_MAX_SEGMENTS = 4;

/// Builds the plan for chunks of at most `chunk_rows` rows from checked host
/// copies (`pairs` null: a_i = i, b_i = P + i, S == 2P). False when no
/// one-pass plan exists: a component has more rows than a chunk, no row is
/// in any sequence, the chunks average more than ONE_PASS_MAX_SEGMENTS
/// segments, or the host memory for the plan cannot be had.
inline bool build_one_pass_plan(const int64_t* offsets, int64_t n_seqs, const int64_t* pairs,
                                int64_t n_pairs, int64_t chunk_rows,
                                one_pass_plan* out) noexcept {
  try {
    const int64_t S = n_seqs, P = n_pairs;
    auto first = [&](int64_t i) { return pairs != nullptr ? pairs[2 * i] : i; };
    auto second = [&](int64_t i) { return pairs != nullptr ? pairs[2 * i + 1] : P + i; };
    // Union-find over the sequences (path halving, union by smaller root:
    // the result depends only on the pairs, never on timing).
    std::vector<int64_t> parent(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) parent[s] = s;
    auto root = [&](int64_t s) {
      while (parent[s] != s) s = parent[s] = parent[parent[s]];
      return s;
    };
    for (int64_t i = 0; i < P; ++i) {
      const int64_t a = root(first(i)), b = root(second(i));
      if (a != b) parent[a < b ? b : a] = a < b ? a : b;
    }
    // Components in the order of their first sequence; their rows.
    std::vector<int64_t> comp_of(static_cast<size_t>(S)), comp_rows;
    std::vector<int64_t> comp_of_root(static_cast<size_t>(S), -1);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t r = root(s);
      if (comp_of_root[r] < 0) {
        comp_of_root[r] = static_cast<int64_t>(comp_rows.size());
        comp_rows.push_back(0);
      }
      comp_of[s] = comp_of_root[r];
      comp_rows[comp_of[s]] += offsets[s + 1] - offsets[s];
    }
    // Greedy packing; components without rows join no chunk (-1).
    std::vector<int64_t> chunk_of(comp_rows.size(), -1);
    int64_t n_chunks = 0, used = 0;
    for (size_t c = 0; c < comp_rows.size(); ++c) {
      if (comp_rows[c] == 0) continue;
      if (comp_rows[c] > chunk_rows) return false;  // a component larger than a chunk
      if (n_chunks == 0 || used + comp_rows[c] > chunk_rows) {
        ++n_chunks;
        used = 0;
      }
      chunk_of[c] = n_chunks - 1;
      used += comp_rows[c];
    }
    if (n_chunks == 0) return false;  // no row in any sequence: nothing to chunk
    one_pass_plan& p = *out;
    p = one_pass_plan{};
    p.rows_end = offsets[S];
    // Counting sort of sequences and pairs by chunk (ascending within each).
    p.seq_begin.assign(static_cast<size_t>(n_chunks) + 1, 0);
    p.pair_begin.assign(static_cast<size_t>(n_chunks) + 1, 0);
    for (int64_t s = 0; s < S; ++s)
      if (chunk_of[comp_of[s]] >= 0) ++p.seq_begin[chunk_of[comp_of[s]] + 1];
    for (int64_t i = 0; i < P; ++i)
      if (chunk_of[comp_of[first(i)]] >= 0) ++p.pair_begin[chunk_of[comp_of[first(i)]] + 1];
    for (int64_t k = 0; k < n_chunks; ++k) {
      p.seq_begin[k + 1] += p.seq_begin[k];
      p.pair_begin[k + 1] += p.pair_begin[k];
    }
    p.n_seq_list = p.seq_begin[n_chunks];
    p.n_pair_list = p.pair_begin[n_chunks];
    p.upload.assign(static_cast<size_t>(p.n_seq_list + p.n_pair_list), 0);
    int64_t* up_seqs = p.upload.data();
    int64_t* up_pairs = up_seqs + p.n_seq_list;
    std::vector<int64_t> fill_seq(p.seq_begin.begin(), p.seq_begin.end() - 1);
    std::vector<int64_t> fill_pair(p.pair_begin.begin(), p.pair_begin.end() - 1);
    for (int64_t s = 0; s < S; ++s)
      if (chunk_of[comp_of[s]] >= 0) up_seqs[fill_seq[chunk_of[comp_of[s]]]++] = s;
    for (int64_t i = 0; i < P; ++i)
      if (chunk_of[comp_of[first(i)]] >= 0) up_pairs[fill_pair[chunk_of[comp_of[first(i)]]]++] = i;
    // Segments: the chunk's sequences in row order, adjacent ones merged.
    p.seg_begin.push_back(0);
    for (int64_t k = 0; k < n_chunks; ++k) {
      int64_t at = 0;
      for (int64_t j = p.seq_begin[k]; j < p.seq_begin[k + 1]; ++j) {
        const int64_t s = up_seqs[j], b = offsets[s], e = offsets[s + 1];
        if (e == b) continue;
        const bool extend = static_cast<int64_t>(p.segments.size()) > p.seg_begin.back() &&
                            p.segments.back().row0 + p.segments.back().rows == b;
        if (extend) p.segments.back().rows += e - b;
        else p.segments.push_back({b, e - b, at});
        at += e - b;
      }
      p.seg_begin.push_back(static_cast<int64_t>(p.segments.size()));
    }
    // Scattered pairs give many short segments, each three GEMM calls of few
    // rows and one more rounding of grad_W and grad_b. TRL's layout gives two
    // per chunk, one chosen against two rejected three; past
    // ONE_PASS_MAX_SEGMENTS per chunk on average, two passes (large GEMMs,
    // one rounding per chunk) are the better choice.
    if (static_cast<int64_t>(p.segments.size()) > ONE_PASS_MAX_SEGMENTS * n_chunks) return false;
    return true;
  } catch (const std::bad_alloc&) {
    return false;  // the two-pass path needs no host memory
  }
}

// ---------------------------------------------------------------------------
// Kernels.

/// The host copies against the device arrays: offsets (canonical int64,
/// after offsets_kernel) [S+1] and, when both exist, pairs [2P]. Any
/// difference records host_layout_mismatch.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    host_layout_kernel(const int64_t* __restrict__ dev_offsets,
                       const int64_t* __restrict__ host_offsets, int64_t n_offsets,
                       const int64_t* __restrict__ dev_pairs, const int64_t* __restrict__ host_pairs,
                       int64_t n_pair_values, int* __restrict__ flag) {
  for (int64_t i = global_thread(); i < n_offsets + n_pair_values; i += grid_threads()) {
    const bool same = i < n_offsets ? dev_offsets[i] == host_offsets[i]
                                    : dev_pairs[i - n_offsets] == host_pairs[i - n_offsets];
    if (!same) record(flag, status::host_layout_mismatch);
  }
}

/// g_s for a chunk's sequences seqs[0 .. n_seqs_list) from the coefficients
/// of its pairs chunk_pairs[0 .. n_pairs_list) (ascending): the sum
/// seq_grad_kernel forms over all pairs, in the same order, without the
/// pairs of other chunks (they never name these sequences), so the same
/// bits.
template <int BLOCK_SIZE>
GEOPREF_KERNEL void __launch_bounds__(BLOCK_SIZE)
    chunk_seq_grad_kernel(const int64_t* __restrict__ pairs, int64_t n_pairs,
                          const int64_t* __restrict__ seqs, int64_t n_seqs_list,
                          const int64_t* __restrict__ chunk_pairs, int64_t n_pairs_list,
                          const double* __restrict__ coef, float* __restrict__ seq_grad) {
  for (int64_t q = global_thread(); q < n_seqs_list; q += grid_threads()) {
    const int64_t s = seqs[q];
    double g = 0.0;
    if (pairs == nullptr) {  // a_i = i, b_i = P + i, as seq_grad_kernel
      if (s < n_pairs) g = coef[2 * s];
      else if (s < 2 * n_pairs) g = coef[2 * (s - n_pairs) + 1];
    } else {
      for (int64_t j = 0; j < n_pairs_list; ++j) {
        const int64_t i = chunk_pairs[j];
        if (pairs[2 * i] == s) g += coef[2 * i];
        if (pairs[2 * i + 1] == s) g += coef[2 * i + 1];
      }
    }
    seq_grad[s] = static_cast<float>(g);
  }
}

}  // namespace geopref::cuda::detail
