// bindings/torch/csrc/vocab.h — what the CPU and CUDA kernels of the
// vocab-parallel operators (ops_vocab.cpp, ops_cuda.cpp, ops_linear_cuda.cpp)
// share: the slice, which crosses the schemas as one `int[] vocab_slice`.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
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
