// kernels/c_api.cu — the C ABI (geopref/c_api.h) over the CUDA launch API.
//
// This one translation unit holds every kernel instantiation of the compiled
// library: geopref::cuda dispatches the logits dtype (float, half, bfloat16)
// and the label/offset index type (int32, int64) at run time inside
// train_step / sequence_logps / logits_grad, so calling them here
// instantiates exactly those 3 × 2 forward combinations (plus the
// gradient-dtype variants of the backward, shared by train_step and
// logits_grad, and by the per-token primitive, which runs the same forward
// and backward kernels plus its small row kernel and entropy_kernel per
// dtype) and nothing else.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "geopref/c_api.h"
#include "geopref/config.hpp"
#include "geopref/cuda/geopref.cuh"
#include "geopref/cuda/vocab_parallel.cuh"
#include "c_api_common.cuh"

namespace {

namespace gc = geopref::cuda;
using geopref::status;

// The C enums are the C++ enums' values; these keep them in step.
static_assert(GEOPREF_SUCCESS == static_cast<int>(status::success));
static_assert(GEOPREF_INVALID_SHAPE == static_cast<int>(status::invalid_shape));
static_assert(GEOPREF_LABEL_OUT_OF_RANGE == static_cast<int>(status::label_out_of_range));
static_assert(GEOPREF_INVALID_REFERENCE == static_cast<int>(status::invalid_reference));
static_assert(GEOPREF_INVALID_LOSS == static_cast<int>(status::invalid_loss));
static_assert(GEOPREF_REFERENCE_NOT_ALLOWED == static_cast<int>(status::reference_not_allowed));
static_assert(GEOPREF_WORKSPACE_TOO_SMALL == static_cast<int>(status::workspace_too_small));
static_assert(GEOPREF_MISALIGNED_POINTER == static_cast<int>(status::misaligned_pointer));
static_assert(GEOPREF_OVERLAPPING_BUFFERS == static_cast<int>(status::overlapping_buffers));
static_assert(GEOPREF_UNSUPPORTED_DTYPE == static_cast<int>(status::unsupported_dtype));
static_assert(GEOPREF_CUDA_ERROR == static_cast<int>(status::cuda_error));
static_assert(GEOPREF_HOST_LAYOUT_MISMATCH == static_cast<int>(status::host_layout_mismatch));
static_assert(GEOPREF_INVALID_LOGIT_TRANSFORM == static_cast<int>(status::invalid_logit_transform));
static_assert(GEOPREF_INTERNAL_ERROR == static_cast<int>(status::internal_error));
static_assert(GEOPREF_FLOAT32 == static_cast<int>(gc::dtype::float32));
static_assert(GEOPREF_FLOAT16 == static_cast<int>(gc::dtype::float16));
static_assert(GEOPREF_BFLOAT16 == static_cast<int>(gc::dtype::bfloat16));
static_assert(GEOPREF_INT32 == static_cast<int>(gc::index_type::int32));
static_assert(GEOPREF_INT64 == static_cast<int>(gc::index_type::int64));
static_assert(GEOPREF_LOSS_DPO == static_cast<int>(geopref::loss_type::dpo));
static_assert(GEOPREF_LOSS_EXO_PAIR == static_cast<int>(geopref::loss_type::exo_pair));
static_assert(GEOPREF_LOSS_SIMPO == static_cast<int>(geopref::loss_type::simpo));
static_assert(GEOPREF_LOSS_GROPO == static_cast<int>(geopref::loss_type::gropo));
static_assert(GEOPREF_LOSS_NCA_PAIR == static_cast<int>(geopref::loss_type::nca_pair));
static_assert(GEOPREF_LOSS_BCO_PAIR == static_cast<int>(geopref::loss_type::bco_pair));
static_assert(GEOPREF_LOSS_SPPO_HARD == static_cast<int>(geopref::loss_type::sppo_hard));
static_assert(GEOPREF_LOSS_APO_ZERO == static_cast<int>(geopref::loss_type::apo_zero));
static_assert(GEOPREF_LOSS_APO_DOWN == static_cast<int>(geopref::loss_type::apo_down));
static_assert(GEOPREF_LOSS_ORPO == static_cast<int>(geopref::loss_type::orpo));
static_assert(GEOPREF_LOSS_AOT == static_cast<int>(geopref::loss_type::aot));
static_assert(GEOPREF_LOSS_AOT_UNPAIRED == static_cast<int>(geopref::loss_type::aot_unpaired));
static_assert(GEOPREF_LOSS_SFT == static_cast<int>(geopref::loss_type::sft));
// The registry's last entry is the C enum's last: a loss added to the
// registry without its GEOPREF_LOSS_* value fails here.
static_assert(GEOPREF_LOSS_SFT + 1 == geopref::LOSS_TYPE_COUNT);
static_assert(GEOPREF_MAX_LOSS_TERMS == geopref::MAX_LOSS_TERMS);
static_assert(GEOPREF_TRANSFORM_JS == static_cast<int>(geopref::margin_transform::js));
static_assert(GEOPREF_TRANSFORM_ALPHA == static_cast<int>(geopref::margin_transform::alpha));
static_assert(GEOPREF_INVALID_LOSS_OPTION == static_cast<int>(status::invalid_loss_option));
static_assert(GEOPREF_INVALID_VOCAB_RECORDS == static_cast<int>(status::invalid_vocab_records));
static_assert(GEOPREF_REDUCTION_MEAN == static_cast<int>(geopref::reduction::mean));
static_assert(GEOPREF_REDUCTION_NONE == static_cast<int>(geopref::reduction::none));
static_assert(GEOPREF_REDUCTION_NORMALIZER == static_cast<int>(geopref::reduction::normalizer));
static_assert(std::is_same_v<geopref_stream_t, cudaStream_t>);

// The device writes geopref::metrics where the caller passed geopref_metrics.
static_assert(sizeof(geopref_metrics) == sizeof(geopref::metrics));
static_assert(alignof(geopref_metrics) == alignof(geopref::metrics));
static_assert(std::is_standard_layout_v<geopref::metrics>);
#define GEOPREF_SAME_OFFSET(f) \
  static_assert(offsetof(geopref_metrics, f) == offsetof(geopref::metrics, f))
GEOPREF_SAME_OFFSET(rewards_chosen);
GEOPREF_SAME_OFFSET(rewards_rejected);
GEOPREF_SAME_OFFSET(rewards_accuracies);
GEOPREF_SAME_OFFSET(rewards_margins);
GEOPREF_SAME_OFFSET(logps_chosen);
GEOPREF_SAME_OFFSET(logps_rejected);
GEOPREF_SAME_OFFSET(calibration_error);
#undef GEOPREF_SAME_OFFSET

}  // namespace

