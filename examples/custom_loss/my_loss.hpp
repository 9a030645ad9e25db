// examples/custom_loss/my_loss.hpp — a margin loss of your own, in the shape
// of the built-in ones (geopref/losses.hpp): value and derivative in double,
// __host__ __device__ (GEOPREF_HD), const. Nothing else is needed to run it
// on the CPU reference and on the GPU path.
#pragma once

#include <math.h>

#include "geopref/config.hpp"

namespace custom_loss {

/// A squared softplus hinge: f(h) = ½ softplus(m − βh)², a smooth version of
/// the squared hinge max(0, m − βh)²/2 with margin m.
///   f'(h) = −β softplus(m − βh) σ(m − βh).
struct squared_softplus_loss {
  double beta, m;
  GEOPREF_HD double value(double h, double /*p*/) const {
    const double s = softplus(m - beta * h);
    return 0.5 * s * s;
  }
  GEOPREF_HD double derivative(double h, double /*p*/) const {
    const double x = m - beta * h;
    return -beta * softplus(x) * sigmoid(x);
  }

 private:
  // Stable forms: neither overflows for any finite x.
  GEOPREF_HD static double softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
  GEOPREF_HD static double sigmoid(double x) {
    const double e = exp(-fabs(x));
    return x >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
  }
};

}  // namespace custom_loss
