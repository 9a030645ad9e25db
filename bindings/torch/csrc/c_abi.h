// bindings/torch/csrc/c_abi.h — what the CUDA kernels of the geopref torch
// operators (ops_cuda.cpp, ops_linear_cuda.cpp) share on the C ABI's side:
// the logit transform and the options as their C structs.
#pragma once

#include "geopref/c_api.h"
#include "geopref/c_options.hpp"
#include "geopref/options.hpp"

namespace geopref_torch {

/// One assignment per field of GEOPREF_LOGIT_TRANSFORM_FIELDS
/// (kernels/c_api_common.cuh checks the C struct against the list).
inline geopref_logit_transform c_transform(const geopref::logit_transform& t) {
  geopref_logit_transform c;
#define GEOPREF_X(type, name, def, flag, doc) c.name = t.name;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return c;
}

/// The options as geopref_options: one conversion per field of
/// GEOPREF_OPTIONS_FIELDS (geopref/c_options.hpp checks the C struct against it).
inline geopref_options c_options(const geopref::options& o) { return geopref::to_c(o); }

}  // namespace geopref_torch
