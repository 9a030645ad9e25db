/* tests/tools/test_c_api_linear.c — the fused-linear C ABI
 * (geopref_fused_linear_step / _logps) from C99, host only: the workspace
 * query (which takes the chunk budget and needs no GPU) and the statuses of
 * bad arguments, before anything touches a device. The GPU run of the same
 * entries is geopref-check --hidden --device cuda (test_check_cuda). */
#include <stdint.h>
#include <stdio.h>

#include "c_api_check.h"
#include "geopref/c_api.h"

int main(void) {
  int fails = 0;
  geopref_options opt;
  geopref_options_init(&opt);
  opt.loss = GEOPREF_LOSS_GDPO;

  /* N = 16384 rows of Hd = 4096, V = 128256, bf16, 64 sequences, 32 pairs. */
  geopref_linear_train_args a;
  geopref_linear_train_args_init(&a);
  a.in.dtype = GEOPREF_BFLOAT16;
  a.in.n_rows = 16384;
  a.in.hidden_size = 4096;
  a.in.vocab = 128256;
  a.in.n_seqs = 64;
  a.n_pairs = 32;
  a.in.chunk_bytes = (size_t)256 << 20;
  size_t bytes = 0;
  fails += expect("query", geopref_fused_linear_step(NULL, &bytes, &a, &opt, NULL), GEOPREF_SUCCESS);
  fails += expect_chunk_workspace("step", bytes);
  printf("fused linear: workspace %zu bytes for N=16384 V=128256 (logits: %zu bytes)\n", bytes,
         (size_t)16384 * 128256 * 2);

  geopref_linear_logps_args l;
  geopref_linear_logps_args_init(&l);
  l.in = a.in;
  size_t lbytes = 0;
  fails += expect("logps query", geopref_fused_linear_logps(NULL, &lbytes, &l, &opt, NULL),
                  GEOPREF_SUCCESS);
  if (lbytes > bytes) {
    fprintf(stderr, "the forward alone asks for more (%zu) than the step (%zu)\n", lbytes, bytes);
    ++fails;
  }

  geopref_linear_train_args b = a;
  b.in.chunk_bytes = 128256 * 2 - 1; /* less than one row */
  fails += expect("budget below one row", geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL),
                  GEOPREF_WORKSPACE_TOO_SMALL);
  b = a;
  b.in.dtype = 7;
  fails += expect("unknown dtype", geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL),
                  GEOPREF_UNSUPPORTED_DTYPE);
  b = a;
  b.in.ld_hidden = 4095;
  fails += expect("ld_hidden < Hd", geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL),
                  GEOPREF_INVALID_STRIDE);
  b = a;
  b.in.hidden_size = 0;
  fails += expect("Hd = 0 with rows", geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL),
                  GEOPREF_INVALID_SHAPE);
  b = a;
  b.n_pairs = 31; /* default pairing needs S == 2P */
  fails += expect("pair count", geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL),
                  GEOPREF_PAIR_COUNT_MISMATCH);
  fails += expect("null args", geopref_fused_linear_step(NULL, &bytes, NULL, &opt, NULL),
                  GEOPREF_NULL_POINTER);

  /* Vocab-parallel: rank 1 of 2 holds rows [64128, 128256) of W; the step's query is the
   * slice's fused-linear workspace plus one [N] int32 piece (256 bytes of alignment slack). */
  geopref_vocab_linear_train_args v;
  v.train = a;
  v.train.in.vocab = 64128;
  v.slice.begin = 64128;
  v.slice.total = 128256;
  v.slice.rank = 1;
  v.slice.n_ranks = 2;
  v.records = NULL;
  size_t plain = 0, sharded = 0;
  fails += expect("slice, unsharded query",
                  geopref_fused_linear_step(NULL, &plain, &v.train, &opt, NULL), GEOPREF_SUCCESS);
  fails += expect("slice, sharded query", geopref_vocab_linear_step(NULL, &sharded, &v, &opt, NULL),
                  GEOPREF_SUCCESS);
  if (sharded < plain + 16384 * 4 || sharded > plain + 16384 * 4 + 256) {
    fprintf(stderr, "vocab-linear step workspace %zu, fused-linear %zu\n", sharded, plain);
    ++fails;
  }
  geopref_vocab_linear_stats_args st;
  st.in = v.train.in;
  st.slice = v.slice;
  st.records = NULL;
  fails += expect("stats query", geopref_vocab_linear_stats(NULL, &bytes, &st, &opt, NULL),
                  GEOPREF_SUCCESS);
  st.slice.begin = 64129; /* runs past the vocabulary */
  fails += expect("slice past V", geopref_vocab_linear_stats(NULL, &bytes, &st, &opt, NULL),
                  GEOPREF_INVALID_VOCAB_RECORDS);
  st.slice = v.slice;
  st.slice.rank = 2;
  fails += expect("rank >= n_ranks", geopref_vocab_linear_stats(NULL, &bytes, &st, &opt, NULL),
                  GEOPREF_INVALID_VOCAB_RECORDS);

  opt.beta = 0.0;
  fails += expect("beta 0", geopref_fused_linear_step(NULL, &bytes, &a, &opt, NULL),
                  GEOPREF_INVALID_BETA);
  return fails == 0 ? 0 : 1;
}
