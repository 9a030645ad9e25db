// bindings/torch/csrc/c_abi.h — what the CUDA kernels of the geopref torch
// operators (ops_cuda.cpp, ops_linear_cuda.cpp) share on the C ABI's side:
// the logit transform, the options and the slice as their C structs, the
// dtypes' codes, the accumulators, and the two-phase launch of an entry.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include "geopref/c_api.h"
#include "geopref/c_options.hpp"
#include "geopref/options.hpp"
#include "common.h"
#include "linear.h"
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

/// The C ABI's code of a float dtype (logits, or hidden states and weight:
/// `what` names them in the error).
inline int c_dtype(const at::Tensor& t, const char* what, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return GEOPREF_FLOAT32;
    case at::kHalf: return GEOPREF_FLOAT16;
    case at::kBFloat16: return GEOPREF_BFLOAT16;
    default:
      TORCH_CHECK_TYPE(false, "geopref.", op, ": CUDA ", what,
                       " must be float32, float16 or bfloat16 (float64 is CPU only), got ",
                       t.scalar_type());
  }
  return -1;
}

/// The C ABI's code of labels / offsets (int32 or int64, checked before).
inline int c_index(const at::Tensor& t) {
  return t.scalar_type() == at::kInt ? GEOPREF_INT32 : GEOPREF_INT64;
}

inline geopref_stream_t current_stream() {
  return reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
}

/// One C entry of the form entry(workspace, &bytes, args, options, stream),
/// the two-phase way: the size query (a null workspace), the workspace from
/// the caching allocator, the launch, and with `check` the status the
/// kernels recorded about device data (which synchronises the stream).
template <class Args, class Entry>
void launch(const Args& a, const geopref_options* opt, const at::Tensor& like, bool check,
            Entry entry, const char* op) {
  size_t bytes = 0;
  const geopref_stream_t stream = current_stream();
  check_status(entry(nullptr, &bytes, &a, opt, stream), op);
  // At least one byte: a null workspace would make the second call a size query.
  at::Tensor ws = at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                            like.options().dtype(at::kByte));
  check_status(entry(ws.data_ptr(), &bytes, &a, opt, stream), op);
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(ws.data_ptr(), stream, &recorded), op);
    check_status(recorded, op);
  }
}

template <class Args, class Entry>
void launch(const Args& a, const geopref_options& opt, const at::Tensor& like, bool check,
            Entry entry, const char* op) {
  launch(a, &opt, like, check, entry, op);
}

/// launch() for the entries without options: entry(workspace, &bytes, args, stream).
template <class Args>
void launch(const Args& a, const at::Tensor& like, bool check,
            geopref_status (*entry)(void*, size_t*, const Args*, geopref_stream_t),
            const char* op) {
  launch(a, nullptr, like, check,
         [entry](void* ws, size_t* bytes, const Args* args, const geopref_options*,
                 geopref_stream_t stream) { return entry(ws, bytes, args, stream); },
         op);
}

/// The outputs of a pref-loss step of the C ABI (geopref_train_args,
/// geopref_linear_train_args): the loss ([] or, for reduction "none", [P])
/// and seq_logps [S] in float32, metrics [7] and metric_sums [8] in float64
/// (the C structs' bytes) and, `with_counts`, seq_counts [S] int64; and the
/// upstream gradient the step reads, when given (upstream_of on the device
/// of `like`, which `where` names).
struct c_step_outputs {
  at::Tensor value, seq, metrics, sums, counts, up;
  c_step_outputs(const at::Tensor& like, const geopref::options& opt, int64_t n_pairs,
                 int64_t n_seqs, bool with_counts, const at::Tensor* upstream, const char* where,
                 const char* op)
      : up(upstream_of(upstream, opt, n_pairs, like, at::kFloat, where, op)) {
    const auto f32 = like.options().dtype(at::kFloat), f64 = like.options().dtype(at::kDouble);
    value = opt.reduce == geopref::reduction::none ? at::empty({n_pairs}, f32)
                                                   : at::empty({}, f32);
    seq = at::empty({n_seqs}, f32);
    metrics = at::empty({7}, f64);
    sums = at::empty({METRIC_SUMS}, f64);
    if (with_counts) counts = at::empty({n_seqs}, like.options().dtype(at::kLong));
  }
  template <class Args>
  void fill(Args& a) const {
    a.loss = value.data_ptr<float>();
    a.seq_logps = seq.data_ptr<float>();
    a.seq_counts = counts.defined() ? counts.data_ptr<int64_t>() : nullptr;
    a.stats = reinterpret_cast<geopref_metrics*>(metrics.data_ptr<double>());
    a.stat_sums = reinterpret_cast<geopref_metric_sums*>(sums.data_ptr<double>());
    a.grad_output = data_or_null<float>(up);
  }
};

/// The optional token weights [N] as the C ABI takes them (float32; undefined: all 1).
inline at::Tensor cuda_token_weights(const c10::optional<at::Tensor>& tw, const at::Tensor& like,
                                     const char* op) {
  return optional_vector(tw, like.size(0), like, at::kFloat, "token_weights", op);
}

/// The caller's accumulators (check_accumulators) as the C ABI's
/// `accumulate`: grad_weight and grad_bias added to, in float32 with
/// grad_weight_float32 when the weight's buffer is. Nothing without any.
template <class Args>
void c_accumulators(Args& a, const accumulators& acc, const linear_tensors& t) {
  if (!acc.any()) return;
  a.grad_weight = acc.weight.defined() ? acc.weight.data_ptr() : nullptr;
  a.ld_grad_weight = t.hidden_size();
  a.grad_weight_float32 = acc.weight_float32() ? 1 : 0;
  a.grad_bias = acc.bias.defined() ? acc.bias.data_ptr<float>() : nullptr;
  a.accumulate = 1;
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
