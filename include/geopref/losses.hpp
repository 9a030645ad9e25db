// geopref/losses.hpp — the margin losses, written once for the CPU reference
// and the CUDA kernels.
//
// A *margin loss* is a type with two members, both GEOPREF_HD and const:
//
//     T value(T h, T p) const;       // f(h; p̂)
//     T derivative(T h, T p) const;  // ∂f/∂h at fixed p̂
//
// where h is the pair's margin (policy-minus-reference log-ratio of the first
// response minus that of the second, see docs/math.md) and p is the soft label
// p̂ = P(first ≻ second) in [0, 1] (1 for binary data). Most losses ignore p;
// cdpo and cipo use it as a soft target. T is float or double.
//
// `geometric<L>` turns any margin loss, including a user's own, into its
// geometric-averaged form f((2p̂ − 1)·h) (Furuta et al., NeurIPS 2024).
//
// Every formula is evaluated in a form that cannot overflow for |βh| ≤ 50 in
// float (and far beyond in double): log σ(x) = −softplus(−x), and softplus and
// σ are computed from exp(−|x|) only.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#include "geopref/config.hpp"
#include "geopref/status.hpp"

namespace geopref {

// ---------------------------------------------------------------------------
// Scalar helpers. Explicit float/double overloads call the C functions by name
// so that host (glibc) and device (CUDA libdevice) both resolve them without
// silently promoting float to double.
namespace math {

GEOPREF_HD_INLINE float exp(float x) { return ::expf(x); }
GEOPREF_HD_INLINE double exp(double x) { return ::exp(x); }
GEOPREF_HD_INLINE float log(float x) { return ::logf(x); }
GEOPREF_HD_INLINE double log(double x) { return ::log(x); }
GEOPREF_HD_INLINE float log1p(float x) { return ::log1pf(x); }
GEOPREF_HD_INLINE double log1p(double x) { return ::log1p(x); }
GEOPREF_HD_INLINE float abs(float x) { return ::fabsf(x); }
GEOPREF_HD_INLINE double abs(double x) { return ::fabs(x); }

/// softplus(x) = log(1 + eˣ), stable for every finite x.
template <class T>
GEOPREF_HD_INLINE T softplus(T x) {
  const T m = x > T(0) ? x : T(0);
  return m + math::log1p(math::exp(-math::abs(x)));
}

/// σ(x) = 1 / (1 + e⁻ˣ), from e^{−|x|} so neither branch overflows.
template <class T>
GEOPREF_HD_INLINE T sigmoid(T x) {
  const T e = math::exp(-math::abs(x));
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

/// log σ(x) = −softplus(−x).
template <class T>
GEOPREF_HD_INLINE T log_sigmoid(T x) {
  return -softplus(-x);
}

}  // namespace math

// ---------------------------------------------------------------------------
// The loss family. Each struct holds its parameters; z = βh throughout.

/// dpo: f = −log σ(βh)  (Rafailov et al., 2023).   f' = −β σ(−βh).
template <class T>
struct dpo_loss {
  T beta;
  GEOPREF_HD T value(T h, T /*p*/) const { return math::softplus(-beta * h); }
  GEOPREF_HD T derivative(T h, T /*p*/) const { return -beta * math::sigmoid(-beta * h); }
};

/// cdpo (conservative DPO, soft label as target):
///   f = −p̂ log σ(βh) − (1−p̂) log σ(−βh).   f' = β (σ(βh) − p̂).
/// Minimised where σ(βh) = p̂. The derivative is evaluated as
/// β [(1−p̂) σ(βh) − p̂ σ(−βh)]: σ(βh) − p̂ written directly loses every digit
/// when σ(βh) and p̂ are both near 1 (e.g. p̂ = 1, βh = 30), and this form is
/// bitwise dpo's at p̂ = 1.
template <class T>
struct cdpo_loss {
  T beta;
  GEOPREF_HD T value(T h, T p) const {
    const T z = beta * h;
    return p * math::softplus(-z) + (T(1) - p) * math::softplus(z);
  }
  GEOPREF_HD T derivative(T h, T p) const {
    const T z = beta * h;
    return beta * ((T(1) - p) * math::sigmoid(z) - p * math::sigmoid(-z));
  }
};

/// ipo: f = (h − 1/(2β))²  (Azar et al., 2023).   f' = 2 (h − 1/(2β)).
template <class T>
struct ipo_loss {
  T beta;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T d = h - T(1) / (T(2) * beta);
    return d * d;
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const { return T(2) * (h - T(1) / (T(2) * beta)); }
};

/// cipo (IPO with a soft target), c = 1/(2β):
///   f = p̂ (h − c)² + (1−p̂)(h + c)².   f' = 2 (h − c (2p̂ − 1)).
template <class T>
struct cipo_loss {
  T beta;
  GEOPREF_HD T value(T h, T p) const {
    const T c = T(1) / (T(2) * beta);
    const T a = h - c, b = h + c;
    return p * a * a + (T(1) - p) * b * b;
  }
  GEOPREF_HD T derivative(T h, T p) const {
    const T c = T(1) / (T(2) * beta);
    return T(2) * (h - c * (T(2) * p - T(1)));
  }
};

/// ropo (Liang et al., 2024, arXiv 2404.04102):
///   f = α σ(−βh) − γ log σ(βh).   f' = −β [α σ(βh) σ(−βh) + γ σ(−βh)].
template <class T>
struct ropo_loss {
  T beta, alpha, gamma;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T z = beta * h;
    return alpha * math::sigmoid(-z) + gamma * math::softplus(-z);
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const {
    const T z = beta * h;
    const T sn = math::sigmoid(-z);
    return -beta * (alpha * math::sigmoid(z) * sn + gamma * sn);
  }
};

/// hinge (SLiC): f = max(0, 1 − βh).   f' = −β where βh < 1, else 0
/// (the subgradient 0 is taken at the kink βh = 1).
template <class T>
struct hinge_loss {
  T beta;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T r = T(1) - beta * h;
    return r > T(0) ? r : T(0);
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const { return beta * h < T(1) ? -beta : T(0); }
};

/// robust (rDPO, Chowdhury et al., 2024), ε ∈ [0, 0.5):
///   f = [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1 − 2ε)
///   f' = −β [(1−ε) σ(−βh) + ε σ(βh)] / (1 − 2ε).
template <class T>
struct robust_loss {
  T beta, epsilon;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T z = beta * h;
    return ((T(1) - epsilon) * math::softplus(-z) - epsilon * math::softplus(z)) /
           (T(1) - T(2) * epsilon);
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const {
    const T z = beta * h;
    return -beta * ((T(1) - epsilon) * math::sigmoid(-z) + epsilon * math::sigmoid(z)) /
           (T(1) - T(2) * epsilon);
  }
};

/// exo_pair (Ji et al., 2024; TRL `exo_pair`), ε ∈ (0, 1), s = σ(βh):
///   f = s [log s − log(1−ε)] + (1−s) [log(1−s) − log ε]
///   f' = β s (1−s) (βh + log ε − log(1−ε)).
template <class T>
struct exo_pair_loss {
  T beta, epsilon;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T z = beta * h;
    const T s = math::sigmoid(z), sn = math::sigmoid(-z);
    return s * (math::log_sigmoid(z) - math::log1p(-epsilon)) +
           sn * (math::log_sigmoid(-z) - math::log(epsilon));
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const {
    const T z = beta * h;
    return beta * math::sigmoid(z) * math::sigmoid(-z) *
           (z + math::log(epsilon) - math::log1p(-epsilon));
  }
};

/// discopop (Chris Lu et al., 2024; TRL `discopop`), τ > 0, z = βh, m = σ(z/τ):
///   f = (1 − m)(−log σ(z)) + m e^{−z}.
/// With E = m e^{−z} = exp(log σ(z/τ) − z) (never formed as a product of a
/// tiny and a huge number) and m' = m(1−m)/τ:
///   ∂f/∂z = (1 − m) [E/τ − (m/τ) softplus(−z) − σ(−z)] − E,   f' = β ∂f/∂z.
template <class T>
struct discopop_loss {
  T beta, tau;
  GEOPREF_HD T value(T h, T /*p*/) const {
    const T z = beta * h;
    const T one_minus_m = math::sigmoid(-z / tau);
    const T e = math::exp(math::log_sigmoid(z / tau) - z);
    return one_minus_m * math::softplus(-z) + e;
  }
  GEOPREF_HD T derivative(T h, T /*p*/) const {
    const T z = beta * h;
    const T m = math::sigmoid(z / tau), one_minus_m = math::sigmoid(-z / tau);
    const T e = math::exp(math::log_sigmoid(z / tau) - z);
    const T dz = one_minus_m * (e / tau - (m / tau) * math::softplus(-z) - math::sigmoid(-z)) - e;
    return beta * dz;
  }
};

/// simpo (Meng et al., 2024): f = −log σ(βh − γ), applied to length-normalised
/// log-probs with no reference model.   f' = −β σ(γ − βh).
template <class T>
struct simpo_loss {
  T beta, gamma;
  GEOPREF_HD T value(T h, T /*p*/) const { return math::softplus(gamma - beta * h); }
  GEOPREF_HD T derivative(T h, T /*p*/) const { return -beta * math::sigmoid(gamma - beta * h); }
};

// ---------------------------------------------------------------------------
/// The geometric-averaged form of any margin loss: f̄(h; p̂) = f((2p̂ − 1) h; p̂).
///
/// Replacing π(a), π(b) (and π_ref likewise) by the weighted geometric means
/// π(a)^p̂ π(b)^(1−p̂) and π(b)^p̂ π(a)^(1−p̂) scales the margin by (2p̂ − 1);
/// the normalisers cancel. Hence ∂f̄/∂h = (2p̂ − 1) f'((2p̂ − 1) h). At p̂ = 0.5
/// the scale is exactly 0, so the gradient is exactly 0 for any loss whose
/// derivative at 0 is finite.
template <class Loss>
struct geometric {
  Loss base;

