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
/* A device copy of `bytes` from host; exits the test with a message on failure. */
void* test_upload(const void* host, size_t bytes);
/* `size` bytes of host memory ending at a PROT_NONE page (a fresh mapping,
 * never unmapped; size 8-aligned and at most a page): a read past them faults. */
unsigned char* test_against_guard(size_t size);

#ifdef __cplusplus
}
#endif

/* Runs an entry twice, the size query (ws = NULL) and the call with a
 * workspace of that size, then reads the device status; adds each mismatch
 * to `fails` (expect_labelled() of c_api_check.h). `call_with_ws` names ws
 * and bytes; `what` is any string. */
#define TEST_RUN_ENTRY(what, call_with_ws)                                                   \
  do {                                                                                       \
    void* ws = NULL;                                                                         \
    size_t bytes = 0;                                                                        \
    geopref_status st = GEOPREF_SUCCESS, recorded = GEOPREF_INTERNAL_ERROR;                  \
    fails += expect_labelled(what, " (query)", call_with_ws, GEOPREF_SUCCESS);              \
    ws = test_device_alloc(bytes > 0 ? bytes : 1);                                           \
    st = call_with_ws;                                                                       \
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(ws, NULL, &recorded);              \
    fails += expect(what, st, GEOPREF_SUCCESS);                                              \
    fails += expect_labelled(what, " (device status)", recorded, GEOPREF_SUCCESS);          \
    test_device_free(ws);                                                                    \
  } while (0)

#endif
