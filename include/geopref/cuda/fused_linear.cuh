// geopref/cuda/fused_linear.cuh — the loss and its gradients from the last
// hidden states and the output projection, never holding the logits.
//
// For N = 16384 rows and V = 128256 the bf16 logits are 4.2 GB and their
// gradient as much again. These entries take hidden states H [N, Hd] and the
// projection W [V, Hd] (optional bias b [V]) instead, and compute the logits
// Z = H·Wᵀ + b one chunk of rows at a time in the caller's workspace:
//
//   pass 1, per chunk c:  Z_c = H_c·Wᵀ + b (cuBLAS, fp32 accumulation, rounded
//                         to the input dtype as a framework's linear layer
//                         would), then the fused forward → lse_t, ℓ_t;
//   then:                 per-sequence sums, pair losses, metrics, g_s;
//   pass 2, per chunk c:  Z_c again, the fused backward in place (G_c =
//                         ∂Loss/∂Z_c, input dtype), grad_H_c = G_c·W,
//                         grad_W += G_cᵀ·H_c, grad_b += Σ_rows G_c.
//
// so the extra device memory is the chunk the caller allows plus O(N + S + P)
// bookkeeping; never O(N·V). The forward-only entry (the reference model's
// log-probs) runs pass 1 alone.
//
// Calling convention: as geopref/cuda/geopref.cuh (argument struct, workspace
// == nullptr asks for the size, stream last, status return, device-side
// problems in device_status). The size query takes the caller's budget for
// the chunk, linear_inputs::chunk_bytes: the chunk holds
//   C = min(N, chunk_bytes / (ldc · sizeof(dtype)))  rows, ldc = V rounded up to 16 bytes,
// and a budget below one row is status::workspace_too_small. The workspace
// size depends only on N, V, Hd's dtype, S, P and the budget.
//
// cuBLAS: the GEMMs run on `cublas` (the caller's handle; its stream and
// pointer mode are set for the call and restored before return; its math
// mode is the caller's: a handle that allows TF32 makes fp32 inputs use it).
// With cublas == nullptr the call creates a handle and destroys it at the end,
// which allocates and synchronises the device: pass a handle in a training
// loop. Link CUDA::cublas (this header, and linear_token_logps.cuh which
// includes it, are the only ones in geopref that need it).
//
// One pass, three GEMMs (the fast path; docs/math.md §7, "From hidden states:
// the fused-linear path"): when every pair's loss depends only on its own two
// sequences, a chunk that holds whole pairs can finish its pair terms, g_s
// and backward right after its forward. The host must then know which rows
// each chunk holds, and offsets and pairs are device arrays the library never
// waits for; so the path is opt-in through host copies of them
// (linear_train_args::host_offsets, host_pairs). It runs when all of these
// hold (fused_linear_one_pass() says whether they do):
//   * host_offsets is given, and host_pairs too when pairs is;
//   * no loss term couples the batch (no sorted term: aot, aot_unpaired; no
//     sft term);
//   * a gradient is asked for and N > 0, and some row is in a sequence;
//   * the plan exists: the connected components of the pair graph
//     (sequences joined by pairs; one chosen with two rejected is one
//     component of three sequences) packed greedily, in the order of their
//     first sequence, into chunks of at most C rows; a component of more
//     than C rows means the whole call runs two passes;
//   * the chunks average at most 4 segments (runs of adjacent rows, below):
//     scattered pairs make many short GEMMs and round a bf16 grad_W once
//     per segment, so past that two passes run.
// Per chunk: for each run of adjacent rows (a segment; TRL's layout puts a
// chunk's chosen and rejected rows in two), Z = H·Wᵀ + b and the forward;
// the chunk's sequence sums, its pairs' terms and g_s; the backward in place,
// grad_H = G·W and grad_W (+)= Gᵀ·H per segment. Rows after offsets[S] (in
// no sequence) get no GEMM: their grad_hidden rows are set to zero. After
// the chunks the sequence sums and the pair step run over everything, as in
// two passes, so loss, metrics, seq_logps and grad_seq_logps are the same
// bits as the two-pass path's whenever the logits GEMM gives each row the
// same bits whatever rows it is called with (always in the host emulator;
// cuBLAS chooses its kernel by shape, so on a GPU the last bits may differ,
// within the error the tests allow). The cost beyond the GEMMs: a few more,
// smaller kernel launches per chunk (the pair step over the chunk's pairs,
// one block), and an O(S + P) host plan per call. A component larger than C
// rows is a status-free fallback, documented, not an error.
//
// The host copies are checked on the host (invalid_offsets,
// pair_index_out_of_range, as the device would record) and, when given,
// uploaded to the workspace and compared with the device arrays on the
// device: a difference records status::host_layout_mismatch (read it with
// device_status), whichever path runs. The upload is a cudaMemcpyAsync from
// host memory: from pageable memory CUDA stages it before the call returns
// (and may wait for the stream's earlier work to do so); host copies in
// pinned memory are read when the stream reaches the copy, so keep them
// unchanged until then. Either way a call with host copies cannot be
// captured into a CUDA graph (the plan's lists are pageable); without them
// it can. The workspace size is the same with or without them.
//
// Determinism: chunks run in a fixed order, grad_W and grad_b accumulate
// chunk by chunk in that order (cuBLAS beta = 1), no atomics; cuBLAS itself
// gives the same bits run after run on the same card and toolkit. The
// budget is part of the input: another chunk size sums grad_W / grad_b in
// another order, and a chunk of few rows splits rows across blocks (another
// lse order), so the last bits may differ.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "geopref/cuda/args.cuh"
#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::cuda {

