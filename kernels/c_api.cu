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
static_assert(GEOPREF_INVALID_STRUCT_SIZE == static_cast<int>(status::invalid_struct_size));
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

static_assert(sizeof(geopref_metric_sums) == sizeof(geopref::metric_sums));
static_assert(offsetof(geopref_metric_sums, pairs) == offsetof(geopref::metric_sums, pairs));

// The records cross the C boundary as they are.
static_assert(sizeof(geopref_vocab_record) == sizeof(gc::vocab_record));
static_assert(offsetof(geopref_vocab_record, tag) == offsetof(gc::vocab_record, tag));

// The C structs of this translation unit, member by member in their order, and
// the C++ members they become (kernels/c_api_common.cuh makes the layout checks
// and the conversions). The logit transform, appended to the argument structs
// in ABI 1.1, lives in the C++ blocks.
namespace geopref::c_abi {

#define GEOPREF_C_TOKENS_FIELDS(X)                                                             \
  X(logits, logits) X(logits_dtype, logits_dtype) X(n_rows, n_rows) X(vocab, vocab) X(ld, ld) \
  X(labels, labels) X(label_type, label_type) X(offsets, offsets)                             \
  X(offset_type, offset_type) X(n_seqs, n_seqs) X(token_weights, token_weights)
GEOPREF_C_BLOCK(geopref_tokens, cuda::token_inputs, GEOPREF_C_TOKENS_FIELDS)
inline void init_member(geopref_tokens* t) {
  t->logits_dtype = GEOPREF_FLOAT32;
  t->label_type = GEOPREF_INT64;
  t->offset_type = GEOPREF_INT64;
}

// The vocab-parallel stats read the scored_logits block of the tokens (no
// token weights: the records do not depend on them; the C member is ignored).
inline status from_c(const geopref_tokens& c, cuda::scored_logits* o) {
  cuda::token_inputs t;
  const status s = from_c(c, &t);
  *o = t;
  return s;
}

#define GEOPREF_C_TOKEN_ROWS_FIELDS(X)                                                         \
  X(logits, logits) X(logits_dtype, logits_dtype) X(n_rows, n_rows) X(vocab, vocab) X(ld, ld) \
  X(labels, labels) X(label_type, label_type) X(ignore_index, ignore_index)
GEOPREF_C_BLOCK(geopref_token_rows, cuda::token_rows, GEOPREF_C_TOKEN_ROWS_FIELDS)
inline void init_member(geopref_token_rows* r) {
  r->logits_dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = geopref::options{}.ignore_index;
}

#define GEOPREF_C_LOGPS_ARGS_FIELDS(X)                                                 \
  X(tokens, tokens) X(seq_logps, seq_logps) X(seq_counts, seq_counts)                 \
  X(token_logps, token_logps) X(lse, lse) X(logit_transform, tokens.logit_transform)
GEOPREF_C_ARGS(geopref_logps_args, cuda::logps_args,
               GEOPREF_C_LOGPS_ARGS_FIELDS, GEOPREF_LOGPS_ARGS_SIZE_1_0)

#define GEOPREF_C_TRAIN_ARGS_FIELDS(X)                                                      \
  X(tokens, tokens) X(n_pairs, n_pairs) X(pairs, pairs) X(soft_labels, soft_labels)        \
  X(ref_logps, ref_logps) X(weights, weights) X(grad_loss, grad_loss)                      \
  X(grad_output, grad_output) X(loss, loss) X(stats, stats) X(seq_logps, seq_logps)        \
  X(seq_counts, seq_counts) X(token_logps, token_logps) X(lse, lse)                        \
  X(grad_seq_logps, grad_seq_logps) X(grad_logits, grad_logits) X(grad_ld, grad_ld)        \
  X(grad_float32, grad_float32) X(stat_sums, stat_sums)                                    \
  X(logit_transform, tokens.logit_transform)
inline void init_own(geopref_train_args* a) { a->grad_loss = 1.0; }
GEOPREF_C_ARGS(geopref_train_args, cuda::train_args,
               GEOPREF_C_TRAIN_ARGS_FIELDS, GEOPREF_TRAIN_ARGS_SIZE_1_0)

#define GEOPREF_C_GRAD_ARGS_FIELDS(X)                                                       \
  X(tokens, tokens) X(lse, lse) X(grad_seq_logps, grad_seq_logps)                          \
  X(grad_logits, grad_logits) X(grad_ld, grad_ld) X(grad_float32, grad_float32)            \
  X(logit_transform, tokens.logit_transform)
GEOPREF_C_ARGS(geopref_grad_args, cuda::grad_args,
               GEOPREF_C_GRAD_ARGS_FIELDS, GEOPREF_GRAD_ARGS_SIZE_1_0)

#define GEOPREF_C_VOCAB_STATS_ARGS_FIELDS(X) \
  X(tokens, tokens) X(slice, slice) X(records, records) X(logit_transform, tokens.logit_transform)
GEOPREF_C_ARGS(geopref_vocab_stats_args, cuda::vocab_stats_args,
               GEOPREF_C_VOCAB_STATS_ARGS_FIELDS, GEOPREF_VOCAB_STATS_ARGS_SIZE_1_0)

// `train` is a pointer to a geopref_train_args, read by its own struct_size.
GEOPREF_C_ARGS(geopref_vocab_train_args, cuda::vocab_train_args,
               GEOPREF_C_VOCAB_TRAIN_ARGS_FIELDS, GEOPREF_VOCAB_TRAIN_ARGS_SIZE_1_0)

GEOPREF_C_ARGS(geopref_token_logps_args, cuda::token_logps_args,
               GEOPREF_C_TOKEN_LOGPS_ARGS_FIELDS, GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0)

#define GEOPREF_C_TOKEN_GRAD_ARGS_FIELDS(X)                                              \
  X(rows, rows) X(lse, lse) X(grad_token_logps, grad_token_logps)                       \
  X(grad_logits, grad_logits) X(grad_ld, grad_ld) X(grad_float32, grad_float32)         \
  X(logit_transform, rows.logit_transform) X(grad_entropy, grad_entropy)                \
  X(entropy, entropy)
GEOPREF_C_ARGS(geopref_token_grad_args, cuda::token_grad_args,
               GEOPREF_C_TOKEN_GRAD_ARGS_FIELDS, GEOPREF_TOKEN_GRAD_ARGS_SIZE_1_0)

// ABI 1.0 is frozen: on LP64 its sizes are these for good (a field appended
// to a struct without moving its SIZE_1_0 macro to offsetof the new field,
// or a change to a frozen block, fails here). Every struct of geopref/c_api.h,
// those of c_api_linear.cu too: this translation unit is in every build.
static_assert(sizeof(void*) != 8 || (GEOPREF_OPTIONS_SIZE_1_0 == 232 &&
                                     GEOPREF_LOGPS_ARGS_SIZE_1_0 == 128 &&
                                     GEOPREF_TRAIN_ARGS_SIZE_1_0 == 240 &&
                                     GEOPREF_GRAD_ARGS_SIZE_1_0 == 136 &&
                                     GEOPREF_VOCAB_STATS_ARGS_SIZE_1_0 == 128 &&
                                     GEOPREF_VOCAB_TRAIN_ARGS_SIZE_1_0 == 48 &&
                                     GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0 == 96 &&
                                     GEOPREF_TOKEN_GRAD_ARGS_SIZE_1_0 == 112 &&
                                     GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0 == 336 &&
                                     GEOPREF_LINEAR_LOGPS_ARGS_SIZE_1_0 == 176 &&
                                     GEOPREF_LINEAR_TOKEN_LOGPS_ARGS_SIZE_1_0 == 144 &&
                                     GEOPREF_LINEAR_TOKEN_GRAD_ARGS_SIZE_1_0 == 192 &&
                                     GEOPREF_VOCAB_LINEAR_STATS_ARGS_SIZE_1_0 == 176 &&
                                     GEOPREF_VOCAB_LINEAR_TRAIN_ARGS_SIZE_1_0 == 48),
              "the ABI 1.0 layouts are frozen");

}  // namespace geopref::c_abi

