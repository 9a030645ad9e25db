// dev/support/user_loss.hpp — a margin loss written the way a user would, for
// the test of train_step<Loss> (GPU path) against the reference's
// compute_with_loss. Not one of the library's functors.
#pragma once

#include <math.h>

#include "geopref/config.hpp"

namespace geopref::support {

/// f(h) = log cosh(βh − 1): quadratic near the target margin 1/β, linear far
/// away.   f'(h) = β tanh(βh − 1).
struct log_cosh_loss {
  double beta;
  GEOPREF_HD double value(double h, double /*p*/) const {
    const double x = fabs(beta * h - 1.0);
    return x + log1p(exp(-2.0 * x)) - 0.6931471805599453;  // stable log cosh
  }
  GEOPREF_HD double derivative(double h, double /*p*/) const { return beta * tanh(beta * h - 1.0); }
};

}  // namespace geopref::support
