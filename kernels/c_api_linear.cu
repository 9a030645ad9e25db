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

namespace geopref::c_abi {
geopref::status to_options(const geopref_options& c, geopref::options* o);  // c_api.cu
}

namespace {

namespace gc = geopref::cuda;
using geopref::status;

status to_linear(const geopref_linear_inputs& c, gc::linear_inputs* in) {
  if (c.dtype < GEOPREF_FLOAT32 || c.dtype > GEOPREF_BFLOAT16 || c.label_type < GEOPREF_INT32 ||
      c.label_type > GEOPREF_INT64 || c.offset_type < GEOPREF_INT32 || c.offset_type > GEOPREF_INT64)
    return status::unsupported_dtype;
  in->hidden = c.hidden;
  in->ld_hidden = c.ld_hidden;
  in->weight = c.weight;
  in->ld_weight = c.ld_weight;
  in->bias = c.bias;
  in->type = static_cast<gc::dtype>(c.dtype);
  in->n_rows = c.n_rows;
  in->hidden_size = c.hidden_size;
  in->vocab = c.vocab;
  in->labels = c.labels;
  in->label_type = static_cast<gc::index_type>(c.label_type);
  in->offsets = c.offsets;
  in->offset_type = static_cast<gc::index_type>(c.offset_type);
  in->n_seqs = c.n_seqs;
  in->token_weights = c.token_weights;
  in->chunk_bytes = c.chunk_bytes;
  in->cublas = static_cast<cublasHandle_t>(c.cublas_handle);
  return status::success;
}

status to_linear_train(const geopref_linear_train_args& c, gc::linear_train_args* a) {
  const status s = to_linear(c.in, &a->in);
  if (s != status::success) return s;
  a->n_pairs = c.n_pairs;
  a->pairs = c.pairs;
  a->soft_labels = c.soft_labels;
  a->ref_logps = c.ref_logps;
  a->weights = c.weights;
  a->grad_loss = c.grad_loss;
  a->grad_output = c.grad_output;
  a->loss = c.loss;
  a->stats = reinterpret_cast<geopref::metrics*>(c.stats);  // layouts checked in c_api.cu
  a->stat_sums = reinterpret_cast<geopref::metric_sums*>(c.stat_sums);
  a->seq_logps = c.seq_logps;
  a->seq_counts = c.seq_counts;
  a->token_logps = c.token_logps;
  a->lse = c.lse;
  a->grad_seq_logps = c.grad_seq_logps;
  a->grad_hidden = c.grad_hidden;
  a->ld_grad_hidden = c.ld_grad_hidden;
  a->grad_weight = c.grad_weight;
  a->ld_grad_weight = c.ld_grad_weight;
  a->grad_weight_float32 = c.grad_weight_float32 != 0;
  a->grad_bias = c.grad_bias;
  a->accumulate = c.accumulate != 0;
  a->host_offsets = c.host_offsets;
  a->host_pairs = c.host_pairs;
  return status::success;
}

status to_linear_logps(const geopref_linear_logps_args& c, gc::linear_logps_args* a) {
  const status s = to_linear(c.in, &a->in);
  if (s != status::success) return s;
  a->seq_logps = c.seq_logps;
  a->seq_counts = c.seq_counts;
  a->token_logps = c.token_logps;
  a->lse = c.lse;
  return status::success;
}

// The records and slice cross the C boundary as they are (c_api.cu checks
// the record's layout).
gc::vocab_slice to_slice(const geopref_vocab_slice& c) {
  gc::vocab_slice s;
  s.begin = c.begin;
  s.total = c.total;
  s.rank = c.rank;
  s.n_ranks = c.n_ranks;
  return s;
}

status to_vocab_linear_stats(const geopref_vocab_linear_stats_args& c,
                             gc::vocab_linear_stats_args* a) {
  a->slice = to_slice(c.slice);
  a->records = reinterpret_cast<gc::vocab_record*>(c.records);
  return to_linear(c.in, &a->in);
}

status to_vocab_linear_train(const geopref_vocab_linear_train_args& c,
                             gc::vocab_linear_train_args* a) {
  a->slice = to_slice(c.slice);
  a->records = reinterpret_cast<const gc::vocab_record*>(c.records);
  return to_linear_train(c.train, &a->train);
}

template <class CArgs, class Args>
geopref_status call(status (*to_cpp)(const CArgs&, Args*),
                    status (*entry)(void*, size_t&, const Args&, const geopref::options&, cudaStream_t),
                    void* workspace, size_t* bytes, const CArgs* args, const geopref_options* opt,
                    cudaStream_t stream) {
  if (bytes == nullptr || args == nullptr || opt == nullptr)
    return static_cast<int>(status::null_pointer);
  geopref::options o;
  Args a;
  status s = geopref::c_abi::to_options(*opt, &o);
  if (s == status::success) s = to_cpp(*args, &a);
  if (s == status::success) s = entry(workspace, *bytes, a, o, stream);
  return static_cast<int>(s);
}

status to_token_rows(const geopref_linear_token_rows& c, gc::linear_token_rows* r) {
  if (c.dtype < GEOPREF_FLOAT32 || c.dtype > GEOPREF_BFLOAT16 || c.label_type < GEOPREF_INT32 ||
      c.label_type > GEOPREF_INT64)
    return status::unsupported_dtype;
  r->hidden = c.hidden;
  r->ld_hidden = c.ld_hidden;
  r->weight = c.weight;
  r->ld_weight = c.ld_weight;
  r->bias = c.bias;
  r->type = static_cast<gc::dtype>(c.dtype);
  r->n_rows = c.n_rows;
  r->hidden_size = c.hidden_size;
  r->vocab = c.vocab;
  r->labels = c.labels;
  r->label_type = static_cast<gc::index_type>(c.label_type);
  r->ignore_index = c.ignore_index;
  r->chunk_bytes = c.chunk_bytes;
  r->cublas = static_cast<cublasHandle_t>(c.cublas_handle);
  return status::success;
}

void init_token_rows(geopref_linear_token_rows* r) {
  r->dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = gc::linear_token_rows{}.ignore_index;
  r->chunk_bytes = gc::linear_token_rows{}.chunk_bytes;
}

void init_inputs(geopref_linear_inputs* in) {
  in->dtype = GEOPREF_FLOAT32;
  in->label_type = GEOPREF_INT64;
  in->offset_type = GEOPREF_INT64;
  in->chunk_bytes = gc::linear_inputs{}.chunk_bytes;
}

}  // namespace

