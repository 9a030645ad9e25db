// tools/check_problem.hpp — the problem geopref-check has read and validated,
// and what a device computes from it. Shared by the CPU and CUDA paths.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "geopref/options.hpp"
#include "npy.hpp"

namespace geopref::tools {

struct check_problem {
  npy_array logits;                  // float16/32/64, [N, V] or [S, T, V]; empty with --hidden
  // --hidden / --weight [/ --bias] in place of --logits (the fused-linear
  // path): logits = H·Wᵀ + b, never formed by the CUDA path.
  bool linear = false;
  npy_array hidden;                  // float16/32/64, [N, Hd] or [S, T, Hd]
  npy_array weight;                  // [V, Hd], hidden's dtype
  npy_array bias;                    // [V] or empty
  int64_t hidden_size = 0;           // Hd
  npy_array labels;                  // int32/int64, [N] or [S, T]
  int64_t n_rows = 0, vocab = 0;     // N, V (ld = V: .npy arrays are dense)
  int64_t n_seqs = 0, n_pairs = 0;   // S, P
  std::vector<int64_t> offsets;      // [S + 1]
  std::vector<int64_t> pairs;        // [P, 2]; empty: default pairing (i, P + i)
  std::vector<double> soft_labels;   // [P]; empty: binary
  std::vector<double> ref_logps;     // [S]; empty: reference-free
  std::vector<double> weights;       // [P]; empty: all 1
  std::vector<double> token_weights; // [N]; empty: all 1
  options opt;
  // --logit-scale / --softcap / --temperature: applied to every logit of every
  // entry kind (sequence loss, --per-token, --hidden, --vocab-shards).
  logit_transform transform{};
  int vocab_shards = 0;              // > 0: the vocab-parallel path over that many simulated ranks
  // --per-token: the per-token primitive instead of a loss (no sequences).
  bool per_token = false;
  std::vector<double> token_grad;    // [N] --token-grad G: the gradient of Σ_t G_t ℓ_t; empty: none
  std::vector<double> entropy_grad;  // [N] --entropy-grad E: and of Σ_t E_t H_t; empty: none
};

/// Rank k's first column of K even shards of V (the last rank takes the rest),
/// as geopref::cuda::even_slice.
inline int64_t shard_begin(int64_t vocab, int k, int n) { return vocab / n * k; }

/// geopref-check's flag for one field of the logit transform: built from
/// GEOPREF_LOGIT_TRANSFORM_FIELDS (one per field, the list's flag name and
/// summary), so a field added to the list is a flag without a change here.
struct transform_flag {
  const char* flag;                     // "--logit-scale", ...
  const char* doc;                      // the list's summary ("s: multiplies ...")
  double default_value;
  double logit_transform::*field;
};
#define GEOPREF_X(type, name, def, flag, doc)                                              \
  static_assert(std::is_same_v<type, double>, "geopref-check parses doubles only: " #name);
GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
inline constexpr transform_flag TRANSFORM_FLAGS[] = {
#define GEOPREF_X(type, name, def, flag, doc) {"--" flag, doc, def, &logit_transform::name},
    GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
};

struct check_result {
  double loss = 0;                   // reduced loss (Σ w_i f_i for reduction none)
  std::vector<double> pair_losses;   // [P] w_i f_i
  std::vector<double> seq_logps;     // [S] L_s, or L̄_s when length-normalised
  std::vector<double> grad64;        // [N, V] CPU reference gradient, or empty
  std::vector<float> grad32;         // [N, V] CUDA gradient (fp32), or empty
  std::vector<double> grad_hidden;   // [N, Hd] (--hidden)
  std::vector<double> grad_weight;   // [V, Hd]
  std::vector<double> grad_bias;     // [V] (--bias)
  metrics stats;
  std::vector<double> token_logps;   // [N] --per-token: ℓ_t, 0 on unscored rows
  std::vector<double> entropy;       // [N] --per-token: H_t, 0 on unscored rows
  std::vector<double> log_sum_sq_probs, mean_logits;  // [N] --per-token: TRL 1.x's statistics
  std::vector<int32_t> is_top1;      // [N] --per-token: 1 when y_t is the first arg-max
};

/// Runs the problem on the GPU through the C ABI (geopref_check_cuda.cpp).
/// Returns false with a one-line message when the library or CUDA reports an
/// error, or when no device is usable.
bool run_cuda(const check_problem& p, check_result* r, std::string* error);

/// The same for --hidden / --weight: geopref_fused_linear_step.
bool run_cuda_linear(const check_problem& p, check_result* r, std::string* error);

/// --per-token on the GPU (geopref_token_logps, and geopref_token_logps_grad
/// with --token-grad / --entropy-grad): token_logps, entropy, the statistics
/// and grad32.
bool run_cuda_tokens(const check_problem& p, check_result* r, std::string* error);

}  // namespace geopref::tools
