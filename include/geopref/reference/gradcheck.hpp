// geopref/reference/gradcheck.hpp — gradient checks by finite differences, in
// double, for the library's losses, your own margin losses, the whole
// logits → loss chain, or any f: Rⁿ → R with an analytic gradient.
//
//   geopref::gradcheck::settings cfg;                 // step 1e-3, floor 1e-6
//   auto r = geopref::gradcheck::check_margin_loss(my_loss{0.1}, {-5, 0.3, 7}, {1.0, 0.7}, cfg);
//   if (!r.passed(1e-6)) std::printf("worst at h=%g p=%g: analytic %g numeric %g\n",
//                                    r.h, r.p, r.analytic, r.numeric);
//
// How the numbers are made (and why):
// - Derivatives are estimated with the five-point central stencil
//     f'(x) ≈ [f(x−2δ) − 8 f(x−δ) + 8 f(x+δ) − f(x+2δ)] / (12 δ),
//   δ = step · max(1, |x|). Its truncation error is δ⁴ f⁽⁵⁾/30 and its
//   round-off about 1.5 ε |f| / δ, so with step = 1e-3 both stay near 1e-13
//   relative for functions whose scale of variation is 1. Sharper functions
//   (large β, discopop's small τ: f varies on the scale τ/β) need a smaller
//   step, about 1e-3 · τ/β.
// - The error of one component is |a − n| / max(|a|, |n|, floor): relative
//   where the derivative is larger than `floor`, absolute in units of `floor`
//   below it, so round-off noise around a zero derivative (a loss's minimum,
//   an unscored logit) does not read as a 100 % error. A NaN or infinite
//   analytic or numeric value counts as an infinite error.
// - A kink (hinge at βh = 1) has no derivative: keep check points at least
//   2δ away from it.
//
// Host-only; allocates std::vectors; never throws.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "geopref/losses.hpp"
#include "geopref/options.hpp"
#include "geopref/reference/reference.hpp"
#include "geopref/status.hpp"

namespace geopref::gradcheck {

struct settings {
  double step = 1e-3;   // δ = step · max(1, |x|)
  double floor = 1e-6;  // denominator floor of the relative error (see above)
};

/// The worst component of one check.
struct result {
  double worst_rel_error = 0.0;  // max over components; +∞ if any value was NaN/∞
  int64_t worst_index = -1;      // component where it occurred (-1: nothing checked)
  double analytic = 0.0;         // analytic derivative there
  double numeric = 0.0;          // finite-difference estimate there
  int64_t checked = 0;           // number of components compared

