// bench/common/synthetic.hpp — the benchmark problem, generated from a hash
// of the element index so that the CPU benches, the GPU benches and the
// PyTorch peers (bench/peers/) can build the same inputs without shipping
// data, on host or device, in any order.
//
// The shape follows a DPO batch in TRL's concatenated layout: N token rows
// cut into S = N / seq_len sequences of seq_len rows; pair i compares sequence
// i with sequence P + i (P = S / 2). Labels are already shifted, so the last
// row of every sequence has no next token and carries ignore_index; every
// other row is scored. That keeps the bytes-moved accounting honest: almost
// every row is read (see docs/benchmarks.md).
#pragma once

#include <cmath>
#include <cstdint>

#include "geopref/config.hpp"

namespace geopref::bench {

inline constexpr int64_t IGNORE_INDEX = -100;

/// splitmix64: a full-avalanche 64-bit mix, cheap on host and device.
GEOPREF_HD_INLINE uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Uniform in [0, 1) from the top 24 bits (exact in float).
GEOPREF_HD_INLINE float unit_float(uint64_t h) {
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

/// Logit z[t, v]: uniform in [-4, 4), plus 6 on the row's label so the label
/// stands out as a language model's next token would. Then
/// lse_t ≈ log V + log((e⁴ − e⁻⁴)/8) ≈ log V + 1.92 and ℓ_t ≈ 4.08 − log V.
GEOPREF_HD_INLINE float synthetic_logit(uint64_t seed, int64_t row, int64_t col, int64_t label) {
  const uint64_t h = mix64(seed ^ mix64(static_cast<uint64_t>(row) * 0x100000001B3ull +
                                        static_cast<uint64_t>(col)));
  return 8.0f * unit_float(h) - 4.0f + (col == label ? 6.0f : 0.0f);
}

/// Label of row t: ignore_index on the last row of each sequence, else in [0, V).
GEOPREF_HD_INLINE int64_t synthetic_label(uint64_t seed, int64_t row, int64_t seq_len,
                                          int64_t vocab) {
  if ((row + 1) % seq_len == 0) return IGNORE_INDEX;
  return static_cast<int64_t>(mix64(seed ^ 0xA5A5A5A5ull ^ mix64(static_cast<uint64_t>(row))) %
                              static_cast<uint64_t>(vocab));
}

/// Soft label p̂ of pair i, in [0, 1]: a mix of confident and ambiguous pairs.
GEOPREF_HD_INLINE double synthetic_soft_label(uint64_t seed, int64_t pair) {
  return static_cast<double>(unit_float(mix64(seed ^ 0x5EEDull ^ static_cast<uint64_t>(pair))));
}

/// Reference log-prob of sequence s: about what the policy itself gives
/// (ℓ_t ≈ 4.08 − log V per scored token, see synthetic_logit), plus noise in
/// [-2, 2), so margins are of order one and every pair has some gradient.
inline double synthetic_ref_logp(uint64_t seed, int64_t seq, int64_t scored_rows, int64_t vocab) {
  const double noise =
      4.0 * static_cast<double>(unit_float(mix64(seed ^ 0x4EFull ^ static_cast<uint64_t>(seq)))) -
      2.0;
  return (4.08 - std::log(static_cast<double>(vocab))) * static_cast<double>(scored_rows) + noise;
}

/// A benchmark shape: N rows of V logits, sequences of seq_len rows.
struct shape {
  int64_t rows = 0;      // N
  int64_t vocab = 0;     // V
  int64_t seq_len = 0;   // rows per sequence; N must be a multiple of 2 * seq_len
  int64_t seqs() const { return rows / seq_len; }
  int64_t pairs() const { return seqs() / 2; }
  int64_t scored_rows_per_seq() const { return seq_len - 1; }
  int64_t elements() const { return rows * vocab; }
};

inline constexpr uint64_t DEFAULT_SEED = 20241110;  // fixed: results are reproducible

}  // namespace geopref::bench
