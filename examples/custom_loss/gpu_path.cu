// examples/custom_loss/gpu_path.cu — see gpu_path.hpp. Upload, size the
// workspace, one train_step with the caller's loss, device status, download.
#include "gpu_path.hpp"

#include <cuda_runtime.h>

#include <initializer_list>
#include <string>

#include "device_buffer.hpp"
#include "geopref/cuda/geopref.cuh"

namespace custom_loss {
using geopref::support::device_buffer;

outcome gpu_step(const batch& b, const geopref::options& opt, const squared_softplus_loss& loss,
                 double& value, std::vector<float>& grad, std::string& why) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaSetDevice(0) != cudaSuccess) {
    why = "no CUDA device";
    return outcome::no_device;
  }
  namespace gc = geopref::cuda;
  const auto n = [](int64_t k) { return static_cast<size_t>(k); };
  const device_buffer logits = device_buffer::upload(b.logits, n(b.n_rows * b.vocab)),
                      labels = device_buffer::upload(b.labels, n(b.n_rows)),
                      offsets = device_buffer::upload(b.offsets, n(b.n_seqs + 1)),
                      soft = device_buffer::upload(b.soft_labels, n(b.n_pairs)),
                      ref = device_buffer::upload(b.ref_logps, n(b.n_seqs)),
                      d_loss(sizeof(float)), d_grad(n(b.n_rows * b.vocab) * sizeof(float));
  for (const device_buffer* d : {&logits, &labels, &offsets, &soft, &ref, &d_loss, &d_grad}) {
    if (!d->ok()) {
      why = std::string("device allocation or copy failed: ") + cudaGetErrorString(d->error());
      return outcome::failed;
    }
  }
  gc::train_args a;
  a.tokens.logits = logits.get();
  a.tokens.logits_dtype = gc::dtype::float32;
  a.tokens.n_rows = b.n_rows;
  a.tokens.vocab = b.vocab;
  a.tokens.ld = b.vocab;
  a.tokens.labels = labels.get();
  a.tokens.label_type = gc::index_type::int32;
  a.tokens.offsets = offsets.get();
  a.tokens.offset_type = gc::index_type::int32;
  a.tokens.n_seqs = b.n_seqs;
  a.n_pairs = b.n_pairs;
  a.soft_labels = soft.get<float>();
  a.ref_logps = ref.get<float>();
  a.loss = d_loss.get<float>();
  a.grad_logits = d_grad.get();
  a.grad_float32 = true;

  // The templated entry: the caller's functor replaces the margin loss; the
  // forward and backward kernels are the library's, only the small pair
  // kernel is instantiated for this type.
  size_t bytes = 0;
  geopref::status st = gc::train_step(nullptr, bytes, a, opt, loss);  // size query
  const device_buffer ws(st == geopref::status::success ? bytes : 0);
  if (!ws.ok()) st = geopref::status::cuda_error;
  if (st == geopref::status::success) st = gc::train_step(ws.get(), bytes, a, opt, loss);
  geopref::status device = geopref::status::success;
  if (st == geopref::status::success) st = gc::device_status(ws.get(), nullptr, &device);
  if (st == geopref::status::success) st = device;
  if (st != geopref::status::success) {
    why = geopref::status_string(st);
    return outcome::failed;
  }
  float h_loss = 0;
  grad.assign(static_cast<size_t>(b.n_rows * b.vocab), 0.0f);
  if (cudaMemcpy(&h_loss, d_loss.get(), sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess ||
      cudaMemcpy(grad.data(), d_grad.get(), grad.size() * sizeof(float), cudaMemcpyDeviceToHost) !=
          cudaSuccess) {
    why = "download failed";
    return outcome::failed;
  }
  value = h_loss;
  return outcome::ok;
}

}  // namespace custom_loss