namespace {
using namespace geopref::c_abi;

status to_tokens(const geopref_tokens& c, gc::token_inputs* t) {
  if (!valid_dtype(c.logits_dtype) || !valid_index_type(c.label_type) ||
      !valid_index_type(c.offset_type))
    return status::unsupported_dtype;
  t->logits = c.logits;
  t->logits_dtype = static_cast<gc::dtype>(c.logits_dtype);
  t->n_rows = c.n_rows;
  t->vocab = c.vocab;
  t->ld = c.ld;
  t->logit_transform = to_logit_transform(c.logit_transform);
  copy_sequences(c, t);
  return status::success;
}

status to_train(const geopref_train_args& c, gc::train_args* a) {
  const status s = to_tokens(c.tokens, &a->tokens);
  if (s != status::success) return s;
  copy_pair_fields(c, a);
  a->grad_logits = c.grad_logits;
  a->grad_ld = c.grad_ld;
  a->grad_float32 = c.grad_float32 != 0;
  return status::success;
}

status to_logps(const geopref_logps_args& c, gc::logps_args* a) {
  const status s = to_tokens(c.tokens, &a->tokens);
  if (s != status::success) return s;
  copy_seq_outputs(c, a);
  return status::success;
}

status to_grad(const geopref_grad_args& c, gc::grad_args* a) {
  const status s = to_tokens(c.tokens, &a->tokens);
  if (s != status::success) return s;
  a->lse = c.lse;
  a->grad_seq_logps = c.grad_seq_logps;
  a->grad_logits = c.grad_logits;
  a->grad_ld = c.grad_ld;
  a->grad_float32 = c.grad_float32 != 0;
  return status::success;
}

static_assert(sizeof(geopref_metric_sums) == sizeof(geopref::metric_sums));
static_assert(offsetof(geopref_metric_sums, pairs) == offsetof(geopref::metric_sums, pairs));

// The records cross the C boundary as they are.
static_assert(sizeof(geopref_vocab_record) == sizeof(gc::vocab_record));
static_assert(offsetof(geopref_vocab_record, tag) == offsetof(gc::vocab_record, tag));

status to_vocab_stats(const geopref_vocab_stats_args& c, gc::vocab_stats_args* a) {
  copy_vocab_fields(c, a);
  gc::token_inputs t;
  const status s = to_tokens(c.tokens, &t);
  a->tokens = t;  // the scored_logits block: the stats read no token weights
  return s;
}

status to_vocab_train(const geopref_vocab_train_args& c, gc::vocab_train_args* a) {
  copy_vocab_fields(c, a);
  return to_train(c.train, &a->train);
}

status to_rows(const geopref_token_rows& c, gc::token_rows* r) {
  if (!valid_dtype(c.logits_dtype) || !valid_index_type(c.label_type))
    return status::unsupported_dtype;
  r->logits = c.logits;
  r->logits_dtype = static_cast<gc::dtype>(c.logits_dtype);
  r->n_rows = c.n_rows;
  r->vocab = c.vocab;
  r->ld = c.ld;
  r->labels = c.labels;
  r->label_type = static_cast<gc::index_type>(c.label_type);
  r->ignore_index = c.ignore_index;
  r->logit_transform = to_logit_transform(c.logit_transform);
  return status::success;
}

status to_token_logps(const geopref_token_logps_args& c, gc::token_logps_args* a) {
  a->token_logps = c.token_logps;
  a->lse = c.lse;
  a->entropy = c.entropy;
  return to_rows(c.rows, &a->rows);
}

status to_token_grad(const geopref_token_grad_args& c, gc::token_grad_args* a) {
  a->lse = c.lse;
  a->grad_token_logps = c.grad_token_logps;
  a->grad_logits = c.grad_logits;
  a->grad_ld = c.grad_ld;
  a->grad_float32 = c.grad_float32 != 0;
  return to_rows(c.rows, &a->rows);
}

geopref_status train_step(void* workspace, size_t* bytes, const geopref_train_args* args,
                          const geopref_options* opt, cudaStream_t stream) {
  return call(to_train, gc::train_step, workspace, bytes, args, opt, stream);
}

geopref_status sequence_logps(void* workspace, size_t* bytes, const geopref_logps_args* args,
                              const geopref_options* opt, cudaStream_t stream) {
  return call(to_logps, gc::sequence_logps, workspace, bytes, args, opt, stream);
}

geopref_status logits_grad(void* workspace, size_t* bytes, const geopref_grad_args* args,
                           const geopref_options* opt, cudaStream_t stream) {
  return call(to_grad, gc::logits_grad, workspace, bytes, args, opt, stream);
}

geopref_status vocab_stats(void* workspace, size_t* bytes, const geopref_vocab_stats_args* args,
                           const geopref_options* opt, cudaStream_t stream) {
  return call(to_vocab_stats, gc::vocab_parallel_stats, workspace, bytes, args, opt, stream);
}

geopref_status vocab_train(void* workspace, size_t* bytes, const geopref_vocab_train_args* args,
                           const geopref_options* opt, cudaStream_t stream) {
  using entry_t = status (*)(void*, size_t&, const gc::vocab_train_args&, const geopref::options&,
                             cudaStream_t);
  const entry_t entry = gc::vocab_parallel_train_step;
  return call(to_vocab_train, entry, workspace, bytes, args, opt, stream);
}

// The defaults the *_args_init functions set in a zeroed struct.
void init_tokens(geopref_tokens* t) {
  t->logits_dtype = GEOPREF_FLOAT32;
  t->label_type = GEOPREF_INT64;
  t->offset_type = GEOPREF_INT64;
  t->logit_transform = default_logit_transform();
}

void init_rows(geopref_token_rows* r) {
  r->logits_dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = geopref::options{}.ignore_index;
  r->logit_transform = default_logit_transform();
}

}  // namespace

