// kernels/c_api_linear.cu — the fused-linear part of the C ABI
// (geopref_fused_linear_step / geopref_fused_linear_logps in geopref/c_api.h)
// over geopref/cuda/fused_linear.cuh. Its own translation unit so that the
// rest of the ABI (and the PyTorch extension, which compiles c_api.cu) does
// not need cuBLAS. It instantiates the forward kernel for the 3 dtypes and
// the backward for dtype → same dtype only (the chunk's gradient is always
// in the input dtype), plus the two small bias kernels; and the per-token
// primitive from hidden states (geopref_linear_token_logps(_grad)), which adds
// token_rows_kernel and entropy_kernel.
#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>

#include "geopref/c_api.h"
#include "geopref/cuda/fused_linear.cuh"
#include "geopref/cuda/linear_token_logps.cuh"
#include "geopref/cuda/vocab_linear.cuh"
#include "c_api_common.cuh"

namespace gc = geopref::cuda;
using geopref::status;

// The C structs of this translation unit, member by member in their order, and
// the C++ members they become (kernels/c_api_common.cuh makes the layout checks
// and the conversions).
namespace geopref::c_abi {

inline status from_c(void* c, cublasHandle_t* o) {
  *o = static_cast<cublasHandle_t>(c);
  return status::success;
}

#define GEOPREF_C_LINEAR_INPUTS_FIELDS(X)                                                     \
  X(hidden, hidden) X(ld_hidden, ld_hidden) X(weight, weight) X(ld_weight, ld_weight)        \
  X(bias, bias) X(dtype, type) X(n_rows, n_rows) X(hidden_size, hidden_size) X(vocab, vocab) \
  X(labels, labels) X(label_type, label_type) X(offsets, offsets)                            \
  X(offset_type, offset_type) X(n_seqs, n_seqs) X(token_weights, token_weights)              \
  X(chunk_bytes, chunk_bytes) X(cublas_handle, cublas)
GEOPREF_C_BLOCK(geopref_linear_inputs, cuda::linear_inputs, GEOPREF_C_LINEAR_INPUTS_FIELDS)
inline void init_member(geopref_linear_inputs* in) {
  in->dtype = GEOPREF_FLOAT32;
  in->label_type = GEOPREF_INT64;
  in->offset_type = GEOPREF_INT64;
  in->chunk_bytes = cuda::linear_inputs{}.chunk_bytes;
}

#define GEOPREF_C_LINEAR_TOKEN_ROWS_FIELDS(X)                                                 \
  X(hidden, hidden) X(ld_hidden, ld_hidden) X(weight, weight) X(ld_weight, ld_weight)        \
  X(bias, bias) X(dtype, type) X(n_rows, n_rows) X(hidden_size, hidden_size) X(vocab, vocab) \
  X(labels, labels) X(label_type, label_type) X(ignore_index, ignore_index)                  \
  X(chunk_bytes, chunk_bytes) X(cublas_handle, cublas)
GEOPREF_C_BLOCK(geopref_linear_token_rows, cuda::linear_token_rows,
                GEOPREF_C_LINEAR_TOKEN_ROWS_FIELDS)
inline void init_member(geopref_linear_token_rows* r) {
  r->dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = cuda::linear_token_rows{}.ignore_index;
  r->chunk_bytes = cuda::linear_token_rows{}.chunk_bytes;
}

#define GEOPREF_C_LINEAR_LOGPS_ARGS_FIELDS(X)                                  \
  X(in, in) X(seq_logps, seq_logps) X(seq_counts, seq_counts)                 \
  X(token_logps, token_logps) X(lse, lse) X(logit_transform, in.logit_transform)
GEOPREF_C_ARGS(geopref_linear_logps_args, cuda::linear_logps_args,
               GEOPREF_C_LINEAR_LOGPS_ARGS_FIELDS, GEOPREF_LINEAR_LOGPS_ARGS_SIZE_1_0)

#define GEOPREF_C_LINEAR_TRAIN_ARGS_FIELDS(X)                                                \
  X(in, in) X(n_pairs, n_pairs) X(pairs, pairs) X(soft_labels, soft_labels)                 \
  X(ref_logps, ref_logps) X(weights, weights) X(grad_loss, grad_loss)                       \
  X(grad_output, grad_output) X(loss, loss) X(stats, stats) X(stat_sums, stat_sums)         \
  X(seq_logps, seq_logps) X(seq_counts, seq_counts) X(token_logps, token_logps) X(lse, lse) \
  X(grad_seq_logps, grad_seq_logps) X(grad_hidden, grad_hidden)                             \
  X(ld_grad_hidden, ld_grad_hidden) X(grad_weight, grad_weight)                             \
  X(ld_grad_weight, ld_grad_weight) X(grad_weight_float32, grad_weight_float32)             \
  X(grad_bias, grad_bias) X(accumulate, accumulate) X(host_offsets, host_offsets)           \
  X(host_pairs, host_pairs) X(logit_transform, in.logit_transform)
inline void init_own(geopref_linear_train_args* a) { a->grad_loss = 1.0; }
GEOPREF_C_ARGS(geopref_linear_train_args, cuda::linear_train_args,
               GEOPREF_C_LINEAR_TRAIN_ARGS_FIELDS, GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0)

// The vocab-parallel fused linear reads blocks of these: its stats the
// scored_linear block (no token weights), its step linear_step_args (the host
// copies of the one-pass path are not read: the step always runs two passes).
inline status from_c(const geopref_linear_inputs& c, cuda::scored_linear* o) {
  cuda::linear_inputs t;
  const status s = from_c(c, &t);
  *o = t;
  return s;
}
inline status from_c(const geopref_linear_train_args* c, cuda::linear_step_args* o) {
  cuda::linear_train_args t;
  const status s = from_c(c, &t);
  *o = t;
  return s;
}

#define GEOPREF_C_VOCAB_LINEAR_STATS_ARGS_FIELDS(X) \
  X(in, in) X(slice, slice) X(records, records) X(logit_transform, in.logit_transform)
GEOPREF_C_ARGS(geopref_vocab_linear_stats_args, cuda::vocab_linear_stats_args,
               GEOPREF_C_VOCAB_LINEAR_STATS_ARGS_FIELDS, GEOPREF_VOCAB_LINEAR_STATS_ARGS_SIZE_1_0)

// `train` is a pointer to a geopref_linear_train_args, read by its own struct_size.
GEOPREF_C_ARGS(geopref_vocab_linear_train_args, cuda::vocab_linear_train_args,
               GEOPREF_C_VOCAB_TRAIN_ARGS_FIELDS, GEOPREF_VOCAB_LINEAR_TRAIN_ARGS_SIZE_1_0)

GEOPREF_C_ARGS(geopref_linear_token_logps_args, cuda::linear_token_logps_args,
               GEOPREF_C_TOKEN_LOGPS_ARGS_FIELDS, GEOPREF_LINEAR_TOKEN_LOGPS_ARGS_SIZE_1_0)

#define GEOPREF_C_LINEAR_TOKEN_GRAD_ARGS_FIELDS(X)                                            \
  X(rows, rows) X(lse, lse) X(grad_token_logps, grad_token_logps)                            \
  X(grad_hidden, grad_hidden) X(ld_grad_hidden, ld_grad_hidden) X(grad_weight, grad_weight)  \
  X(ld_grad_weight, ld_grad_weight) X(grad_weight_float32, grad_weight_float32)              \
  X(grad_bias, grad_bias) X(accumulate, accumulate) X(logit_transform, rows.logit_transform) \
  X(grad_entropy, grad_entropy) X(entropy, entropy)
GEOPREF_C_ARGS(geopref_linear_token_grad_args, cuda::linear_token_grad_args,
               GEOPREF_C_LINEAR_TOKEN_GRAD_ARGS_FIELDS, GEOPREF_LINEAR_TOKEN_GRAD_ARGS_SIZE_1_0)

}  // namespace geopref::c_abi

