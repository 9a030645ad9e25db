// examples/quickstart/gpu_path.cu — see gpu_path.hpp. The uploads, the
// two-phase workspace, the device status and the downloads are
// dev/support/device_step.cuh's; what is the quickstart's own is the call:
// train_step with the options of the row, on a stream of its own.
#include "gpu_path.hpp"

#include <cuda_runtime.h>

#include "device_step.cuh"
#include "geopref/cuda/geopref.cuh"

namespace quickstart {

gpu_outcome gpu_train_step(const gpu_batch& b, const geopref::options& opt, double& loss,
                           std::vector<float>& grad_logits, std::string& why) {
  int devices = 0;
  cudaStream_t stream = nullptr;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    why = "no CUDA device";
    return gpu_outcome::no_device;
  }
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    why = "cudaStreamCreate failed";
    return gpu_outcome::failed;
  }
  const auto step = [&](void* workspace, size_t& bytes, const geopref::cuda::train_args& a) {
    return geopref::cuda::train_step(workspace, bytes, a, opt, stream);
  };
  const gpu_outcome o =
      geopref::support::device_train_step(b, step, stream, loss, grad_logits, why);
  cudaStreamDestroy(stream);
  return o;
}

}  // namespace quickstart
