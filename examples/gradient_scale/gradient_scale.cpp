// gradient_scale — the scaling factor of the gradient of dpo, cdpo and gdpo as
// a function of the margin h, for several soft labels p̂ (the left panel of
// Furuta et al., NeurIPS 2024, Figure 1), computed with geopref's own loss
// functors.
//
// Every loss here has ∂f/∂h = −β · w(h; p̂); w is the factor a pair's margin
// gradient is scaled by:
//   dpo   w = σ(−βh)                       (ignores p̂)
//   cdpo  w = p̂ − σ(βh)                    (zero where σ(βh) = p̂, negative past it)
//   gdpo  w = (2p̂ − 1) σ(−β(2p̂ − 1) h)     (dpo for p̂ = 1, identically 0 for p̂ = 0.5)
//
// Usage:  gradient_scale [--beta B] [--csv FILE]
//   writes CSV columns p_hat,h,beta_h,dpo,cdpo,gdpo for p̂ ∈ {0.55, 0.75, 0.95, 1}
//   and h ∈ [−5/β, 5/β]; then checks what follows from the mathematics and
//   exits non-zero if any check fails:
//   - each factor equals −f'(h)/β from the functors and a central finite
//     difference of f(h) (the derivative is the derivative of the value);
//   - gdpo's factor is exactly 0 at p̂ = 0.5 for every h, and exactly dpo's at p̂ = 1;
//   - cdpo's factor changes sign at h* = logit(p̂)/β and is 0 there;
//   - |gdpo factor| <= |2p̂ − 1| (it shrinks to 0 as p̂ → 0.5).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "geopref/losses.hpp"