  template <class T>
  GEOPREF_HD T value(T h, T p) const {
    return base.value((T(2) * p - T(1)) * h, p);
  }
  template <class T>
  GEOPREF_HD T derivative(T h, T p) const {
    const T s = T(2) * p - T(1);
    return s * base.derivative(s * h, p);
  }
};

template <class Loss>
GEOPREF_HD_INLINE geometric<Loss> make_geometric(const Loss& base) {
  return geometric<Loss>{base};
}

/// The paper's three methods.
template <class T>
using gdpo_loss = geometric<dpo_loss<T>>;
template <class T>
using gipo_loss = geometric<ipo_loss<T>>;
template <class T>
using gropo_loss = geometric<ropo_loss<T>>;

// ---------------------------------------------------------------------------
// Runtime selection: one value type that names a loss and carries its
// parameters, validated once on the host, and `any_loss<T>`, a margin loss that
// dispatches on it (a switch, so a kernel needs one instantiation, not one per
// loss).

enum class loss_type : int {
  dpo,
  cdpo,
  ipo,
  cipo,
  ropo,
  hinge,
  robust,
  exo_pair,
  discopop,
  simpo,
  gdpo,
  gipo,
  gropo,
};

inline constexpr int LOSS_TYPE_COUNT = 13;

/// Every loss parameter, with the meaning it has for each loss.
struct loss_config {
  loss_type type = loss_type::dpo;
  double beta = 0.1;     // all losses: β > 0
  double alpha = 1.0;    // ropo/gropo: weight of σ(−βh), α >= 0
  double gamma = 0.0;    // ropo/gropo: weight of −log σ(βh), γ >= 0; simpo: target margin γ >= 0
  double epsilon = 0.0;  // robust: ε ∈ [0, 0.5); exo_pair: ε ∈ (0, 1)
  double tau = 0.05;     // discopop: temperature τ > 0 (TRL's default 0.05)
};

/// Lower-case name as in the DESIGN table and TRL ("dpo", "exo_pair", ...).
inline const char* loss_name(loss_type t) noexcept {
  switch (t) {
    case loss_type::dpo: return "dpo";
    case loss_type::cdpo: return "cdpo";
    case loss_type::ipo: return "ipo";
    case loss_type::cipo: return "cipo";
    case loss_type::ropo: return "ropo";
    case loss_type::hinge: return "hinge";
    case loss_type::robust: return "robust";
    case loss_type::exo_pair: return "exo_pair";
    case loss_type::discopop: return "discopop";
    case loss_type::simpo: return "simpo";
    case loss_type::gdpo: return "gdpo";
    case loss_type::gipo: return "gipo";
    case loss_type::gropo: return "gropo";
  }
  return "unknown";
}

/// Parses a loss name; returns false (and leaves *out alone) when unknown.
inline bool parse_loss_type(const char* name, loss_type* out) noexcept {
  if (name == nullptr || out == nullptr) return false;
  for (int i = 0; i < LOSS_TYPE_COUNT; ++i) {
    const char* a = loss_name(static_cast<loss_type>(i));
    const char* b = name;
    while (*a != '\0' && *a == *b) ++a, ++b;
    if (*a == '\0' && *b == '\0') {
      *out = static_cast<loss_type>(i);
      return true;
    }
  }
  return false;
}

/// True for the losses whose margin is built from length-normalised log-probs
/// whatever the options say (simpo).
GEOPREF_HD_INLINE bool forces_average_logps(loss_type t) { return t == loss_type::simpo; }

/// True for the losses defined without a reference model (simpo).
GEOPREF_HD_INLINE bool is_reference_free(loss_type t) { return t == loss_type::simpo; }

/// True for the geometric-averaged variants.
GEOPREF_HD_INLINE bool is_geometric(loss_type t) {
  return t == loss_type::gdpo || t == loss_type::gipo || t == loss_type::gropo;
}

/// Checks the parameters the chosen loss uses; parameters it ignores are not
/// checked.
inline status validate(const loss_config& c) noexcept {
  const int t = static_cast<int>(c.type);
  if (t < 0 || t >= LOSS_TYPE_COUNT) return status::invalid_loss;
  if (!(std::isfinite(c.beta) && c.beta > 0.0)) return status::invalid_beta;
  switch (c.type) {
    case loss_type::ropo:
    case loss_type::gropo:
      if (!(std::isfinite(c.alpha) && c.alpha >= 0.0 && std::isfinite(c.gamma) && c.gamma >= 0.0))
        return status::invalid_alpha_gamma;
      break;
    case loss_type::simpo:
      if (!(std::isfinite(c.gamma) && c.gamma >= 0.0)) return status::invalid_alpha_gamma;
      break;
    case loss_type::robust:
      if (!(c.epsilon >= 0.0 && c.epsilon < 0.5)) return status::invalid_epsilon;
      break;
    case loss_type::exo_pair:
      if (!(c.epsilon > 0.0 && c.epsilon < 1.0)) return status::invalid_epsilon;
      break;
    case loss_type::discopop:
      if (!(std::isfinite(c.tau) && c.tau > 0.0)) return status::invalid_tau;
      break;
    default: break;
  }
  return status::success;
}

/// A margin loss chosen at run time from a (validated) loss_config.
template <class T>
struct any_loss {
  // Defaults as in loss_config, so a default-constructed any_loss is a valid
  // dpo rather than an indeterminate switch.
  loss_type type = loss_type::dpo;
  T beta = T(0.1), alpha = T(1), gamma = T(0), epsilon = T(0), tau = T(0.05);

