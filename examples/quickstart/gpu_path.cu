// examples/quickstart/gpu_path.cu — see gpu_path.hpp. The whole GPU side of a
// training step: upload, size and allocate the workspace, one train_step on a
// stream, read the device status, download.
#include "gpu_path.hpp"

#include <cuda_runtime.h>

#include <initializer_list>
#include <string>

#include "device_buffer.hpp"
#include "geopref/cuda/geopref.cuh"

namespace quickstart {
using geopref::support::device_buffer;

gpu_outcome gpu_train_step(const gpu_batch& b, const geopref::options& opt, double& loss,
                           std::vector<float>& grad_logits, std::string& why) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaSetDevice(0) != cudaSuccess) {
    why = "no CUDA device";
    return gpu_outcome::no_device;
  }
  namespace gc = geopref::cuda;
  const auto n = [](int64_t k) { return static_cast<size_t>(k); };
  const device_buffer logits = device_buffer::upload(b.logits, n(b.n_rows * b.vocab)),
                      labels = device_buffer::upload(b.labels, n(b.n_rows)),
                      offsets = device_buffer::upload(b.offsets, n(b.n_seqs + 1)),
                      soft = device_buffer::upload(b.soft_labels, n(b.n_pairs)),
                      ref = b.ref_logps != nullptr ? device_buffer::upload(b.ref_logps, n(b.n_seqs))
                                                   : device_buffer(),
                      d_loss(sizeof(float)), d_grad(n(b.n_rows * b.vocab) * sizeof(float));
  for (const device_buffer* d : {&logits, &labels, &offsets, &soft, &ref, &d_loss, &d_grad}) {
    if (!d->ok()) {
      why = std::string("device allocation or copy failed: ") + cudaGetErrorString(d->error());
      return gpu_outcome::failed;
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

  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    why = "cudaStreamCreate failed";
    return gpu_outcome::failed;
  }
  size_t bytes = 0;
  geopref::status st = gc::train_step(nullptr, bytes, a, opt, stream);  // size query
  const device_buffer ws(st == geopref::status::success ? bytes : 0);
  void* workspace = ws.get();
  if (!ws.ok()) st = geopref::status::cuda_error;
  if (st == geopref::status::success) st = gc::train_step(workspace, bytes, a, opt, stream);
  geopref::status device = geopref::status::success;
  if (st == geopref::status::success) st = gc::device_status(workspace, stream, &device);
  if (st == geopref::status::success) st = device;  // label out of range and the like
  cudaStreamDestroy(stream);
  if (st != geopref::status::success) {
    why = geopref::status_string(st);
    return gpu_outcome::failed;
  }
  float h_loss = 0;
  grad_logits.assign(static_cast<size_t>(b.n_rows * b.vocab), 0.0f);
  if (cudaMemcpy(&h_loss, d_loss.get(), sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess ||
      cudaMemcpy(grad_logits.data(), d_grad.get(), grad_logits.size() * sizeof(float),
                 cudaMemcpyDeviceToHost) != cudaSuccess) {
    why = "download failed";
    return gpu_outcome::failed;
  }
  loss = h_loss;
  return gpu_outcome::ok;
}

}  // namespace quickstart
