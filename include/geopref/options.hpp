// geopref/options.hpp — what to compute: loss, reduction, log-prob form.
// Shared by the CPU reference and the CUDA API; host-only.
#pragma once

#include <cmath>
#include <cstdint>

#include "geopref/losses.hpp"
#include "geopref/status.hpp"

namespace geopref {

/// The logit transform of the models people train, applied to every logit
/// before the softmax:
///
///   z' = c · tanh(s · z / c) / T     (softcap c > 0: Gemma's final_logit_softcapping)
///   z' = s · z / T                   (softcap 0: no cap)
///
/// s is the model's logit scale (Granite's and Falcon-H1's logit multiplier,
/// Cohere's logit_scale), T the sampling temperature (GRPO). Log-probs,
/// entropies and every gradient are those of z'; gradients are with respect
/// to the untransformed z (or H, W): ∂z'/∂z = (s/T)(1 − tanh²(s·z/c)), or s/T.
/// The default is the identity, which runs the untransformed kernels.
/// (docs/math.md §2.1.)
///
/// The field list (type, name, default, CLI flag, summary) is the one place a
/// field is declared: the struct, the C struct's check, the PyTorch keywords
/// and geopref-check's flags are built from it.
#define GEOPREF_LOGIT_TRANSFORM_FIELDS(X)                                                    \
  X(double, scale, 1.0, "logit-scale", "s: multiplies the logits first; finite and > 0")    \
  X(double, softcap, 0.0, "softcap", "c: c*tanh(s*z/c) when > 0; 0 means no cap; finite")   \
  X(double, temperature, 1.0, "temperature", "T: divides last; finite and > 0")

struct logit_transform {
#define GEOPREF_X(type, name, def, flag, doc) type name = def;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
};

/// True for the default transform (s = 1, no cap, T = 1): the plain kernels.
inline bool is_identity(const logit_transform& t) noexcept {
  return t.scale == 1.0 && t.softcap == 0.0 && t.temperature == 1.0;
}

inline status validate(const logit_transform& t) noexcept {
  const bool ok = std::isfinite(t.scale) && t.scale > 0.0 && std::isfinite(t.softcap) &&
                  t.softcap >= 0.0 && std::isfinite(t.temperature) && t.temperature > 0.0;
  return ok ? status::success : status::invalid_logit_transform;
}

/// z' in double (the CPU reference). s·z/c and the division by T are formed
/// as written above, so z' = z exactly for the identity.
inline double apply(const logit_transform& t, double z) noexcept {
  if (t.softcap > 0.0) return t.softcap * std::tanh(t.scale * z / t.softcap) / t.temperature;
  return t.scale * z / t.temperature;
}

/// ∂z'/∂z at z, in double.
inline double slope(const logit_transform& t, double z) noexcept {
  if (t.softcap > 0.0) {
    const double th = std::tanh(t.scale * z / t.softcap);
    return t.scale / t.temperature * (1.0 - th * th);
  }
  return t.scale / t.temperature;
}

/// How per-pair losses w_i f_i are combined into the loss.
enum class reduction : int {
  mean,        // (1/P) Σ w_i f_i  (P = number of pairs; weights do not change the divisor)
  sum,         // Σ w_i f_i
  none,        // the P values w_i f_i themselves
  normalizer,  // (1/options::normalizer) Σ w_i f_i — a caller-given count, for
               // gradient accumulation or data parallelism
};

inline const char* reduction_name(reduction r) noexcept {
  switch (r) {
    case reduction::mean: return "mean";
    case reduction::sum: return "sum";
    case reduction::none: return "none";
    case reduction::normalizer: return "normalizer";
  }
  return "unknown";
}

/// The options' own fields (after GEOPREF_LOSS_CONFIG_FIELDS, whose columns
/// and kinds they share). Data parallelism (docs/distributed.md): a rank's
/// batch is part of a global one; with reduction::normalizer = the global
/// divisor (e.g. the global pair count) the pair terms already sum over
/// ranks to the global loss and gradient. The NLL term (sft) is coupled
/// through the batch's token count; nll_tokens and nll_weight make it sum
/// too. 0: the rank's own batch is the whole batch (a single process).
#define GEOPREF_OPTIONS_OWN_FIELDS(X, P)                                                            \
  X(P, enum, ::geopref::reduction, reduce, reduction, ::geopref::reduction::mean, "reduction",      \
    "how per-pair losses w_i f_i are combined: mean, sum, none or normalizer")                      \
  X(P, real, double, normalizer, normalizer, 0.0, "normalizer",                                     \
    "reduction normalizer's divisor (finite, > 0): a caller-given count, for gradient "             \
    "accumulation or data parallelism")                                                             \
  X(P, boolean, bool, average_logps, average_logps, false, "average-logps",                         \
    "terms read L_s / n_s instead of L_s (simpo and orpo always do)")                               \
  X(P, integer, int64_t, ignore_index, ignore_index, -100, "ignore-index",                          \
    "rows whose label equals this are not scored")                                                  \
  X(P, real, double, nll_tokens, nll_tokens, 0.0, "nll-tokens",                                     \
    "data parallel, > 0: sum of n_{a_i} over the non-zero-weight pairs of every rank (0: local)")   \
  X(P, real, double, nll_weight, nll_weight, 0.0, "nll-weight",                                     \
    "data parallel, with nll_tokens: sum of w_i over the non-zero-weight pairs of every rank")

/// Every field of geopref::options, in order: the loss configuration's
/// (members of options::loss, P = `loss.`), then the options' own (P empty).
/// Access a field of an options `o` as `o.P name`.
#define GEOPREF_OPTIONS_FIELDS(X) \
  GEOPREF_LOSS_CONFIG_FIELDS(X, loss.) GEOPREF_OPTIONS_OWN_FIELDS(X, )

/// Everything about *what* is computed that is not a buffer
/// (GEOPREF_OPTIONS_FIELDS).
struct options {
  loss_config loss{};
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) field_t<type> name = def;
  GEOPREF_OPTIONS_OWN_FIELDS(GEOPREF_X, )
#undef GEOPREF_X
};