extern "C" {

void geopref_options_init(geopref_options* opt) {
  if (opt == nullptr) return;
  *opt = geopref::to_c(geopref::options{});  // one assignment per field of GEOPREF_OPTIONS_FIELDS
}

// Every entry, its size query (the entry with a NULL workspace and stream)
// and its argument struct's *_args_init (zeroed, struct_size, the defaults:
// c_api_common.cuh's init_args): the line naming geopref_X_args defines
// geopref_X_args_init.
GEOPREF_C_ENTRY(geopref_train_step, geopref_train_args, gc::train_step)
GEOPREF_C_ENTRY(geopref_sequence_logps, geopref_logps_args, gc::sequence_logps)
GEOPREF_C_ENTRY(geopref_logits_grad, geopref_grad_args, gc::logits_grad)
GEOPREF_C_ENTRY(geopref_vocab_parallel_stats, geopref_vocab_stats_args, gc::vocab_parallel_stats)
GEOPREF_C_ENTRY(geopref_vocab_parallel_train_step, geopref_vocab_train_args,
                gc::vocab_parallel_train_step)
GEOPREF_C_TOKEN_ENTRY(geopref_token_logps, geopref_token_logps_args, gc::token_logps)
GEOPREF_C_TOKEN_ENTRY(geopref_token_logps_grad, geopref_token_grad_args, gc::token_logps_grad)

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
