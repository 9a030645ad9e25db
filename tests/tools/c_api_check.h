/* tests/tools/c_api_check.h — what the host-only C ABI tests share (C99):
 * the status check and the chunked workspace's expected size for their
 * problem, N = 16384 rows of Hd = 4096, V = 128256, bfloat16, a 256 MiB
 * chunk budget. */
#ifndef GEOPREF_TESTS_C_API_CHECK_H
#define GEOPREF_TESTS_C_API_CHECK_H

#include <stddef.h>
#include <stdio.h>

#include "geopref/c_api.h"

/* 256 MiB hold 1046 rows of 128256 bf16 logits (V rounded up to 16 bytes). */
#define GEOPREF_TEST_CHUNK_BYTES ((size_t)1046 * 128256 * 2)

/* 0 if got == want; otherwise 1, and says so. */
static inline int expect(const char* what, geopref_status got, geopref_status want) {
  if (got == want) return 0;
  fprintf(stderr, "%s: got %d (%s), want %d\n", what, got, geopref_status_string(got), want);
  return 1;
}

/* 0 if a workspace of `bytes` is the chunk plus under 1 MiB of small pieces;
 * otherwise 1, and says so. */
static inline int expect_chunk_workspace(const char* what, size_t bytes) {
  const size_t chunk = GEOPREF_TEST_CHUNK_BYTES;
  if (bytes >= chunk && bytes <= chunk + ((size_t)1 << 20)) return 0;
  fprintf(stderr, "%s workspace %zu bytes: expected the %zu-byte chunk plus under 1 MiB\n", what,
          bytes, chunk);
  return 1;
}

#endif
