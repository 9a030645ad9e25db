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
#include <string.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

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
GEOPREF_HD_INLINE float expm1(float x) { return ::expm1f(x); }
GEOPREF_HD_INLINE double expm1(double x) { return ::expm1(x); }

/// The key the batch-coupled (sorted) terms order their values by, on the
/// CPU and the GPU alike: ascending (the IEEE bit pattern, sign-flipped),
/// every NaN last whatever its sign bit (x86 and CUDA make different default
/// NaNs). Equal keys keep pair order (stable sorts on both paths).
GEOPREF_HD_INLINE uint64_t sort_key(double x) {
  if (x != x) return ~uint64_t{0};
  uint64_t u;
  memcpy(&u, &x, sizeof u);  // a bit cast (on the device: a register move)
  return (u >> 63) != 0 ? ~u : (u | (uint64_t{1} << 63));
}

/// The largest finite exponent: exp(x) overflows above it.
template <class T>
GEOPREF_HD_INLINE T exp_cap();
template <>
GEOPREF_HD_INLINE float exp_cap<float>() { return 88.7228391f; }
template <>
GEOPREF_HD_INLINE double exp_cap<double>() { return 709.782712893384; }

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

/// log(1 − eˣ) for x <= 0, from expm1 near 0 and log1p far from it (either
/// alone loses every digit on one side of −log 2).
template <class T>
GEOPREF_HD_INLINE T log1mexp(T x) {
  return x > T(-0.6931471805599453) ? math::log(-math::expm1(x)) : math::log1p(-math::exp(x));
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

/// True for a type with the margin-loss shape: const value(h, p) and
/// derivative(h, p) taking and returning double. Used to keep
/// geopref::cuda::train_step<Loss> from matching anything else (a null
/// stream passed as `nullptr`, for instance).
template <class L, class = void>
struct is_margin_loss : std::false_type {};
template <class L>
struct is_margin_loss<L, std::void_t<decltype(static_cast<double>(std::declval<const L&>().value(0.0, 0.0))),
                                     decltype(static_cast<double>(std::declval<const L&>().derivative(0.0, 0.0)))>>
    : std::true_type {};
template <class L>
inline constexpr bool is_margin_loss_v = is_margin_loss<L>::value;

/// The paper's three methods.
template <class T>
using gdpo_loss = geometric<dpo_loss<T>>;
template <class T>
using gipo_loss = geometric<ipo_loss<T>>;
template <class T>
using gropo_loss = geometric<ropo_loss<T>>;

// ---------------------------------------------------------------------------
// Terms that read more than the margin (docs/math.md §5, "Terms beyond the
// margin"). ρ_w = x_w − R_w and ρ_l = x_l − R_l are the two responses'
// log-ratios (x the log-prob in the term's form); each term returns its value
// and both partial derivatives.

/// The result of a two-sided term: f and ∂f/∂ρ_w, ∂f/∂ρ_l.
template <class T>
struct pair_grad {
  T value, d_w, d_l;
};

/// nca_pair (Chen et al., 2024; TRL `nca_pair`), z = βρ:
///   f = −log σ(z_w) − ½ log σ(−z_w) − ½ log σ(−z_l)
///   ∂f/∂ρ_w = β [½ σ(z_w) − σ(−z_w)],   ∂f/∂ρ_l = ½ β σ(z_l).
template <class T>
struct nca_pair_loss {
  T beta;
  GEOPREF_HD pair_grad<T> operator()(T rw, T rl) const {
    const T zw = beta * rw, zl = beta * rl;
    return {math::softplus(-zw) + T(0.5) * math::softplus(zw) + T(0.5) * math::softplus(zl),
            beta * (T(0.5) * math::sigmoid(zw) - math::sigmoid(-zw)),
            T(0.5) * beta * math::sigmoid(zl)};
  }
};

/// bco_pair (Jung et al., 2024; TRL `bco_pair`), δ a reward offset: 0 in TRL
/// v1.16.0, the running mean reward (the caller's state) in TRL v0.28:
///   f = −log σ(βρ_w − δ) − log σ(−(βρ_l − δ))
///   ∂f/∂ρ_w = −β σ(δ − βρ_w),   ∂f/∂ρ_l = β σ(βρ_l − δ).
template <class T>
struct bco_pair_loss {
  T beta, delta;
  GEOPREF_HD pair_grad<T> operator()(T rw, T rl) const {
    const T uw = beta * rw - delta, ul = beta * rl - delta;
    return {math::softplus(-uw) + math::softplus(ul), -beta * math::sigmoid(-uw),
            beta * math::sigmoid(ul)};
  }
};

/// sppo_hard (Wu et al., 2024; TRL `sppo_hard`), c = 1/(2β):
///   f = (ρ_w − c)² + (ρ_l + c)²,   ∂f/∂ρ_w = 2(ρ_w − c),   ∂f/∂ρ_l = 2(ρ_l + c).
template <class T>
struct sppo_hard_loss {
  T beta;
  GEOPREF_HD pair_grad<T> operator()(T rw, T rl) const {
    const T c = T(1) / (T(2) * beta);
    const T a = rw - c, b = rl + c;
    return {a * a + b * b, T(2) * a, T(2) * b};
  }
};

/// apo_zero (D'Oosterlinck et al., 2024; TRL `apo_zero`), z = βρ:
///   f = σ(−z_w) + σ(z_l)   (1 − σ(x) = σ(−x))
///   ∂f/∂ρ_w = −β σ(z_w) σ(−z_w),   ∂f/∂ρ_l = β σ(z_l) σ(−z_l).
template <class T>
struct apo_zero_loss {
  T beta;
  GEOPREF_HD pair_grad<T> operator()(T rw, T rl) const {
    const T zw = beta * rw, zl = beta * rl;
    return {math::sigmoid(-zw) + math::sigmoid(zl),
            -beta * math::sigmoid(zw) * math::sigmoid(-zw),
            beta * math::sigmoid(zl) * math::sigmoid(-zl)};
  }
};

/// apo_down (D'Oosterlinck et al., 2024; TRL `apo_down`), z_w = βρ_w,
/// d = β(ρ_w − ρ_l):
///   f = σ(z_w) + σ(−d)
///   ∂f/∂ρ_w = β [σ(z_w) σ(−z_w) − σ(d) σ(−d)],   ∂f/∂ρ_l = β σ(d) σ(−d).
template <class T>
struct apo_down_loss {
  T beta;
  GEOPREF_HD pair_grad<T> operator()(T rw, T rl) const {
    const T zw = beta * rw, d = beta * (rw - rl);
    const T sd = math::sigmoid(d) * math::sigmoid(-d);
    return {math::sigmoid(zw) + math::sigmoid(-d),
            beta * (math::sigmoid(zw) * math::sigmoid(-zw) - sd), beta * sd};
  }
};

/// orpo's odds-ratio term (Hong et al., 2024; TRL's ORPOTrainer), on
/// length-averaged log-probs x_w, x_l <= 0 and no reference:
///   o = (x_w − x_l) − (log(1 − e^{x_w}) − log(1 − e^{x_l})),   f = −β log σ(o)
///   ∂f/∂x_w = −β σ(−o) / (1 − e^{x_w}),   ∂f/∂x_l = β σ(−o) / (1 − e^{x_l}).
/// 1 − eˣ is −expm1(x), exact near x = 0.
template <class T>
struct orpo_loss {
  T beta;
  GEOPREF_HD pair_grad<T> operator()(T xw, T xl) const {
    const T o = (xw - xl) - (math::log1mexp(xw) - math::log1mexp(xl));
    const T s = beta * math::sigmoid(-o);
    return {beta * math::softplus(-o), s / math::expm1(xw), -s / math::expm1(xl)};
  }
};

/// The margin transform φ of TRL's f_divergence_type: the margin is
/// h = φ(ρ_w) − φ(ρ_l).
///   reverse_kl: φ(ρ) = ρ                      φ' = 1
///   js:         φ(ρ) = ρ − softplus(ρ) = log σ(ρ)    φ' = σ(−ρ)
///   alpha:      φ(ρ) = −e^{−aρ}/a, a > 0      φ' = e^{−aρ}
/// For alpha the exponent −aρ is capped at the largest finite one of T,
/// where φ is then constant: φ' = 0 beyond the cap. TRL v1.16.0's
/// forward_kl is alpha with a = 1, its alpha_divergence coefficient α is
/// a = 1 − α (docs/math.md, "TRL v1.16.0, loss by loss").
enum class margin_transform : int { reverse_kl, js, alpha };

template <class T>
struct transform_fn {
  margin_transform type;
  T a;
  GEOPREF_HD T phi(T r) const {
    switch (type) {
      case margin_transform::js: return math::log_sigmoid(r);
      case margin_transform::alpha: {
        const T e = -a * r;
        return -math::exp(e < math::exp_cap<T>() ? e : math::exp_cap<T>()) / a;
      }
      default: return r;
    }
  }
  GEOPREF_HD T dphi(T r) const {
    switch (type) {
      case margin_transform::js: return math::sigmoid(-r);
      case margin_transform::alpha: {
        const T e = -a * r;
        return e < math::exp_cap<T>() ? math::exp(e) : T(0);
      }
      default: return T(1);
    }
  }
};

inline const char* transform_name(margin_transform t) noexcept {
  switch (t) {
    case margin_transform::reverse_kl: return "reverse_kl";
    case margin_transform::js: return "js";
    case margin_transform::alpha: return "alpha";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// The registry of built-in losses: one line each. Columns: name, kind,
// whether the term always uses length-averaged log-probs, whether it is
// defined without a reference model. The enum, the names, the C ABI's
// GEOPREF_LOSS_* values (checked against this list in kernels/c_api.cu) and
// the CLI's names all come from it; docs/math.md has one row per entry.
//
// Kinds:
//   margin     f(h; p̂) of the margin h = φ(ρ_w) − φ(ρ_l) (and its geometric form)
//   two_sided  f(ρ_w, ρ_l), both partial derivatives
//   odds_ratio orpo: f(x̄_w, x̄_l) of the averaged log-probs, no reference
//   sorted     batch-coupled: a margin loss over log-ratios sorted across the batch
//   sft        batch-coupled: mean NLL over the scored tokens of the chosen responses
#define GEOPREF_LOSS_REGISTRY(X)            \
  X(dpo, margin, false, false)             \
  X(cdpo, margin, false, false)            \
  X(ipo, margin, false, false)             \
  X(cipo, margin, false, false)            \
  X(ropo, margin, false, false)            \
  X(hinge, margin, false, false)           \
  X(robust, margin, false, false)          \
  X(exo_pair, margin, false, false)        \
  X(discopop, margin, false, false)        \
  X(simpo, margin, true, true)             \
  X(gdpo, margin, false, false)            \
  X(gipo, margin, false, false)            \
  X(gropo, margin, false, false)           \
  X(nca_pair, two_sided, false, false)     \
  X(bco_pair, two_sided, false, false)     \
  X(sppo_hard, two_sided, false, false)    \
  X(apo_zero, two_sided, false, false)     \
  X(apo_down, two_sided, false, false)     \
  X(orpo, odds_ratio, true, true)          \
  X(aot, sorted, false, false)             \
  X(aot_unpaired, sorted, false, false)    \
  X(sft, sft, false, true)

enum class loss_type : int {
#define GEOPREF_X(name, kind, avg, free) name,
  GEOPREF_LOSS_REGISTRY(GEOPREF_X)
#undef GEOPREF_X
};

enum class loss_kind : int { margin, two_sided, odds_ratio, sorted, sft };

inline constexpr int LOSS_TYPE_COUNT = 0
#define GEOPREF_X(name, kind, avg, free) +1
    GEOPREF_LOSS_REGISTRY(GEOPREF_X)
#undef GEOPREF_X
    ;

/// At most this many terms in one weighted combination.
inline constexpr int MAX_LOSS_TERMS = 8;

/// `field_t<type> name` declares a member of any type, arrays included
/// (`field_t<double[8]> w` is `double w[8]`), so that a field list can
/// declare a struct whose members are arrays.
template <class T>
using field_t = T;

/// The field list of loss_config: every loss parameter, with the meaning it
/// has for each loss, declared once. The struct below is declared from it;
/// the C struct's check and conversion (geopref/c_options.hpp), geopref-check's
/// flags and the PyTorch keywords (bindings/torch) are built from it or
/// checked against it (GEOPREF_OPTIONS_FIELDS in geopref/options.hpp is this
/// list followed by the options' own fields).
///
/// Columns: P (the path prefix, empty here: `loss.` in GEOPREF_OPTIONS_FIELDS),
/// kind, C++ type (fully qualified: the list is expanded outside the
/// namespace too), C++ member, geopref_options member, default, CLI flag
/// (without the dashes; the Python keyword is it with '_' for '-'), summary.
/// Kinds:
///   real     a double                     boolean  a bool (int 0/1 in C)
///   integer  an int64_t                   enum     an enum class (int in C; by name
///                                                  in the CLI and Python)
///   count    n_terms: how many of the terms below (implied by the list of
///            names the CLI's --loss and Python's loss_type= take)
///   list     an array of MAX_LOSS_TERMS entries (the terms and their weights)
#define GEOPREF_LOSS_CONFIG_FIELDS(X, P)                                                            \
  X(P, enum, ::geopref::loss_type, type, loss, ::geopref::loss_type::dpo, "loss",                   \
    "the loss, when n_terms == 0 (a loss name)")                                                    \
  X(P, real, double, beta, beta, 0.1, "beta", "all losses: beta > 0")                               \
  X(P, real, double, alpha, alpha, 1.0, "alpha", "ropo/gropo: weight of sigma(-beta h), >= 0")      \
  X(P, real, double, gamma, gamma, 0.0, "gamma",                                                    \
    "ropo/gropo: weight of -log sigma(beta h), >= 0; simpo: target margin >= 0")                    \
  X(P, real, double, epsilon, epsilon, 0.0, "epsilon", "robust: [0, 0.5); exo_pair: (0, 1)")        \
  X(P, real, double, tau, tau, 0.05, "tau", "discopop: temperature > 0 (TRL's default 0.05)")       \
  X(P, real, double, bco_delta, bco_delta, 0.0, "bco-delta",                                        \
    "bco_pair: the reward offset delta (finite; 0 is TRL 1.x's bco_pair)")                          \
  X(P, enum, ::geopref::margin_transform, transform, transform,                                     \
    ::geopref::margin_transform::reverse_kl,                                                        \
    "margin-transform",                                                                             \
    "the margin transform of every margin term (TRL's f_divergence_type): reverse_kl, js, alpha")   \
  X(P, real, double, f_alpha, f_alpha, 1.0, "f-alpha",                                              \
    "the alpha transform's coefficient a > 0 (1 - TRL's f_alpha_divergence_coef)")                  \
  X(P, boolean, bool, geometric, geometric, false, "geometric",                                     \
    "the geometric soft-label form f((2p-1) h) of every margin term")                               \
  X(P, count, int, n_terms, n_terms, 0, "loss",                                                     \
    "> 0: the weighted combination terms/term_weights replaces type (several loss names)")          \
  X(P, list, ::geopref::loss_type[::geopref::MAX_LOSS_TERMS], terms, terms, {}, "loss",             \
    "the combination's losses (TRL's list of loss_type)")                                           \
  X(P, list, double[::geopref::MAX_LOSS_TERMS], term_weights, term_weights, {}, "loss-weights",     \
    "the combination's finite weights (TRL's loss_weights; default 1 each)")

/// Every loss parameter (GEOPREF_LOSS_CONFIG_FIELDS). A weighted combination
/// (TRL's list of loss_type with loss_weights): n_terms > 0 terms terms[k]
/// with finite weights term_weights[k] replace `type`; the combination's loss
/// is sum_k term_weights[k] * term_k. The margin transform of every margin
/// term: see margin_transform (f_alpha is used by alpha only). geometric: an
/// error with a term that has no margin.
struct loss_config {
#define GEOPREF_X(P, kind, type, name, c_name, def, flag, doc) field_t<type> name = def;
  GEOPREF_LOSS_CONFIG_FIELDS(GEOPREF_X, )
#undef GEOPREF_X
};

/// The terms that read both log-ratios (kinds two_sided and odds_ratio), by
/// type: the one switch the CPU reference and the pair kernel share, so a new
/// such loss is its functor, its registry line and its case here.
template <class T>
GEOPREF_HD_INLINE pair_grad<T> two_sided_term(loss_type t, T beta, T bco_delta, T rw, T rl) {
  switch (t) {
    case loss_type::nca_pair: return nca_pair_loss<T>{beta}(rw, rl);
    case loss_type::bco_pair: return bco_pair_loss<T>{beta, bco_delta}(rw, rl);
    case loss_type::sppo_hard: return sppo_hard_loss<T>{beta}(rw, rl);
    case loss_type::apo_zero: return apo_zero_loss<T>{beta}(rw, rl);
    case loss_type::apo_down: return apo_down_loss<T>{beta}(rw, rl);
    case loss_type::orpo: return orpo_loss<T>{beta}(rw, rl);
    default: return {T(0), T(0), T(0)};
  }
}

/// Lower-case name as in docs/math.md §5's tables and TRL ("dpo", "exo_pair", ...).
inline const char* loss_name(loss_type t) noexcept {
  switch (t) {
#define GEOPREF_X(name, kind, avg, free) \
  case loss_type::name: return #name;
    GEOPREF_LOSS_REGISTRY(GEOPREF_X)
#undef GEOPREF_X
  }
  return "unknown";
}

GEOPREF_HD_INLINE loss_kind kind_of(loss_type t) {
  switch (t) {
#define GEOPREF_X(name, kind, avg, free) \
  case loss_type::name: return loss_kind::kind;
    GEOPREF_LOSS_REGISTRY(GEOPREF_X)
#undef GEOPREF_X
  }
  return loss_kind::margin;
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

/// The registry's boolean columns.
enum class loss_flag : int { average_logps, reference_free };

/// Column F of the registry's row of t (false for an unknown type).
template <loss_flag F>
GEOPREF_HD_INLINE bool registry_flag(loss_type t) {
  switch (t) {
#define GEOPREF_X(name, kind, avg, free) \
  case loss_type::name: return F == loss_flag::average_logps ? (avg) : (free);
    GEOPREF_LOSS_REGISTRY(GEOPREF_X)
#undef GEOPREF_X
  }
  return false;
}

/// True for the losses whose log-probs are length-normalised whatever the
/// options say (simpo, orpo).
GEOPREF_HD_INLINE bool forces_average_logps(loss_type t) {
  return registry_flag<loss_flag::average_logps>(t);
}

/// True for the losses defined without a reference model (simpo, orpo, sft).
GEOPREF_HD_INLINE bool is_reference_free(loss_type t) {
  return registry_flag<loss_flag::reference_free>(t);
}

/// True for the geometric-averaged variants.
GEOPREF_HD_INLINE bool is_geometric(loss_type t) {
  return t == loss_type::gdpo || t == loss_type::gipo || t == loss_type::gropo;
}

/// The terms of a configuration: n_terms of them, or the single `type`.
/// (Clamped to MAX_LOSS_TERMS so that no index can leave the arrays even
/// before validation.)
GEOPREF_HD_INLINE int term_count(const loss_config& c) noexcept {
  return c.n_terms > 0 ? (c.n_terms < MAX_LOSS_TERMS ? c.n_terms : MAX_LOSS_TERMS) : 1;
}
GEOPREF_HD_INLINE loss_type term_type(const loss_config& c, int k) noexcept {
  return c.n_terms > 0 ? c.terms[k] : c.type;
}
GEOPREF_HD_INLINE double term_weight(const loss_config& c, int k) noexcept {
  return c.n_terms > 0 ? c.term_weights[k] : 1.0;
}

/// True when every term is of the given property (a combination with one
/// reference-using term takes a reference, one non-averaged term keeps the
/// per-sequence outputs summed).
inline bool all_terms_reference_free(const loss_config& c) noexcept {
  for (int k = 0; k < term_count(c); ++k)
    if (!is_reference_free(term_type(c, k))) return false;
  return true;
}
inline bool all_terms_averaged(const loss_config& c) noexcept {
  for (int k = 0; k < term_count(c); ++k)
    if (!forces_average_logps(term_type(c, k))) return false;
  return true;
}

/// Checks the parameters one loss uses; parameters it ignores are not checked.
inline status validate_term(const loss_config& c, loss_type type) noexcept {
  const int t = static_cast<int>(type);
  if (t < 0 || t >= LOSS_TYPE_COUNT) return status::invalid_loss;
  switch (type) {
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
    case loss_type::bco_pair:
      if (!std::isfinite(c.bco_delta)) return status::invalid_loss_option;
      break;
    default: break;
  }
  // The geometric form needs a margin; gdpo/gipo/gropo already are one.
  if (c.geometric && (kind_of(type) != loss_kind::margin || is_geometric(type)))
    return status::invalid_loss_option;
  return status::success;
}

/// Checks a whole configuration: every term, the combination, the transform.
inline status validate(const loss_config& c) noexcept {
  if (!(c.n_terms >= 0 && c.n_terms <= MAX_LOSS_TERMS)) return status::invalid_loss_option;
  if (c.n_terms == 0) {
    const int t = static_cast<int>(c.type);
    if (t < 0 || t >= LOSS_TYPE_COUNT) return status::invalid_loss;
  }
  if (!(std::isfinite(c.beta) && c.beta > 0.0)) return status::invalid_beta;
  for (int k = 0; k < term_count(c); ++k) {
    if (const status s = validate_term(c, term_type(c, k)); s != status::success) return s;
    if (!std::isfinite(term_weight(c, k))) return status::invalid_loss_option;
  }
  switch (c.transform) {
    case margin_transform::reverse_kl:
    case margin_transform::js: break;
    case margin_transform::alpha:
      if (!(std::isfinite(c.f_alpha) && c.f_alpha > 0.0)) return status::invalid_loss_option;
      break;
    default: return status::invalid_loss_option;
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
      default: break;  // not a margin loss: never evaluated through any_loss
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