extern "C" {

// Every entry, its size query (the entry with a NULL workspace and stream)
// and its argument struct's *_args_init (zeroed, struct_size, the defaults:
// c_api_common.cuh's init_args): the line naming geopref_X_args defines
// geopref_X_args_init (geopref_fused_linear_one_pass shares the step's).
GEOPREF_C_ENTRY(geopref_fused_linear_step, geopref_linear_train_args, gc::fused_linear_step)
GEOPREF_C_ENTRY(geopref_fused_linear_logps, geopref_linear_logps_args, gc::fused_linear_logps)
GEOPREF_C_ENTRY(geopref_vocab_linear_stats, geopref_vocab_linear_stats_args,
                gc::vocab_linear_stats)
GEOPREF_C_ENTRY(geopref_vocab_linear_step, geopref_vocab_linear_train_args, gc::vocab_linear_step)
GEOPREF_C_TOKEN_ENTRY(geopref_linear_token_logps, geopref_linear_token_logps_args,
                      gc::linear_token_logps)
GEOPREF_C_TOKEN_ENTRY(geopref_linear_token_logps_grad, geopref_linear_token_grad_args,
                      gc::linear_token_logps_grad)

geopref_status geopref_fused_linear_one_pass(const geopref_linear_train_args* args,
                                            const geopref_options* opt, int* one_pass) {
  if (args == nullptr || opt == nullptr || one_pass == nullptr)
    return static_cast<int>(status::null_pointer);
  geopref::options o;
  gc::linear_train_args a;
  status s = geopref::c_abi::to_options(opt, &o);
  if (s == status::success) s = geopref::c_abi::from_c(args, &a);
  if (s != status::success) return static_cast<int>(s);
  *one_pass = gc::fused_linear_one_pass(a, o) ? 1 : 0;
  return static_cast<int>(status::success);
}

}  // extern "C"