extern "C" {

void geopref_options_init(geopref_options* opt) {
  if (opt == nullptr) return;
  *opt = geopref::to_c(geopref::options{});  // one assignment per field of GEOPREF_OPTIONS_FIELDS
}

void geopref_train_args_init(geopref_train_args* args) {
  if (args == nullptr) return;
  *args = geopref_train_args{};
  init_tokens(&args->tokens);
  args->grad_loss = 1.0;
}

void geopref_logps_args_init(geopref_logps_args* args) {
  if (args == nullptr) return;
  *args = geopref_logps_args{};
  init_tokens(&args->tokens);
}

void geopref_grad_args_init(geopref_grad_args* args) {
  if (args == nullptr) return;
  *args = geopref_grad_args{};
  init_tokens(&args->tokens);
}

void geopref_token_logps_args_init(geopref_token_logps_args* args) {
  if (args == nullptr) return;
  *args = geopref_token_logps_args{};
  init_rows(&args->rows);
}

void geopref_token_grad_args_init(geopref_token_grad_args* args) {
  if (args == nullptr) return;
  *args = geopref_token_grad_args{};
  init_rows(&args->rows);
}

geopref_status geopref_token_logps(void* workspace, size_t* workspace_bytes,
                                   const geopref_token_logps_args* args, geopref_stream_t stream) {
  return call(to_token_logps, gc::token_logps, workspace, workspace_bytes, args, stream);
}

geopref_status geopref_token_logps_grad(void* workspace, size_t* workspace_bytes,
                                        const geopref_token_grad_args* args,
                                        geopref_stream_t stream) {
  return call(to_token_grad, gc::token_logps_grad, workspace, workspace_bytes, args, stream);
}

geopref_status geopref_train_step_workspace_size(const geopref_train_args* args,
                                                 const geopref_options* opt,
                                                 size_t* workspace_bytes) {
  return train_step(nullptr, workspace_bytes, args, opt, nullptr);
}

geopref_status geopref_sequence_logps_workspace_size(const geopref_logps_args* args,
                                                     const geopref_options* opt,
                                                     size_t* workspace_bytes) {
  return sequence_logps(nullptr, workspace_bytes, args, opt, nullptr);
}

geopref_status geopref_logits_grad_workspace_size(const geopref_grad_args* args,
                                                  const geopref_options* opt,
                                                  size_t* workspace_bytes) {
  return logits_grad(nullptr, workspace_bytes, args, opt, nullptr);
}

geopref_status geopref_train_step(void* workspace, size_t* workspace_bytes,
                                  const geopref_train_args* args, const geopref_options* opt,
                                  geopref_stream_t stream) {
  return train_step(workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_sequence_logps(void* workspace, size_t* workspace_bytes,
                                      const geopref_logps_args* args, const geopref_options* opt,
                                      geopref_stream_t stream) {
  return sequence_logps(workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_logits_grad(void* workspace, size_t* workspace_bytes,
                                   const geopref_grad_args* args, const geopref_options* opt,
                                   geopref_stream_t stream) {
  return logits_grad(workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_vocab_parallel_stats(void* workspace, size_t* workspace_bytes,
                                            const geopref_vocab_stats_args* args,
                                            const geopref_options* opt, geopref_stream_t stream) {
  return vocab_stats(workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_vocab_parallel_train_step(void* workspace, size_t* workspace_bytes,
                                                 const geopref_vocab_train_args* args,
                                                 const geopref_options* opt,
                                                 geopref_stream_t stream) {
  return vocab_train(workspace, workspace_bytes, args, opt, stream);
}

geopref_status geopref_device_status(const void* workspace, geopref_stream_t stream,
                                     geopref_status* result) {
  if (result == nullptr) return static_cast<int>(status::null_pointer);
  status r = status::success;
  const status s = gc::device_status(workspace, stream, &r);
  if (s == status::success) *result = static_cast<int>(r);
  return static_cast<int>(s);
}

const char* geopref_status_string(geopref_status s) {
  if (s < GEOPREF_SUCCESS || s > GEOPREF_INTERNAL_ERROR) return "unknown status";
  return geopref::status_string(static_cast<status>(s));
}

int geopref_parse_loss(const char* name, int* loss) {
  geopref::loss_type t{};
  if (loss == nullptr || !geopref::parse_loss_type(name, &t)) return 0;
  *loss = static_cast<int>(t);
  return 1;
}

int geopref_version(void) {
  return GEOPREF_VERSION_MAJOR * 10000 + GEOPREF_VERSION_MINOR * 100 + GEOPREF_VERSION_PATCH;
}

}  // extern "C"
