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

  /* One field of f (in b) or g (in c) changed per bad query. */
  geopref_linear_token_logps_args b = f;
  geopref_linear_token_grad_args c = g;
#define BAD_FWD(what, change, want) \
  (b = f, change, fails += expect(what, geopref_linear_token_logps(NULL, &bytes, &b, NULL), want))
#define BAD_BWD(what, change, want) \
  (c = g, change, fails += expect(what, geopref_linear_token_logps_grad(NULL, &bytes, &c, NULL), want))
  BAD_FWD("budget below one row", b.rows.chunk_bytes = 128256 * 2 - 1, GEOPREF_WORKSPACE_TOO_SMALL);
  BAD_FWD("unknown dtype", b.rows.dtype = 7, GEOPREF_UNSUPPORTED_DTYPE);
  BAD_FWD("unknown label type", b.rows.label_type = 9, GEOPREF_UNSUPPORTED_DTYPE);
  BAD_BWD("ld_grad_hidden < Hd", c.ld_grad_hidden = 4095, GEOPREF_INVALID_STRIDE);
  BAD_BWD("Hd = 0 with rows", c.rows.hidden_size = 0, GEOPREF_INVALID_SHAPE);
#undef BAD_FWD
#undef BAD_BWD
  fails += expect("null args", geopref_linear_token_logps(NULL, &bytes, NULL, NULL),
                  GEOPREF_NULL_POINTER);
  fails += expect("null size", geopref_linear_token_logps_grad(NULL, NULL, &g, NULL),
                  GEOPREF_NULL_POINTER);
  if (fails == 0) printf("all C ABI checks passed\n");
  return fails == 0 ? 0 : 1;
}