/// Block *source* (linear): the hidden states and the projection the
/// rows' logits are computed from, one chunk at a time, and how.
struct linear_source {
  const void* hidden = nullptr;  // [N, ld_hidden] row-major, `type`
  int64_t ld_hidden = 0;         // >= Hd; 0 means Hd
  const void* weight = nullptr;  // [V, ld_weight] row-major, `type` (an nn.Linear's weight)
  int64_t ld_weight = 0;         // >= Hd; 0 means Hd
  const void* bias = nullptr;    // [V] `type`, or null
  dtype type = dtype::bfloat16;  // of hidden, weight, bias, the chunk logits and grad_hidden
  int64_t hidden_size = 0;       // Hd >= 1 when N > 0

  size_t chunk_bytes = size_t{1} << 30;  // budget for the chunk's logits (see above)
  cublasHandle_t cublas = nullptr;       // the caller's handle, or null (see above)
};

/// Block *linear gradients*: each optional (null: not computed); when all
/// three are null the backward is skipped. grad_hidden is always
/// overwritten (every row, zeros for unscored rows); grad_weight and
/// grad_bias are overwritten, or added to with `accumulate` (gradient
/// accumulation over micro-batches). No gradient may meet an input or another.
struct linear_gradients {
  void* grad_hidden = nullptr;   // [N, ld_grad_hidden], `type`
  int64_t ld_grad_hidden = 0;    // >= Hd; 0 means Hd
  void* grad_weight = nullptr;   // [V, ld_grad_weight], `type`, or float with grad_weight_float32
  int64_t ld_grad_weight = 0;    // >= Hd; 0 means Hd
  bool grad_weight_float32 = false;  // float accumulation across chunks and micro-batches
  float* grad_bias = nullptr;    // [V] float; needs a bias
  bool accumulate = false;       // grad_weight += …, grad_bias += … instead of =
};

/// The rows of a linear source a sequence entry scores, without token
/// weights (what vocab_linear_stats reads).
struct scored_linear : linear_source, vocab_rows, sequences {};

/// The hidden states, the projection and the token rows (vocab_rows,
/// sequences and token weights exactly as token_inputs').
struct linear_inputs : scored_linear, token_weighting {};

/// Forward only: the reference model's per-sequence log-probs (logps_args'
/// outputs, seq_logps required) from its own hidden states and projection.
struct linear_logps_args : logps_outputs {
  linear_inputs in;
};

/// A training step from hidden states: train_args' pairs and outputs, plus
/// the gradients with respect to the hidden states, the weight and the bias
/// (what vocab_linear_step reads of a rank's step).
struct linear_step_args : pair_set, train_outputs, linear_gradients {
  linear_inputs in;
};

/// Arguments of fused_linear_step: linear_step_args and the optional host
/// copies of the layout that opt into the one-pass path.
struct linear_train_args : linear_step_args {
  // Host copies of the token layout, for the one-pass path (see the header
  // comment; both optional, read during the call only).
  const int64_t* host_offsets = nullptr;  // [S+1] host memory, the values of in.offsets
  const int64_t* host_pairs = nullptr;    // [P, 2] host memory, the values of pairs (null when
                                          // pairs is null: TRL's layout a_i = i, b_i = P + i)
};

/// Forward only (pass 1): per-sequence log-probs from hidden states.
inline status fused_linear_logps(void* workspace, size_t& workspace_bytes,
                                 const linear_logps_args& args, const options& opt,
                                 cudaStream_t stream = nullptr) noexcept;

/// Loss, metrics, log-probs and the gradients with respect to the hidden
/// states, the weight and the bias (one pass over the chunks when
/// fused_linear_one_pass(), else two).
inline status fused_linear_step(void* workspace, size_t& workspace_bytes,
                                const linear_train_args& args, const options& opt,
                                cudaStream_t stream = nullptr) noexcept;

/// Whether fused_linear_step with these arguments runs the one-pass path
/// (host only: reads the host copies, builds the plan; false also when the
/// shapes, options or host copies would be rejected; the buffers' pointers,
/// alignment and overlaps are checked by the step alone).
inline bool fused_linear_one_pass(const linear_train_args& args, const options& opt) noexcept;

/// The same with a caller's margin loss (see train_step<Loss>): it replaces
/// the loss of every margin term of opt.loss; the chunks, GEMMs and kernels
/// are those of fused_linear_step, only the pair kernel is instantiated per
/// Loss type. The CPU reference's fused_linear_with_loss is its check.
template <class Loss, class = std::enable_if_t<is_margin_loss_v<Loss>>>
inline status fused_linear_step(void* workspace, size_t& workspace_bytes,
                                const linear_train_args& args, const options& opt,
                                const Loss& loss, cudaStream_t stream = nullptr) noexcept;

}  // namespace geopref::cuda

#include "geopref/cuda/geopref.cuh"  // device_status; the shared checks and kernels
#include "geopref/cuda/detail/fused_linear.cuh"