  any_loss() = default;
  explicit any_loss(const loss_config& c)
      : type(c.type),
        beta(static_cast<T>(c.beta)),
        alpha(static_cast<T>(c.alpha)),
        gamma(static_cast<T>(c.gamma)),
        epsilon(static_cast<T>(c.epsilon)),
        tau(static_cast<T>(c.tau)) {}

  /// Calls fn(loss) with the concrete functor; fn returns T.
  template <class Fn>
  GEOPREF_HD T visit(Fn&& fn) const {
    switch (type) {
      case loss_type::dpo: return fn(dpo_loss<T>{beta});
      case loss_type::cdpo: return fn(cdpo_loss<T>{beta});
      case loss_type::ipo: return fn(ipo_loss<T>{beta});
      case loss_type::cipo: return fn(cipo_loss<T>{beta});
      case loss_type::ropo: return fn(ropo_loss<T>{beta, alpha, gamma});
      case loss_type::hinge: return fn(hinge_loss<T>{beta});
      case loss_type::robust: return fn(robust_loss<T>{beta, epsilon});
      case loss_type::exo_pair: return fn(exo_pair_loss<T>{beta, epsilon});
      case loss_type::discopop: return fn(discopop_loss<T>{beta, tau});
      case loss_type::simpo: return fn(simpo_loss<T>{beta, gamma});
      case loss_type::gdpo: return fn(gdpo_loss<T>{dpo_loss<T>{beta}});
      case loss_type::gipo: return fn(gipo_loss<T>{ipo_loss<T>{beta}});
      case loss_type::gropo: return fn(gropo_loss<T>{ropo_loss<T>{beta, alpha, gamma}});
    }
    return T(0);
  }

  GEOPREF_HD T value(T h, T p) const {
    return visit([h, p](const auto& f) { return f.value(h, p); });
  }
  GEOPREF_HD T derivative(T h, T p) const {
    return visit([h, p](const auto& f) { return f.derivative(h, p); });
  }
};

}  // namespace geopref
