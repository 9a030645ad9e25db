// examples/custom_loss/gpu_path.cu — see gpu_path.hpp. The uploads, the
// two-phase workspace, the device status and the downloads are
// dev/support/device_step.cuh's; what is this example's own is the call:
// the templated train_step with the caller's loss.
#include "gpu_path.hpp"

#include "device_step.cuh"
#include "geopref/cuda/geopref.cuh"

namespace custom_loss {

outcome gpu_step(const batch& b, const geopref::options& opt, const squared_softplus_loss& loss,
                 double& value, std::vector<float>& grad, std::string& why) {
  // The templated entry: the caller's functor replaces the margin loss; the
  // forward and backward kernels are the library's, only the small pair
  // kernel is instantiated for this type.
  const auto step = [&](void* workspace, size_t& bytes, const geopref::cuda::train_args& a) {
    return geopref::cuda::train_step(workspace, bytes, a, opt, loss);
  };
  return geopref::support::device_train_step(b, step, nullptr, value, grad, why);
}

}  // namespace custom_loss