/// The enums of the field list by name: their value count and names (the
/// names the CLI and the PyTorch keywords take).
template <class E>
struct enum_info;
template <>
struct enum_info<loss_type> {
  static constexpr status invalid = status::invalid_loss;  // the status of a value out of range
  static constexpr int count = LOSS_TYPE_COUNT;
  static const char* name(loss_type t) noexcept { return loss_name(t); }
};
template <>
struct enum_info<margin_transform> {
  static constexpr status invalid = status::invalid_loss_option;  // the status of a value out of range
  static constexpr int count = 3;
  static const char* name(margin_transform t) noexcept { return transform_name(t); }
};
template <>
struct enum_info<reduction> {
  static constexpr status invalid = status::invalid_reduction;  // the status of a value out of range
  static constexpr int count = 4;
  static const char* name(reduction r) noexcept { return reduction_name(r); }
};

/// Parses an enum of the field list by name; false (and *out untouched) when unknown.
template <class E>
bool parse_enum(const char* name, E* out) noexcept {
  if (name == nullptr) return false;
  for (int i = 0; i < enum_info<E>::count; ++i) {
    const char* a = enum_info<E>::name(static_cast<E>(i));
    const char* b = name;
    while (*a != '\0' && *a == *b) ++a, ++b;
    if (*a == '\0' && *b == '\0') {
      *out = static_cast<E>(i);
      return true;
    }
  }
  return false;
}

/// True when the per-sequence log-probs the API reports (seq_logps) and the
/// metrics are length-normalised: average_logps, or every term forces it
/// (simpo, orpo). Reference log-probs are in the form average_logps says.
inline bool uses_average_logps(const options& o) noexcept {
  return o.average_logps || all_terms_averaged(o.loss);
}

/// The form a term reads: L̄ when it forces averaging or average_logps is set.
inline bool term_averaged(const options& o, loss_type t) noexcept {
  return o.average_logps || forces_average_logps(t);
}

inline status validate(const options& o) noexcept {
  const status s = validate(o.loss);
  if (s != status::success) return s;
  switch (o.reduce) {
    case reduction::mean:
    case reduction::sum:
    case reduction::none: break;
    case reduction::normalizer:
      if (!(std::isfinite(o.normalizer) && o.normalizer > 0.0)) return status::invalid_reduction;
      break;
    default: return status::invalid_reduction;
  }
  // The global NLL normaliser: both finite and >= 0; it needs one upstream
  // gradient for every pair (not reduction::none).
  if (!(std::isfinite(o.nll_tokens) && o.nll_tokens >= 0.0 && std::isfinite(o.nll_weight) &&
        o.nll_weight >= 0.0))
    return status::invalid_reduction;
  if (o.nll_tokens > 0.0 && o.reduce == reduction::none) return status::invalid_reduction;
  return status::success;
}

/// The divisor of the reduced loss for P pairs (1 for sum and none).
/// P = 0 with reduction::mean gives 1, so the loss of no pairs is 0, not NaN.
inline double reduction_divisor(const options& o, int64_t n_pairs) noexcept {
  switch (o.reduce) {
    case reduction::mean: return n_pairs > 0 ? static_cast<double>(n_pairs) : 1.0;
    case reduction::normalizer: return o.normalizer;
    default: return 1.0;
  }
}

/// Training metrics, named as TRL logs them. Means are over pairs, unweighted;
/// "chosen" is the first response of each pair, "rejected" the second. The
/// log-probs are the ones the margin uses (L̄ when length-normalised).
struct metrics {
  double rewards_chosen = 0;      // rewards/chosen     mean β (L_a − R_a)
  double rewards_rejected = 0;    // rewards/rejected   mean β (L_b − R_b)
  double rewards_accuracies = 0;  // rewards/accuracies mean 𝟙[chosen reward > rejected reward]
  double rewards_margins = 0;     // rewards/margins    mean of chosen − rejected reward
  double logps_chosen = 0;        // logps/chosen       mean L_a
  double logps_rejected = 0;      // logps/rejected     mean L_b
  double calibration_error = 0;   // mean |σ(βh) − p̂|, h the plain (not geometric) margin
};

/// The metrics before the division by P, and P: what a data-parallel caller
/// all-reduces (sum) over ranks, then divides each field by `pairs`.
struct metric_sums {
  double rewards_chosen = 0;
  double rewards_rejected = 0;
  double rewards_accuracies = 0;
  double rewards_margins = 0;
  double logps_chosen = 0;
  double logps_rejected = 0;
  double calibration_error = 0;
  double pairs = 0;  // P of this rank
};

/// The means a metric_sums stands for (the metrics of the global batch after
/// an all-reduce); all zero when pairs == 0.
inline metrics metrics_from_sums(const metric_sums& s) noexcept {
  metrics m;
  if (!(s.pairs > 0)) return m;
  const double inv = 1.0 / s.pairs;
  m.rewards_chosen = s.rewards_chosen * inv;
  m.rewards_rejected = s.rewards_rejected * inv;
  m.rewards_accuracies = s.rewards_accuracies * inv;
  m.rewards_margins = s.rewards_margins * inv;
  m.logps_chosen = s.logps_chosen * inv;
  m.logps_rejected = s.logps_rejected * inv;
  m.calibration_error = s.calibration_error * inv;
  return m;
}

}  // namespace geopref
