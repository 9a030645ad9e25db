// dev/support/device_step.cuh — one training step on device 0 from host
// buffers, for the examples' GPU columns: the uploads, the two-phase
// workspace protocol, the device status and the downloads. Which entry point
// runs (train_step with a built-in or a caller's loss) and on which stream is
// the caller's `step`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <initializer_list>
#include <string>
#include <vector>

#include "device_buffer.hpp"
#include "geopref/cuda/geopref.cuh"
#include "host_batch.hpp"

namespace geopref::support {

/// Uploads b and fills train_args for it (loss and a float gradient [N, V]
/// requested), then calls step(workspace, bytes, args) as the API asks: with a
/// null workspace for its size, then with one of that size. Reads the device
/// status on `stream` and downloads the loss and the gradient. On no_device
/// or failed, `why` says what happened.
template <class Step>
step_outcome device_train_step(const host_batch& b, Step&& step, cudaStream_t stream,
                               double& loss, std::vector<float>& grad, std::string& why) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaSetDevice(0) != cudaSuccess) {
    why = "no CUDA device";
    return step_outcome::no_device;
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
      return step_outcome::failed;
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

  size_t bytes = 0;
  geopref::status st = step(nullptr, bytes, a);  // size query
  const device_buffer ws(st == geopref::status::success ? bytes : 0);
  if (!ws.ok()) st = geopref::status::cuda_error;
  if (st == geopref::status::success) st = step(ws.get(), bytes, a);
  geopref::status device = geopref::status::success;
  if (st == geopref::status::success) st = gc::device_status(ws.get(), stream, &device);
  if (st == geopref::status::success) st = device;  // label out of range and the like
  if (st != geopref::status::success) {
    why = geopref::status_string(st);
    return step_outcome::failed;
  }
  float h_loss = 0;
  grad.assign(n(b.n_rows * b.vocab), 0.0f);
  if (cudaMemcpy(&h_loss, d_loss.get(), sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess ||
      cudaMemcpy(grad.data(), d_grad.get(), grad.size() * sizeof(float), cudaMemcpyDeviceToHost) !=
          cudaSuccess) {
    why = "download failed";
    return step_outcome::failed;
  }
  loss = h_loss;
  return step_outcome::ok;
}

}  // namespace geopref::support
