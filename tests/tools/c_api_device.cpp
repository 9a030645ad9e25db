// tests/tools/c_api_device.cpp — c_api_device.h over the CUDA runtime (the
// real one, or dev/emu's when the target links the emulator).
#include "c_api_device.h"

#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

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

void* test_upload(const void* host, size_t bytes) {
  void* d = test_device_alloc(bytes);
  if (d != nullptr && test_to_device(d, host, bytes) != 0) {
    test_device_free(d);
    d = nullptr;
  }
  if (d == nullptr) {
    std::fprintf(stderr, "device allocation / copy of %zu bytes failed\n", bytes);
    std::exit(1);
  }
  return d;
}

unsigned char* test_against_guard(size_t size) {
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  auto* m = static_cast<unsigned char*>(
      mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (m == MAP_FAILED || mprotect(m + page, page, PROT_NONE) != 0 || size > page) {
    std::fprintf(stderr, "mmap/mprotect failed\n");
    std::exit(1);
  }
  return m + page - size;
}

}  // extern "C"
