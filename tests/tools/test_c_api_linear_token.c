/* tests/tools/test_c_api_linear_token.c — geopref_linear_token_logps(_grad)
 * from C99, host only: the init defaults, the workspace query (which takes
 * the chunk budget and needs no GPU) and the statuses of bad arguments,
 * before anything touches a device. The element-wise checks of the same
 * entries are tests/cuda/test_linear_token.cu (GPU and emulator). */
#include <stdint.h>
#include <stdio.h>

#include "c_api_check.h"
#include "geopref/c_api.h"

int main(void) {
  int fails = 0;
  geopref_linear_token_logps_args f;
  geopref_linear_token_logps_args_init(&f);
  if (f.rows.ignore_index != -100 || f.rows.dtype != GEOPREF_FLOAT32 ||
      f.rows.label_type != GEOPREF_INT64 || f.rows.chunk_bytes != ((size_t)1 << 30)) {
    fprintf(stderr, "geopref_linear_token_logps_args_init: unexpected defaults\n");
    ++fails;
  }
  /* N = 16384 rows of Hd = 4096, V = 128256, bf16, a 256 MiB budget. */
  f.rows.dtype = GEOPREF_BFLOAT16;
  f.rows.n_rows = 16384;
  f.rows.hidden_size = 4096;
  f.rows.vocab = 128256;
  f.rows.chunk_bytes = (size_t)256 << 20;
  size_t bytes = 0;
  fails += expect("query", geopref_linear_token_logps(NULL, &bytes, &f, NULL), GEOPREF_SUCCESS);
  fails += expect_chunk_workspace("forward", bytes);
  geopref_linear_token_grad_args g;
  geopref_linear_token_grad_args_init(&g);
  g.rows = f.rows;
  size_t gbytes = 0;
  fails += expect("grad query", geopref_linear_token_logps_grad(NULL, &gbytes, &g, NULL),
                  GEOPREF_SUCCESS);
  fails += expect_chunk_workspace("backward", gbytes);
  printf("linear token logps: workspace %zu / %zu bytes for N=16384 V=128256 (logits: %zu)\n",
         bytes, gbytes, (size_t)16384 * 128256 * 2);

  geopref_linear_token_logps_args b = f;
  b.rows.chunk_bytes = 128256 * 2 - 1; /* less than one row */
  fails += expect("budget below one row", geopref_linear_token_logps(NULL, &bytes, &b, NULL),
                  GEOPREF_WORKSPACE_TOO_SMALL);
  b = f;
  b.rows.dtype = 7;
  fails += expect("unknown dtype", geopref_linear_token_logps(NULL, &bytes, &b, NULL),
                  GEOPREF_UNSUPPORTED_DTYPE);
  b = f;
  b.rows.label_type = 9;
  fails += expect("unknown label type", geopref_linear_token_logps(NULL, &bytes, &b, NULL),
                  GEOPREF_UNSUPPORTED_DTYPE);
  geopref_linear_token_grad_args c = g;
  c.ld_grad_hidden = 4095;
  fails += expect("ld_grad_hidden < Hd", geopref_linear_token_logps_grad(NULL, &bytes, &c, NULL),
                  GEOPREF_INVALID_STRIDE);
  c = g;
  c.rows.hidden_size = 0;
  fails += expect("Hd = 0 with rows", geopref_linear_token_logps_grad(NULL, &bytes, &c, NULL),
                  GEOPREF_INVALID_SHAPE);
  fails += expect("null args", geopref_linear_token_logps(NULL, &bytes, NULL, NULL),
                  GEOPREF_NULL_POINTER);
  fails += expect("null size", geopref_linear_token_logps_grad(NULL, NULL, &g, NULL),
                  GEOPREF_NULL_POINTER);
  if (fails == 0) printf("all C ABI checks passed\n");
  return fails == 0 ? 0 : 1;
}