extern "C" {

void geopref_linear_train_args_init(geopref_linear_train_args* args) {
  if (args == nullptr) return;
  *args = geopref_linear_train_args{};
  init_inputs(&args->in);
  args->grad_loss = 1.0;
}

void geopref_linear_logps_args_init(geopref_linear_logps_args* args) {
  if (args == nullptr) return;
  *args = geopref_linear_logps_args{};
  init_inputs(&args->in);
}

geopref_status geopref_fused_linear_step(void* workspace, size_t* workspace_bytes,
                                         const geopref_linear_train_args* args,
                                         const geopref_options* opt, geopref_stream_t stream) {
  return call(to_linear_train, gc::fused_linear_step, workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_fused_linear_one_pass(const geopref_linear_train_args* args,
                                            const geopref_options* opt, int* one_pass) {
  if (args == nullptr || opt == nullptr || one_pass == nullptr)
    return static_cast<int>(status::null_pointer);
  geopref::options o;
  gc::linear_train_args a;
  status s = geopref::c_abi::to_options(*opt, &o);
  if (s == status::success) s = to_linear_train(*args, &a);
  if (s != status::success) return static_cast<int>(s);
  *one_pass = gc::fused_linear_one_pass(a, o) ? 1 : 0;
  return static_cast<int>(status::success);
}

geopref_status geopref_fused_linear_logps(void* workspace, size_t* workspace_bytes,
                                          const geopref_linear_logps_args* args,
                                          const geopref_options* opt, geopref_stream_t stream) {
  return call(to_linear_logps, gc::fused_linear_logps, workspace, workspace_bytes, args, opt,
              stream);
}

void geopref_linear_token_logps_args_init(geopref_linear_token_logps_args* args) {
  if (args == nullptr) return;
  *args = geopref_linear_token_logps_args{};
  init_token_rows(&args->rows);
}

void geopref_linear_token_grad_args_init(geopref_linear_token_grad_args* args) {
  if (args == nullptr) return;
  *args = geopref_linear_token_grad_args{};
  init_token_rows(&args->rows);
}

geopref_status geopref_linear_token_logps(void* workspace, size_t* workspace_bytes,
                                          const geopref_linear_token_logps_args* args,
                                          geopref_stream_t stream) {
  if (workspace_bytes == nullptr || args == nullptr) return static_cast<int>(status::null_pointer);
  gc::linear_token_logps_args a;
  status s = to_token_rows(args->rows, &a.rows);
  if (s != status::success) return static_cast<int>(s);
  a.token_logps = args->token_logps;
  a.lse = args->lse;
  a.entropy = args->entropy;
  return static_cast<int>(gc::linear_token_logps(workspace, *workspace_bytes, a,
                                                 static_cast<cudaStream_t>(stream)));
}

geopref_status geopref_linear_token_logps_grad(void* workspace, size_t* workspace_bytes,
                                               const geopref_linear_token_grad_args* args,
                                               geopref_stream_t stream) {
  if (workspace_bytes == nullptr || args == nullptr) return static_cast<int>(status::null_pointer);
  gc::linear_token_grad_args a;
  status s = to_token_rows(args->rows, &a.rows);
  if (s != status::success) return static_cast<int>(s);
  a.lse = args->lse;
  a.grad_token_logps = args->grad_token_logps;
  a.grad_hidden = args->grad_hidden;
  a.ld_grad_hidden = args->ld_grad_hidden;
  a.grad_weight = args->grad_weight;
  a.ld_grad_weight = args->ld_grad_weight;
  a.grad_weight_float32 = args->grad_weight_float32 != 0;
  a.grad_bias = args->grad_bias;
  a.accumulate = args->accumulate != 0;
  return static_cast<int>(gc::linear_token_logps_grad(workspace, *workspace_bytes, a,
                                                      static_cast<cudaStream_t>(stream)));
}

geopref_status geopref_vocab_linear_stats(void* workspace, size_t* workspace_bytes,
                                          const geopref_vocab_linear_stats_args* args,
                                          const geopref_options* opt, geopref_stream_t stream) {
  return call(to_vocab_linear_stats, gc::vocab_linear_stats, workspace, workspace_bytes, args, opt,
              stream);
}

geopref_status geopref_vocab_linear_step(void* workspace, size_t* workspace_bytes,
                                         const geopref_vocab_linear_train_args* args,
                                         const geopref_options* opt, geopref_stream_t stream) {
  return call(to_vocab_linear_train, gc::vocab_linear_step, workspace, workspace_bytes, args, opt,
              stream);
}

}  // extern "C"
