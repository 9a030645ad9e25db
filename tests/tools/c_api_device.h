/* tests/tools/c_api_device.h — the little device memory a C test of the C ABI
 * needs, as C functions (c_api_device.cpp): built against the CUDA runtime for
 * the compiled library, or against the host emulator (dev/emu) for the C ABI
 * compiled by the C++ compiler, where "device" memory is guarded host memory. */
#ifndef GEOPREF_TESTS_C_API_DEVICE_H
#define GEOPREF_TESTS_C_API_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if a device (or the emulator) can run kernels, else 0. */
int test_device_available(void);
/* NULL on failure. */
void* test_device_alloc(size_t bytes);
void test_device_free(void* p);
/* 0 on success. */
int test_to_device(void* dst, const void* src, size_t bytes);
int test_to_host(void* dst, const void* src, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
