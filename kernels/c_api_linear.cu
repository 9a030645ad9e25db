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

namespace {

namespace gc = geopref::cuda;
using geopref::status;
using namespace geopref::c_abi;

// The projection fields geopref_linear_inputs and geopref_linear_token_rows
// share with their C++ twins (the logit transform among them: it is applied to
// the logits the projection makes); the caller has checked the dtype.
template <class C, class Cpp>
void copy_projection(const C& c, Cpp* r) {
  r->hidden = c.hidden;
  r->ld_hidden = c.ld_hidden;
  r->weight = c.weight;
  r->ld_weight = c.ld_weight;
  r->bias = c.bias;
  r->type = static_cast<gc::dtype>(c.dtype);
  r->n_rows = c.n_rows;
  r->hidden_size = c.hidden_size;
  r->vocab = c.vocab;
  r->chunk_bytes = c.chunk_bytes;
  r->cublas = static_cast<cublasHandle_t>(c.cublas_handle);
  r->logit_transform = to_logit_transform(c.logit_transform);
}

// The gradient fields of geopref_linear_train_args and
// geopref_linear_token_grad_args.
template <class C, class Cpp>
void copy_linear_grads(const C& c, Cpp* a) {
  a->grad_hidden = c.grad_hidden;
  a->ld_grad_hidden = c.ld_grad_hidden;
  a->grad_weight = c.grad_weight;
  a->ld_grad_weight = c.ld_grad_weight;
  a->grad_weight_float32 = c.grad_weight_float32 != 0;
  a->grad_bias = c.grad_bias;
  a->accumulate = c.accumulate != 0;
}

status to_linear(const geopref_linear_inputs& c, gc::linear_inputs* in) {
  if (!valid_dtype(c.dtype) || !valid_index_type(c.label_type) || !valid_index_type(c.offset_type))
    return status::unsupported_dtype;
  copy_projection(c, in);
  copy_sequences(c, in);
  return status::success;
}

status to_linear_train(const geopref_linear_train_args& c, gc::linear_train_args* a) {
  const status s = to_linear(c.in, &a->in);
  if (s != status::success) return s;
  copy_pair_fields(c, a);
  copy_linear_grads(c, a);
  a->host_offsets = c.host_offsets;
  a->host_pairs = c.host_pairs;
  return status::success;
}

status to_linear_logps(const geopref_linear_logps_args& c, gc::linear_logps_args* a) {
  const status s = to_linear(c.in, &a->in);
  if (s != status::success) return s;
  copy_seq_outputs(c, a);
  return status::success;
}

status to_vocab_linear_stats(const geopref_vocab_linear_stats_args& c,
                             gc::vocab_linear_stats_args* a) {
  copy_vocab_fields(c, a);
  gc::linear_inputs in;
  const status s = to_linear(c.in, &in);
  a->in = in;  // the scored_linear block: the stats read no token weights
  return s;
}

status to_vocab_linear_train(const geopref_vocab_linear_train_args& c,
                             gc::vocab_linear_train_args* a) {
  copy_vocab_fields(c, a);
  gc::linear_train_args t;
  const status s = to_linear_train(c.train, &t);
  a->train = t;  // linear_step_args: the vocab step reads no host copies
  return s;
}

status to_token_rows(const geopref_linear_token_rows& c, gc::linear_token_rows* r) {
  if (!valid_dtype(c.dtype) || !valid_index_type(c.label_type)) return status::unsupported_dtype;
  copy_projection(c, r);
  r->labels = c.labels;
  r->label_type = static_cast<gc::index_type>(c.label_type);
  r->ignore_index = c.ignore_index;
  return status::success;
}

status to_token_logps(const geopref_linear_token_logps_args& c, gc::linear_token_logps_args* a) {
  a->token_logps = c.token_logps;
  a->lse = c.lse;
  a->entropy = c.entropy;
  return to_token_rows(c.rows, &a->rows);
}

status to_token_grad(const geopref_linear_token_grad_args& c, gc::linear_token_grad_args* a) {
  a->lse = c.lse;
  a->grad_token_logps = c.grad_token_logps;
  copy_linear_grads(c, a);
  return to_token_rows(c.rows, &a->rows);
}

void init_token_rows(geopref_linear_token_rows* r) {
  r->dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = gc::linear_token_rows{}.ignore_index;
  r->chunk_bytes = gc::linear_token_rows{}.chunk_bytes;
  r->logit_transform = default_logit_transform();
}

void init_inputs(geopref_linear_inputs* in) {
  in->dtype = GEOPREF_FLOAT32;
  in->label_type = GEOPREF_INT64;
  in->offset_type = GEOPREF_INT64;
  in->chunk_bytes = gc::linear_inputs{}.chunk_bytes;
  in->logit_transform = default_logit_transform();
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
  return call(to_token_logps, gc::linear_token_logps, workspace, workspace_bytes, args, stream);
}

geopref_status geopref_linear_token_logps_grad(void* workspace, size_t* workspace_bytes,
                                               const geopref_linear_token_grad_args* args,
                                               geopref_stream_t stream) {
  return call(to_token_grad, gc::linear_token_logps_grad, workspace, workspace_bytes, args,
              stream);
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
