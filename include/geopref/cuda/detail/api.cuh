// geopref/cuda/detail/api.cuh — definitions of geopref/cuda/geopref.cuh.
// TEMPORARY: the kernels are being written; until they land every entry
// returns status::internal_error so code written against the API compiles.
#pragma once

namespace geopref::cuda {

inline status sequence_logps(void*, size_t& workspace_bytes, const logps_args&, const options&,
                             cudaStream_t) noexcept {
  workspace_bytes = 0;
  return status::internal_error;
}
inline status train_step(void*, size_t& workspace_bytes, const train_args&, const options&,
                         cudaStream_t) noexcept {
  workspace_bytes = 0;
  return status::internal_error;
}
inline status device_status(const void*, cudaStream_t, status*) noexcept {
  return status::internal_error;
}

}  // namespace geopref::cuda
