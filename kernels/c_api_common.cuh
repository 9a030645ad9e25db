// kernels/c_api_common.cuh — internal to kernels/ (never installed): what the
// two translation units of the C ABI (c_api.cu, and c_api_linear.cu, which
// alone links cuBLAS) share: the shape of an entry (null checks, C structs to
// C++ ones, the C++ call, its status as an int) and the conversions of the
// field groups that several C structs have in common with their C++ twins.
//
// The copy_* helpers are templates over the C struct and the C++ struct
// because the groups repeat by name (geopref_train_args and
// geopref_linear_train_args carry the same pair fields, geopref_tokens and
// geopref_linear_inputs the same sequence fields): one list of fields, so a
// field added to a group on one side cannot be forgotten on the other.
#pragma once

#include <cstddef>
#include <type_traits>

#include "geopref/c_api.h"
#include "geopref/c_options.hpp"
#include "geopref/cuda/args.cuh"
#include "geopref/cuda/vocab_args.cuh"
#include "geopref/options.hpp"
#include "geopref/status.hpp"

namespace geopref::c_abi {

// The C options to C++ ones, generated from GEOPREF_OPTIONS_FIELDS
// (geopref/c_options.hpp, which also checks geopref_options against the
// list). Out-of-range enum values from C are not cast blindly: each maps to
// the status the C++ API gives for an unknown value.
inline status to_options(const geopref_options& c, geopref::options* o) {
  return geopref::from_c(c, o);
}

// An int from C that names a dtype / an index type (checked before the cast).
inline bool valid_dtype(int t) { return t >= GEOPREF_FLOAT32 && t <= GEOPREF_BFLOAT16; }
inline bool valid_index_type(int t) { return t >= GEOPREF_INT32 && t <= GEOPREF_INT64; }

// geopref_logit_transform is geopref::logit_transform field for field: both
// come from GEOPREF_LOGIT_TRANSFORM_FIELDS, the C struct by hand (C has no
// X-macro-built public structs), so the list checks it here: every field of
// the list is a member of the C struct with the list's type, and the C struct
// has no other member (its size is the fields' sizes, all double). A field
// added to the list without its C member fails to compile here.
#define GEOPREF_X(type, name, def, flag, doc)                                            \
  static_assert(std::is_same_v<decltype(geopref_logit_transform::name), type>,            \
                "geopref_logit_transform." #name " must have the field list's type");
GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
#define GEOPREF_X(type, name, def, flag, doc) +sizeof(type)
static_assert(sizeof(geopref_logit_transform) == 0 GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X),
              "geopref_logit_transform has a member the field list does not");
#undef GEOPREF_X

/// The C transform to the C++ one, one assignment per field of the list.
inline geopref::logit_transform to_logit_transform(const geopref_logit_transform& c) {
  geopref::logit_transform t;
#define GEOPREF_X(type, name, def, flag, doc) t.name = c.name;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return t;
}

/// The identity transform (the list's defaults), which every *_args_init sets.
inline geopref_logit_transform default_logit_transform() {
  geopref_logit_transform c;
#define GEOPREF_X(type, name, def, flag, doc) c.name = def;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

/// The sequence fields of geopref_tokens / geopref_linear_inputs (labels,
/// offsets, token weights); the caller has checked both index types.
template <class C, class Cpp>
void copy_sequences(const C& c, Cpp* t) {
  t->labels = c.labels;
  t->label_type = static_cast<cuda::index_type>(c.label_type);
  t->offsets = c.offsets;
  t->offset_type = static_cast<cuda::index_type>(c.offset_type);
  t->n_seqs = c.n_seqs;
  t->token_weights = c.token_weights;
}

/// The forward outputs of a logps call (and of a train step).
template <class C, class Cpp>
void copy_seq_outputs(const C& c, Cpp* a) {
  a->seq_logps = c.seq_logps;
  a->seq_counts = c.seq_counts;
  a->token_logps = c.token_logps;
  a->lse = c.lse;
}

/// The pair fields and outputs of geopref_train_args /
/// geopref_linear_train_args (n_pairs … grad_seq_logps). The metric structs
/// cross as they are (c_api.cu checks their layouts).
template <class C, class Cpp>
void copy_pair_fields(const C& c, Cpp* a) {
  a->n_pairs = c.n_pairs;
  a->pairs = c.pairs;
  a->soft_labels = c.soft_labels;
  a->ref_logps = c.ref_logps;
  a->weights = c.weights;
  a->grad_loss = c.grad_loss;
  a->grad_output = c.grad_output;
  a->loss = c.loss;
  a->stats = reinterpret_cast<geopref::metrics*>(c.stats);
  a->stat_sums = reinterpret_cast<geopref::metric_sums*>(c.stat_sums);
  copy_seq_outputs(c, a);
  a->grad_seq_logps = c.grad_seq_logps;
}

/// The vocab-parallel slice and records of a stats / train call (c_api.cu
/// checks the record's layout).
template <class C, class Cpp>
void copy_vocab_fields(const C& c, Cpp* a) {
  a->slice.begin = c.slice.begin;
  a->slice.total = c.slice.total;
  a->slice.rank = c.slice.rank;
  a->slice.n_ranks = c.slice.n_ranks;
  using record = std::remove_pointer_t<decltype(a->records)>;  // const or not, as the C++ field
  a->records = reinterpret_cast<record*>(c.records);
}

/// The shape of every C entry that takes options: null checks, the C structs
/// to C++ ones, the C++ entry, its status as an int.
template <class CArgs, class Args>
geopref_status call(status (*to_cpp)(const CArgs&, Args*),
                    status (*entry)(void*, size_t&, const Args&, const geopref::options&,
                                    cudaStream_t),
                    void* workspace, size_t* bytes, const CArgs* args, const geopref_options* opt,
                    cudaStream_t stream) {
  if (bytes == nullptr || args == nullptr || opt == nullptr)
    return static_cast<int>(status::null_pointer);
  geopref::options o;
  Args a;
  status s = to_options(*opt, &o);
  if (s == status::success) s = to_cpp(*args, &a);
  if (s == status::success) s = entry(workspace, *bytes, a, o, stream);
  return static_cast<int>(s);
}

/// The same for the per-token primitive's entries, which take no options.
template <class CArgs, class Args>
geopref_status call(status (*to_cpp)(const CArgs&, Args*),
                    status (*entry)(void*, size_t&, const Args&, cudaStream_t), void* workspace,
                    size_t* bytes, const CArgs* args, cudaStream_t stream) {
  if (bytes == nullptr || args == nullptr) return static_cast<int>(status::null_pointer);
  Args a;
  status s = to_cpp(*args, &a);
  if (s == status::success) s = entry(workspace, *bytes, a, stream);
  return static_cast<int>(s);
}

}  // namespace geopref::c_abi