namespace {

using geopref::any_loss;
using geopref::loss_config;
using geopref::loss_type;

int g_failures = 0;

void check(bool ok, const char* what, double p, double h, double got, double want) {
  if (ok) return;
  ++g_failures;
  if (g_failures <= 20)
    std::fprintf(stderr, "FAIL %s at p=%.17g h=%.17g: got %.17g, want %.17g\n", what, p, h, got,
                 want);
}

// The gradient factor w = −f'(h; p̂) / β of a margin loss.
template <class Loss>
double factor(const Loss& loss, double beta, double h, double p) {
  return -loss.derivative(h, p) / beta;
}

// The same factor from a central finite difference of the loss value.
template <class Loss>
double factor_fd(const Loss& loss, double beta, double h, double p, double dh) {
  return -(loss.value(h + dh, p) - loss.value(h - dh, p)) / (2.0 * dh * beta);
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

any_loss<double> make(loss_type t, double beta) {
  loss_config c;
  c.type = t;
  c.beta = beta;
  return any_loss<double>(c);
}

void usage() {
  std::fprintf(stderr, "usage: gradient_scale [--beta B] [--csv FILE]\n");
}

}  // namespace

int main(int argc, char** argv) {
  double beta = 0.1;
  const char* csv_path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--beta") == 0 && i + 1 < argc) {
      // The whole argument must be a number: "0.1x" is a usage error.
      const char* arg = argv[++i];
      char* end = nullptr;
      beta = std::strtod(arg, &end);
      if (end == arg || *end != '\0') {
        usage();
        return 2;
      }
    } else if (std::strcmp(argv[i], "--csv") == 0 && i + 1 < argc) {
      csv_path = argv[++i];
    } else {
      usage();
      return 2;
    }
  }
  if (!(std::isfinite(beta) && beta > 0.0)) {
    std::fprintf(stderr, "beta must be finite and > 0\n");
    return 2;
  }

  const any_loss<double> dpo = make(loss_type::dpo, beta);
  const any_loss<double> cdpo = make(loss_type::cdpo, beta);
  const any_loss<double> gdpo = make(loss_type::gdpo, beta);
  // The compile-time wrapper a user would write for their own loss; it must
  // agree bitwise with the runtime-selected gdpo.
  const geopref::gdpo_loss<double> gdpo_t{geopref::dpo_loss<double>{beta}};

  // Margins h = k · (0.01/β), k ∈ [−500, 500], i.e. βh ∈ [−5, 5] in steps of 0.01.
  const int K = 500;
  const double step = 0.01 / beta;
  const double curve_p[] = {0.55, 0.75, 0.95, 1.0};

  std::FILE* csv = nullptr;
  if (csv_path != nullptr) {
    csv = std::fopen(csv_path, "w");
    if (csv == nullptr) {
      std::fprintf(stderr, "cannot open %s\n", csv_path);
      return 2;
    }
    std::fprintf(csv, "p_hat,h,beta_h,dpo,cdpo,gdpo\n");
  }

  // Finite-difference step: βΔh = 1e-5. Truncation error is ~ (βΔh)²·|f'''|/6
  // <= 1e-11 and rounding ~ 1e-16·|f| / (βΔh) <= 1e-10 for |f| <= 6 here, so
  // 1e-8 leaves two orders of margin and still catches any wrong derivative.
  const double dh = 1e-5 / beta;
  const double fd_tol = 1e-8;
  // Closed forms evaluated independently of the functors: they differ from the
  // functors' stable forms only by rounding (a few ulps of values <= 1).
  const double closed_tol = 1e-14;

  const double check_p[] = {0.0, 0.05, 0.25, 0.5, 0.55, 0.75, 0.95, 1.0};
  for (double p : check_p) {
    const double s = 2.0 * p - 1.0;
    double gdpo_max = 0.0;
    for (int k = -K; k <= K; ++k) {
      const double h = k * step;
      const double w_dpo = factor(dpo, beta, h, p);
      const double w_cdpo = factor(cdpo, beta, h, p);
      const double w_gdpo = factor(gdpo, beta, h, p);
      gdpo_max = std::fmax(gdpo_max, std::fabs(w_gdpo));

      check(w_gdpo == factor(gdpo_t, beta, h, p), "gdpo any_loss == geometric<dpo_loss>", p, h,
            w_gdpo, factor(gdpo_t, beta, h, p));
      check(std::fabs(w_dpo - sigmoid(-beta * h)) <= closed_tol, "dpo closed form", p, h, w_dpo,
            sigmoid(-beta * h));
      check(std::fabs(w_cdpo - (p - sigmoid(beta * h))) <= closed_tol, "cdpo closed form", p, h,
            w_cdpo, p - sigmoid(beta * h));
      check(std::fabs(w_gdpo - s * sigmoid(-beta * s * h)) <= closed_tol, "gdpo closed form", p,
            h, w_gdpo, s * sigmoid(-beta * s * h));

      const double fd_dpo = factor_fd(dpo, beta, h, p, dh);
      const double fd_cdpo = factor_fd(cdpo, beta, h, p, dh);
      const double fd_gdpo = factor_fd(gdpo, beta, h, p, dh);
      check(std::fabs(w_dpo - fd_dpo) <= fd_tol, "dpo derivative vs finite difference", p, h,
            w_dpo, fd_dpo);
      check(std::fabs(w_cdpo - fd_cdpo) <= fd_tol, "cdpo derivative vs finite difference", p, h,
            w_cdpo, fd_cdpo);
      check(std::fabs(w_gdpo - fd_gdpo) <= fd_tol, "gdpo derivative vs finite difference", p, h,
            w_gdpo, fd_gdpo);

      // Exact consequences of 2p̂ − 1 being exactly 0 or 1 in floating point.
      if (p == 0.5) check(w_gdpo == 0.0, "gdpo factor exactly 0 at p=0.5", p, h, w_gdpo, 0.0);
      if (p == 1.0) check(w_gdpo == w_dpo, "gdpo factor == dpo factor at p=1", p, h, w_gdpo, w_dpo);
      check(std::fabs(w_gdpo) <= std::fabs(s), "|gdpo factor| <= |2p-1|", p, h, w_gdpo, s);

      // cdpo's factor is positive below h* = logit(p̂)/β and negative above.
      if (p > 0.0 && p < 1.0) {
        const double h_star = std::log(p / (1.0 - p)) / beta;
        if (h < h_star - 1e-9 / beta) check(w_cdpo > 0.0, "cdpo factor > 0 below h*", p, h, w_cdpo, 0);
        if (h > h_star + 1e-9 / beta) check(w_cdpo < 0.0, "cdpo factor < 0 above h*", p, h, w_cdpo, 0);
      } else if (p == 1.0) {
        check(w_cdpo > 0.0, "cdpo factor > 0 for p=1", p, h, w_cdpo, 0);
      } else {
        check(w_cdpo < 0.0, "cdpo factor < 0 for p=0", p, h, w_cdpo, 0);
      }
    }
    if (p > 0.0 && p < 1.0) {
      const double h_star = std::log(p / (1.0 - p)) / beta;
      const double w = factor(cdpo, beta, h_star, p);
      check(std::fabs(w) <= 1e-15, "cdpo factor 0 at h* = logit(p)/beta", p, h_star, w, 0.0);
    }
    std::printf("p_hat=%.2f  max|gdpo factor|=%.4f  (2p_hat-1=%+.2f)\n", p, gdpo_max, s);
  }

  if (csv != nullptr) {
    for (double p : curve_p) {
      for (int k = -K; k <= K; ++k) {
        const double h = k * step;
        std::fprintf(csv, "%.2f,%.6g,%.4f,%.17g,%.17g,%.17g\n", p, h, beta * h,
                     factor(dpo, beta, h, p), factor(cdpo, beta, h, p), factor(gdpo, beta, h, p));
      }
    }
    std::fclose(csv);
    std::printf("wrote %s\n", csv_path);
  }

  // A few points of each curve, the shape in numbers.
  std::printf("\nbeta=%g; gradient factor w = -f'(h)/beta\n", beta);
  std::printf("%6s %8s | %8s %8s %8s\n", "p_hat", "beta*h", "dpo", "cdpo", "gdpo");
  for (double p : curve_p) {
    for (double bh : {-2.0, 0.0, 2.0}) {
      const double h = bh / beta;
      std::printf("%6.2f %8.1f | %8.4f %8.4f %8.4f\n", p, bh, factor(dpo, beta, h, p),
                  factor(cdpo, beta, h, p), factor(gdpo, beta, h, p));
    }
  }

  if (g_failures != 0) {
    std::fprintf(stderr, "gradient_scale: %d check(s) FAILED\n", g_failures);
    return 1;
  }
  std::printf("\ngradient_scale: all checks passed\n");
  return 0;
}
