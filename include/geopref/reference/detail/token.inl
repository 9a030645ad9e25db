// geopref/reference/detail/token.inl — the per-token primitive of the CPU
// reference (declared in geopref/reference/reference.hpp). Double throughout.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace geopref::reference {
namespace detail {

/// Sizes, strides, the required pointers and every row's label.
template <class Logit, class Label>
status validate_token_rows(const token_rows<Logit, Label>& in) {
  static_assert(is_supported_logit_v<Logit>,
                "logits must be float, double, Eigen::half or Eigen::bfloat16");
  static_assert(is_supported_index_v<Label>, "labels must be int32_t or int64_t");
  const int64_t N = in.n_rows, V = in.vocab;
  if (N < 0 || V < 0) return status::invalid_shape;
  if (N > 0 && V == 0) return status::invalid_shape;
  if (in.ld < V) return status::invalid_stride;
  if (N > 0 && in.ld > std::numeric_limits<int64_t>::max() / N) return status::invalid_shape;
  if (N > 0 && (in.logits == nullptr || in.labels == nullptr)) return status::null_pointer;
  if (const status s = validate(in.logit_transform); s != status::success) return s;
  for (int64_t t = 0; t < N; ++t) {
    const auto y = static_cast<int64_t>(in.labels[t]);
    if (y != in.ignore_index && (y < 0 || y >= V)) return status::label_out_of_range;
  }
  return status::success;
}

}  // namespace detail

template <class Logit, class Label>
status token_logps(const token_rows<Logit, Label>& in, token_outputs& out) {
  if (const status s = detail::validate_token_rows(in); s != status::success) return s;
  for (int64_t t = 0; t < in.n_rows; ++t) {
    double logp = 0.0, lse = 0.0, h = 0.0, lssp = 0.0, mean = 0.0;
    bool top1 = false;
    const auto y = static_cast<int64_t>(in.labels[t]);
    if (y != in.ignore_index) {
      const Logit* z = in.logits + t * in.ld;
      // lse = m + log Σ exp(z − m); a row without a finite maximum gives NaN
      // (m − m), as compute() does.
      const logit_transform& tr = in.logit_transform;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t v = 0; v < in.vocab; ++v) m = std::fmax(m, detail::logit_at(tr, z[v]));
      double sum = 0.0;
      for (int64_t v = 0; v < in.vocab; ++v) sum += std::exp(detail::logit_at(tr, z[v]) - m);
      lse = m + std::log(sum);
      logp = detail::logit_at(tr, z[y]) - lse;
      if (out.entropy != nullptr)
        for (int64_t v = 0; v < in.vocab; ++v) {
          const double d = lse - detail::logit_at(tr, z[v]);
          const double p = std::exp(-d);
          if (p != 0.0) h += p * d;  // p = 0 (z = −∞) adds 0, not 0·∞; NaN is kept
        }
      if (out.log_sum_sq_probs != nullptr) {
        // Σ p² = Σ exp(2(z − m)) / (Σ exp(z − m))²: the shift m cancels.
        double sq = 0.0;
        for (int64_t v = 0; v < in.vocab; ++v) sq += std::exp(2.0 * (detail::logit_at(tr, z[v]) - m));
        lssp = std::log(sq) - 2.0 * std::log(sum);
      }
      if (out.mean_logits != nullptr) {
        for (int64_t v = 0; v < in.vocab; ++v) mean += detail::logit_at(tr, z[v]);
        mean /= static_cast<double>(in.vocab);
      }
      if (out.is_top1 != nullptr) {
        // The first arg-max: nothing before y reaches z_y, nothing after it
        // exceeds it, and no NaN anywhere (comparisons with NaN are false).
        // Decided on the logits as given: the transform is increasing, so
        // this is the arg-max of z′ in exact arithmetic (docs/math.md).
        const double zy = detail::to_double(z[y]);
        top1 = !std::isnan(zy);
        for (int64_t v = 0; v < in.vocab && top1; ++v) {
          const double zv = detail::to_double(z[v]);
          if (std::isnan(zv) || (v < y && zv >= zy) || (v > y && zv > zy)) top1 = false;
        }
      }
    }
    if (out.token_logps != nullptr) out.token_logps[t] = logp;
    if (out.lse != nullptr) out.lse[t] = lse;
    if (out.entropy != nullptr) out.entropy[t] = h;
    if (out.log_sum_sq_probs != nullptr) out.log_sum_sq_probs[t] = lssp;
    if (out.mean_logits != nullptr) out.mean_logits[t] = mean;
    if (out.is_top1 != nullptr) out.is_top1[t] = top1 ? 1 : 0;
  }
  return status::success;
}

template <class Logit, class Label>
status token_logps_grad(const token_rows<Logit, Label>& in, const double* lse,
                        const double* grad_token_logps, double* grad_logits, int64_t grad_ld,
                        const double* grad_entropy) {
  if (const status s = detail::validate_token_rows(in); s != status::success) return s;
  const int64_t N = in.n_rows, V = in.vocab;
  const int64_t gld = grad_ld != 0 ? grad_ld : in.ld;
  if (grad_ld < 0 || gld < V) return status::invalid_stride;
  if (N > 0 && gld > std::numeric_limits<int64_t>::max() / N) return status::invalid_shape;
  if (N > 0 && (lse == nullptr || grad_logits == nullptr ||
                (grad_token_logps == nullptr && grad_entropy == nullptr)))
    return status::null_pointer;
  for (int64_t t = 0; t < N; ++t)
    if (static_cast<int64_t>(in.labels[t]) != in.ignore_index &&
        ((grad_token_logps != nullptr && !std::isfinite(grad_token_logps[t])) ||
         (grad_entropy != nullptr && !std::isfinite(grad_entropy[t]))))
      return status::invalid_upstream_grad;
  for (int64_t t = 0; t < N; ++t) {
    const auto y = static_cast<int64_t>(in.labels[t]);
    double* g_row = grad_logits + t * gld;
    if (y == in.ignore_index) {
      for (int64_t v = 0; v < V; ++v) g_row[v] = 0.0;
      continue;
    }
    const Logit* z = in.logits + t * in.ld;
    const double g = grad_token_logps != nullptr ? grad_token_logps[t] : 0.0;
    const double e = grad_entropy != nullptr ? grad_entropy[t] : 0.0;
    const logit_transform& tr = in.logit_transform;
    // ∂H/∂z′_v = p_v (E − z′_v), E = Σ_u p_u z′_u (p = 0 terms skipped, not 0·∞).
    double expected = 0.0;
    if (e != 0.0)
      for (int64_t v = 0; v < V; ++v) {
        const double x = detail::logit_at(tr, z[v]);
        const double p = std::exp(x - lse[t]);
        if (p != 0.0) expected += p * x;
      }
    for (int64_t v = 0; v < V; ++v) {
      const double x = detail::logit_at(tr, z[v]);
      const double d = x - lse[t];
      const double p = std::exp(d);
      // The label column as −expm1, accurate when p → 1 (as write_logits_grad),
      // then the entropy's term and the chain rule through the transform.
      double gv = v == y ? g * -std::expm1(d) : g * -p;
      if (e != 0.0 && p != 0.0) gv += e * p * (expected - x);
      g_row[v] = gv * detail::logit_slope(tr, z[v]);
    }
  }
  return status::success;
}

}  // namespace geopref::reference
