// examples/quickstart/gpu_path.cu — see gpu_path.hpp. The whole GPU side of a
// training step: upload, size and allocate the workspace, one train_step on a
// stream, read the device status, download.
#include "gpu_path.hpp"

#include <cuda_runtime.h>

#include "geopref/cuda/geopref.cuh"

namespace quickstart {
namespace {

/// Owns the device allocations of one call.
struct device_arena {
  std::vector<void*> blocks;
  ~device_arena() {
    for (void* p : blocks) cudaFree(p);
  }
  template <class T>
  T* upload(const T* host, int64_t n) {
    T* d = alloc<T>(n);
    if (d != nullptr && host != nullptr &&
        cudaMemcpy(d, host, static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess)
      return nullptr;
    return d;
  }
  template <class T>
  T* alloc(int64_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, static_cast<size_t>(n > 0 ? n : 1) * sizeof(T)) != cudaSuccess) return nullptr;
    blocks.push_back(p);
    return static_cast<T*>(p);
  }
};

}  // namespace

gpu_outcome gpu_train_step(const gpu_batch& b, const geopref::options& opt, double& loss,
                           std::vector<float>& grad_logits, std::string& why) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaSetDevice(0) != cudaSuccess) {
    why = "no CUDA device";
    return gpu_outcome::no_device;
  }
  device_arena mem;
  namespace gc = geopref::cuda;
  gc::train_args a;
  a.tokens.logits = mem.upload(b.logits, b.n_rows * b.vocab);
  a.tokens.logits_dtype = gc::dtype::float32;
  a.tokens.n_rows = b.n_rows;
  a.tokens.vocab = b.vocab;
  a.tokens.ld = b.vocab;
  a.tokens.labels = mem.upload(b.labels, b.n_rows);
  a.tokens.label_type = gc::index_type::int32;
  a.tokens.offsets = mem.upload(b.offsets, b.n_seqs + 1);
  a.tokens.offset_type = gc::index_type::int32;
  a.tokens.n_seqs = b.n_seqs;
  a.n_pairs = b.n_pairs;
  a.soft_labels = mem.upload(b.soft_labels, b.n_pairs);
  a.ref_logps = b.ref_logps != nullptr ? mem.upload(b.ref_logps, b.n_seqs) : nullptr;
  float* d_loss = mem.alloc<float>(1);
  float* d_grad = mem.alloc<float>(b.n_rows * b.vocab);
  a.loss = d_loss;
  a.grad_logits = d_grad;
  a.grad_float32 = true;
  if (a.tokens.logits == nullptr || a.tokens.labels == nullptr || a.tokens.offsets == nullptr ||
      a.soft_labels == nullptr || d_loss == nullptr || d_grad == nullptr) {
    why = "device allocation or copy failed";
    return gpu_outcome::failed;
  }

  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    why = "cudaStreamCreate failed";
    return gpu_outcome::failed;
  }
  size_t bytes = 0;
  geopref::status st = gc::train_step(nullptr, bytes, a, opt, stream);  // size query
  void* workspace = st == geopref::status::success ? mem.alloc<char>(static_cast<int64_t>(bytes)) : nullptr;
  if (st == geopref::status::success && workspace == nullptr) st = geopref::status::cuda_error;
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
  if (cudaMemcpy(&h_loss, d_loss, sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess ||
      cudaMemcpy(grad_logits.data(), d_grad, grad_logits.size() * sizeof(float),
                 cudaMemcpyDeviceToHost) != cudaSuccess) {
    why = "download failed";
    return gpu_outcome::failed;
  }
  loss = h_loss;
  return gpu_outcome::ok;
}

}  // namespace quickstart
