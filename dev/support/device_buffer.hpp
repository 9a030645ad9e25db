// dev/support/device_buffer.hpp — the one owning device allocation of the
// project's own programs (tests, benchmarks, geopref-check, examples). Not
// part of the library, which never allocates.
//
// Plain C++ over the CUDA runtime API, so .cpp and .cu files (and the host
// emulator's build) can use it alike. It never throws: a failed allocation
// leaves an empty buffer whose error() says why, and clears the (non-sticky)
// runtime error so that later checks do not see it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

namespace geopref::support {

class device_buffer {
 public:
  device_buffer() = default;

  /// cudaMalloc(bytes). Zero bytes allocate nothing: get() is null, ok() true.
  explicit device_buffer(size_t bytes) {
    if (bytes == 0) return;
    error_ = cudaMalloc(&ptr_, bytes);
    if (error_ != cudaSuccess) {
      (void)cudaGetLastError();
      ptr_ = nullptr;
      return;
    }
    bytes_ = bytes;
  }

  /// A buffer holding a copy of host[0, n).
  template <class T>
  static device_buffer upload(const T* host, size_t n) {
    device_buffer b(n * sizeof(T));
    if (b.ok() && n > 0) b.error_ = cudaMemcpy(b.ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice);
    return b;
  }
  template <class T>
  static device_buffer upload(const std::vector<T>& host) {
    return upload(host.data(), host.size());
  }

  /// The first n elements, copied back (empty if the copy fails: see error()).
  template <class T>
  std::vector<T> download(size_t n) const {
    std::vector<T> v(n);
    if (n > 0 && cudaMemcpy(v.data(), ptr_, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess)
      v.clear();
    return v;
  }

  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)),
        bytes_(std::exchange(o.bytes_, 0)),
        error_(std::exchange(o.error_, cudaSuccess)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      error_ = std::exchange(o.error_, cudaSuccess);
    }
    return *this;
  }
  ~device_buffer() { reset(); }

  void reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    error_ = cudaSuccess;
  }

  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  /// The allocation (and, for upload, the copy) succeeded.
  bool ok() const { return error_ == cudaSuccess; }
  cudaError_t error() const { return error_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  cudaError_t error_ = cudaSuccess;
};

/// Free device memory in bytes (0 if the query fails).
inline size_t free_device_bytes() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return free_b;
}

}  // namespace geopref::support
