// bindings/torch/csrc/vocab.h — what the CPU and CUDA kernels of the
// vocab-parallel operators (ops_vocab.cpp, ops_cuda.cpp, ops_linear_cuda.cpp)
// share: the slice, which crosses the schemas as one `int[] vocab_slice`.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace geopref_torch {

// The fields of geopref_vocab_slice (geopref/c_api.h) and of
// geopref::cuda::vocab_slice, in their order: the operators' `vocab_slice`
// list and geopref_torch.VocabSlice (read with vocab_slice_fields()). The
// CUDA kernels assign them to the C struct by name (ops_cuda.cpp), so a
// field renamed there fails to compile.
#define GEOPREF_TORCH_VOCAB_SLICE_FIELDS(X) X(begin) X(total) X(rank) X(n_ranks)

struct geopref_vocab_slice_fields {
#define GEOPREF_X(name) int64_t name = 0;
  GEOPREF_TORCH_VOCAB_SLICE_FIELDS(GEOPREF_X)
#undef GEOPREF_X
};

/// vocab_linear_step's outputs: (loss, seq_logps, metrics, metric_sums,
/// grad_hidden, grad_weight, grad_bias).
using vocab_linear_result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                       at::Tensor, at::Tensor>;

inline std::vector<std::string> vocab_slice_fields() {
  return {
#define GEOPREF_X(name) #name,
      GEOPREF_TORCH_VOCAB_SLICE_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  };
}

/// The operators' vocab_slice list, checked against the slice's width
/// (its columns [begin, begin + width) must lie in [0, total); 0 <= rank <
/// n_ranks): a ValueError naming the values otherwise.
inline geopref_vocab_slice_fields to_vocab_slice(c10::IntArrayRef v, int64_t width,
                                                 const char* op) {
  geopref_vocab_slice_fields s;
  TORCH_CHECK_VALUE(v.size() == vocab_slice_fields().size(), "geopref.", op,
                    ": vocab_slice must hold (begin, total, rank, n_ranks), got ", v);
  size_t k = 0;
#define GEOPREF_X(name) s.name = v[k++];
  GEOPREF_TORCH_VOCAB_SLICE_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  TORCH_CHECK_VALUE(s.begin >= 0 && width >= 0 && s.total >= width && s.begin <= s.total - width &&
                        s.n_ranks >= 1 && s.rank >= 0 && s.rank < s.n_ranks,
                    "geopref.", op, ": vocab_slice (begin ", s.begin, ", total ", s.total,
                    ", rank ", s.rank, ", n_ranks ", s.n_ranks, ") does not hold a slice of ",
                    width, " columns of rank < n_ranks");
  return s;
}

}  // namespace geopref_torch

// The arguments of vocab_linear_step (but grad_output) and of
// vocab_linear_accumulate (after grad_output, before the accumulators), in
// the schemas' order (ops_vocab.cpp, GEOPREF_VOCAB_LINEAR_ARGS), for the CPU
// and CUDA kernels.
#define GEOPREF_VOCAB_LINEAR_PARAMS                                                            \
  const Tensor &hidden, const Tensor &weight, const c10::optional<Tensor> &bias,               \
      const Tensor &labels, const Tensor &offsets, const Tensor &records,                      \
      const c10::optional<Tensor> &pairs, const c10::optional<Tensor> &soft_labels,            \
      const c10::optional<Tensor> &ref_logps, const c10::optional<Tensor> &weights,            \
      const c10::optional<Tensor> &token_weights, c10::IntArrayRef vocab_slice,                \
      c10::ArrayRef<double> options, int64_t chunk_bytes, std::array<bool, 3> grad_mask,       \
      bool check, c10::ArrayRef<double> logit_transform
#define GEOPREF_VOCAB_LINEAR_CALL_ARGS                                                         \
  hidden, weight, bias, labels, offsets, records, pairs, soft_labels, ref_logps, weights,      \
      token_weights, vocab_slice, options, chunk_bytes, grad_mask, check, logit_transform

// vocab_linear_step's and vocab_linear_accumulate's kernels of a device
// (suffix cpu or cuda) from its one function step(upstream or null,
// GEOPREF_VOCAB_LINEAR_CALL_ARGS, op, grad_weight_acc, grad_bias_acc) ->
// vocab_linear_result.
#define GEOPREF_VOCAB_LINEAR_KERNELS(device, step)                                             \
  vocab_linear_result vocab_linear_step_##device(GEOPREF_VOCAB_LINEAR_PARAMS,                  \
                                                 const c10::optional<Tensor>& grad_output) {   \
    return step(given(grad_output), GEOPREF_VOCAB_LINEAR_CALL_ARGS, "vocab_linear_step", {},   \
                {});                                                                           \
  }                                                                                            \
  Tensor vocab_linear_accumulate_##device(const Tensor& grad_output,                           \
                                          GEOPREF_VOCAB_LINEAR_PARAMS,                         \
                                          const c10::optional<Tensor>& grad_weight_acc,        \
                                          const c10::optional<Tensor>& grad_bias_acc) {        \
    return std::get<4>(step(&grad_output, GEOPREF_VOCAB_LINEAR_CALL_ARGS,                      \
                            "vocab_linear_accumulate", grad_weight_acc, grad_bias_acc));       \
  }

// The vocab-parallel operators (schemas: ops_vocab.cpp), each with a CPU
// kernel <op>_cpu (ops_vocab.cpp) and a CUDA kernel <op>_cuda: those over
// logits in ops_cuda.cpp, those over hidden states in ops_linear_cuda.cpp.
#define GEOPREF_TORCH_VOCAB_LOGITS_OPS(X) \
  X(vocab_parallel_stats) X(vocab_parallel_train_step) X(vocab_parallel_logps)
#define GEOPREF_TORCH_VOCAB_LINEAR_OPS(X) \
  X(vocab_linear_stats) X(vocab_linear_step) X(vocab_linear_accumulate)