  /// True when something was checked and every component is within `tol`.
  bool passed(double tol) const { return checked > 0 && worst_rel_error <= tol; }
};

/// A margin-loss check: the worst (h, p̂) point is reported too.
struct margin_result : result {
  double h = 0.0;
  double p = 0.0;
};

/// A logits check: the worst logit's row and column are reported too.
struct logits_result : result {
  int64_t row = -1;
  int64_t col = -1;
};

/// |a − n| / max(|a|, |n|, floor); +∞ when either value is not finite.
inline double relative_error(double analytic, double numeric, double floor) {
  if (!std::isfinite(analytic) || !std::isfinite(numeric))
    return std::numeric_limits<double>::infinity();
  const double den = std::fmax(std::fmax(std::fabs(analytic), std::fabs(numeric)), floor);
  return std::fabs(analytic - numeric) / den;
}

/// Five-point central difference of a scalar function g at x.
template <class G>
double central_difference(G&& g, double x, double step) {
  const double d = step * std::fmax(1.0, std::fabs(x));
  const double f_m2 = g(x - 2 * d), f_m1 = g(x - d), f_p1 = g(x + d), f_p2 = g(x + 2 * d);
  return (f_m2 - 8.0 * f_m1 + 8.0 * f_p1 - f_p2) / (12.0 * d);
}

namespace detail {
inline void record(result& r, int64_t index, double analytic, double numeric, double floor,
                   bool* worst) {
  const double e = relative_error(analytic, numeric, floor);
  *worst = r.checked == 0 || e > r.worst_rel_error;
  if (*worst) {
    r.worst_rel_error = e;
    r.worst_index = index;
    r.analytic = analytic;
    r.numeric = numeric;
  }
  ++r.checked;
}
}  // namespace detail

/// (c) A generic f: Rⁿ → R. `f(const std::vector<double>& x) -> double`;
/// `grad` is its analytic gradient at `x` (same length). Component j is
/// perturbed in a copy of x, every other component held fixed.
template <class F>
result check_gradient(F&& f, const std::vector<double>& x, const std::vector<double>& grad,
                      const settings& cfg = {}) {
  result r;
  if (grad.size() != x.size()) {
    r.worst_rel_error = std::numeric_limits<double>::infinity();
    return r;
  }
  std::vector<double> y = x;
  for (size_t j = 0; j < x.size(); ++j) {
    const double numeric = central_difference(
        [&](double v) {
          y[j] = v;
          return f(static_cast<const std::vector<double>&>(y));
        },
        x[j], cfg.step);
    y[j] = x[j];
    bool worst = false;
    detail::record(r, static_cast<int64_t>(j), grad[j], numeric, cfg.floor, &worst);
  }
  return r;
}

/// (a) A margin loss — the library's or your own: any type with
/// `double value(double h, double p) const` and `double derivative(double h, double p) const`
/// (wrap it in geopref::geometric<> to check its geometric form). Every pair
/// of (margins[j], soft_labels[k]) is checked; worst_index = j·|soft_labels| + k.
template <class Loss>
margin_result check_margin_loss(const Loss& loss, const std::vector<double>& margins,
                                const std::vector<double>& soft_labels, const settings& cfg = {}) {
  margin_result r;
  for (size_t j = 0; j < margins.size(); ++j)
    for (size_t k = 0; k < soft_labels.size(); ++k) {
      const double h = margins[j], p = soft_labels[k];
      const double numeric =
          central_difference([&](double x) { return loss.value(x, p); }, h, cfg.step);
      bool worst = false;
      detail::record(r, static_cast<int64_t>(j * soft_labels.size() + k), loss.derivative(h, p),
                     numeric, cfg.floor, &worst);
      if (worst) r.h = h, r.p = p;
    }
  return r;
}

/// (b) The whole chain logits → token log-probs → sequences → pairs → loss,
/// through the CPU reference with a caller-given margin loss. Every logit in
/// columns [0, V) of every row is perturbed (unscored rows too: their
/// gradient must be exactly 0) and the scalar the reference's grad_logits
/// differentiates is compared:
///   Φ = grad_loss · loss                         (mean, sum, normalizer)
///   Φ = grad_loss · Σ_i u_i · pair_losses[i]     (none; u = grad_pair_losses or 1)
/// worst_index = row·V + col. Returns the reference's status if it rejects the
/// inputs (res is then untouched). Cost: 4·N·V + 1 reference calls — meant
/// for small problems.
namespace detail {
/// The check with `compute(inputs, outputs)` as the function under test.
template <class Label, class Offset, class Compute>
status check_logits(const reference::inputs<double, Label, Offset>& in, const options& opt,
                    const Compute& compute, logits_result& res, const settings& cfg) {
  const int64_t N = in.n_rows, V = in.vocab, P = in.n_pairs;
  // Validate before allocating anything sized by the inputs: absurd sizes
  // must come back as a status, not as a huge allocation or a throw.
  if (const status v = reference::detail::validate_inputs(in, opt, reference::outputs{});
      v != status::success)
    return v;
  // Analytic gradient, written with stride V.
  std::vector<double> grad(static_cast<size_t>(N > 0 ? N * V : 0));
  reference::outputs out;
  out.grad_logits = grad.data();
  out.grad_ld = V > 0 ? V : 1;
  status s = compute(in, out);
  if (s != status::success) return s;

  // A private copy of the logits to perturb.
  // The last row needs only V entries, as in the reference.
  const int64_t n_elems = N > 0 ? (N - 1) * in.ld + V : 0;
  std::vector<double> z(static_cast<size_t>(n_elems));
  for (int64_t i = 0; i < n_elems; ++i) z[i] = in.logits[i];
  reference::inputs<double, Label, Offset> pin = in;
  pin.logits = z.data();
  std::vector<double> pair_losses(static_cast<size_t>(P));

  auto phi = [&]() {
    reference::outputs o;
    o.pair_losses = pair_losses.data();
    compute(pin, o);  // inputs already validated
    if (opt.reduce != reduction::none) return in.grad_loss * o.loss;
    double acc = 0.0;
    for (int64_t i = 0; i < P; ++i)
      acc += (in.grad_pair_losses ? in.grad_pair_losses[i] : 1.0) * pair_losses[i];
    return in.grad_loss * acc;
  };

  logits_result r;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double& cell = z[t * in.ld + v];
      const double z0 = cell;
      const double numeric = central_difference(
          [&](double x) {
            cell = x;
            return phi();
          },
          z0, cfg.step);
      cell = z0;
      bool worst = false;
      detail::record(r, t * V + v, grad[t * V + v], numeric, cfg.floor, &worst);
      if (worst) r.row = t, r.col = v;
    }
  res = r;
  return status::success;
}

}  // namespace detail

template <class Label, class Offset, class Loss>
status check_logits_gradient_with_loss(const reference::inputs<double, Label, Offset>& in,
                                       const options& opt, const Loss& loss, logits_result& res,
                                       const settings& cfg = {}) {
  return detail::check_logits(
      in, opt,
      [&](const reference::inputs<double, Label, Offset>& i, reference::outputs& o) {
        return reference::compute_with_loss(i, opt, loss, o);
      },
      res, cfg);
}

/// (b) with the losses named in opt.loss (every term of a combination).
template <class Label, class Offset>
status check_logits_gradient(const reference::inputs<double, Label, Offset>& in,
                             const options& opt, logits_result& res, const settings& cfg = {}) {
  if (const status s = validate(opt); s != status::success) return s;
  return detail::check_logits(
      in, opt,
      [&](const reference::inputs<double, Label, Offset>& i, reference::outputs& o) {
        return reference::compute(i, opt, o);
      },
      res, cfg);
}

}  // namespace geopref::gradcheck
