// tests/tools/c_api_device.cpp — c_api_device.h over the CUDA runtime (the
// real one, or dev/emu's when the target links the emulator).
#include "c_api_device.h"

#include <cuda_runtime.h>

extern "C" {

int test_device_available(void) {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 1 : 0;
}

void* test_device_alloc(size_t bytes) {
  void* p = nullptr;
  return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
}

void test_device_free(void* p) {
  if (p != nullptr) cudaFree(p);
}

int test_to_device(void* dst, const void* src, size_t bytes) {
  return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : 1;
}

int test_to_host(void* dst, const void* src, size_t bytes) {
  return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : 1;
}

}  // extern "C"
