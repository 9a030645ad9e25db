// bindings/torch/csrc/c_abi.h — what the CUDA kernels of the geopref torch
// operators (ops_cuda.cpp, ops_linear_cuda.cpp) share on the C ABI's side:
// the logit transform and the options as their C structs.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "geopref/c_api.h"
#include "geopref/c_options.hpp"
#include "geopref/options.hpp"
#include "vocab.h"

namespace geopref_torch {

/// One assignment per field of GEOPREF_LOGIT_TRANSFORM_FIELDS
/// (kernels/c_api_common.cuh checks the C struct against the list).
inline geopref_logit_transform c_transform(const geopref::logit_transform& t) {
  geopref_logit_transform c;
#define GEOPREF_X(type, name, def, flag, doc) c.name = t.name;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

/// The options as geopref_options: one conversion per field of
/// GEOPREF_OPTIONS_FIELDS (geopref/c_options.hpp checks the C struct against it).
inline geopref_options c_options(const geopref::options& o) { return geopref::to_c(o); }

/// The slice as geopref_vocab_slice: one assignment per field of
/// GEOPREF_TORCH_VOCAB_SLICE_FIELDS, by name.
inline geopref_vocab_slice c_slice(const geopref_vocab_slice_fields& s) {
  geopref_vocab_slice c{};
#define GEOPREF_X(name) c.name = static_cast<decltype(c.name)>(s.name);
  GEOPREF_TORCH_VOCAB_SLICE_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

// The records on CUDA: the library's 16-byte geopref_vocab_record, as int32
// [N, 4] (its bytes; an all-gather moves them unchanged).
static_assert(sizeof(geopref_vocab_record) == 4 * sizeof(int32_t), "a record is 16 bytes");

/// A fresh records tensor [N, 4] int32 and its records.
inline at::Tensor c_records_out(int64_t n_rows, const at::Tensor& like,
                                geopref_vocab_record** records) {
  at::Tensor r = at::empty({n_rows, 4}, like.options().dtype(at::kInt));
  *records = reinterpret_cast<geopref_vocab_record*>(r.data_ptr<int32_t>());
  return r;
}

/// The gathered records [n_ranks, N, 4] int32 (vocab_parallel_stats' output
/// on CUDA, all-gathered), contiguous on the device of `like`.
inline const geopref_vocab_record* c_gathered(const at::Tensor& records, int64_t n_ranks,
                                              int64_t n_rows, const at::Tensor& like,
                                              const char* op) {
  TORCH_CHECK_TYPE(records.scalar_type() == at::kInt, "geopref.", op,
                   ": CUDA records must be int32 (vocab_parallel_stats' on CUDA), got ",
                   records.scalar_type());
  TORCH_CHECK_VALUE(records.dim() == 3 && records.size(0) == n_ranks &&
                        records.size(1) == n_rows && records.size(2) == 4,
                    "geopref.", op, ": records must be the gathered [n_ranks, N, 4] = [", n_ranks,
                    ", ", n_rows, ", 4], got ", records.sizes());
  TORCH_CHECK_VALUE(records.device() == like.device() && records.is_contiguous(), "geopref.", op,
                    ": records must be contiguous, on the device of the logits / hidden states");
  return reinterpret_cast<const geopref_vocab_record*>(records.data_ptr<int32_t>());
}

}  // namespace geopref_torch
