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

  /* One field of `a` changed (in b) per bad query. */
  geopref_linear_train_args b = a;
#define BAD_STEP(what, change, want) \
  (b = a, change, fails += expect(what, geopref_fused_linear_step(NULL, &bytes, &b, &opt, NULL), want))
  BAD_STEP("budget below one row", b.in.chunk_bytes = 128256 * 2 - 1, GEOPREF_WORKSPACE_TOO_SMALL);
  BAD_STEP("unknown dtype", b.in.dtype = 7, GEOPREF_UNSUPPORTED_DTYPE);
  BAD_STEP("ld_hidden < Hd", b.in.ld_hidden = 4095, GEOPREF_INVALID_STRIDE);
  BAD_STEP("Hd = 0 with rows", b.in.hidden_size = 0, GEOPREF_INVALID_SHAPE);
  BAD_STEP("pair count", b.n_pairs = 31, GEOPREF_PAIR_COUNT_MISMATCH); /* pairing needs S == 2P */
#undef BAD_STEP
  fails += expect("null args", geopref_fused_linear_step(NULL, &bytes, NULL, &opt, NULL),
                  GEOPREF_NULL_POINTER);

  /* The one-pass decision (host only): 64 sequences of 256 rows, TRL's pairs (512 rows each),
   * 1046-row chunks. */
  {
    int64_t host_offsets[65];
    int64_t s;
    int one = -1;
    float dummy = 0.0f;
    for (s = 0; s <= 64; ++s) host_offsets[s] = 256 * s;
    b = a;
    b.grad_weight = &dummy; /* a gradient is asked for (never touched by the query) */
    b.grad_weight_float32 = 1;
    fails += expect("one pass, no host copies", geopref_fused_linear_one_pass(&b, &opt, &one),
                    GEOPREF_SUCCESS);
    fails += one != 0;
    b.host_offsets = host_offsets;
    fails += expect("one pass", geopref_fused_linear_one_pass(&b, &opt, &one), GEOPREF_SUCCESS);
    if (one != 1) fprintf(stderr, "one pass: got %d, want 1\n", one), ++fails;
    b.in.chunk_bytes = (size_t)511 * 128256 * 2; /* a pair (512 rows) does not fit */
    fails += expect("one pass, pairs too wide", geopref_fused_linear_one_pass(&b, &opt, &one),
                    GEOPREF_SUCCESS);
    if (one != 0) fprintf(stderr, "one pass with 511-row chunks: got %d, want 0\n", one), ++fails;
    b.in.chunk_bytes = a.in.chunk_bytes;
    host_offsets[3] = 1; /* decreasing: malformed host copies never take the one pass */
    fails += expect("one pass, bad offsets", geopref_fused_linear_one_pass(&b, &opt, &one),
                    GEOPREF_SUCCESS);
    fails += one != 0;
    fails += expect("one pass, null", geopref_fused_linear_one_pass(&b, &opt, NULL),
                    GEOPREF_NULL_POINTER);
    /* The workspace does not depend on the path. */
    host_offsets[3] = 768;
    {
      size_t with = 0, without = 0;
      fails += expect("query with host copies", geopref_fused_linear_step(NULL, &with, &b, &opt, NULL),
                      GEOPREF_SUCCESS);
      b.host_offsets = NULL;
      fails += expect("query without", geopref_fused_linear_step(NULL, &without, &b, &opt, NULL),
                      GEOPREF_SUCCESS);
      if (with != without) fprintf(stderr, "workspace %zu vs %zu\n", with, without), ++fails;
    }
  }

  /* Vocab-parallel: rank 1 of 2 holds rows [64128, 128256) of W; the step's query is the
   * slice's fused-linear workspace plus one [N] int32 piece (256 bytes of alignment slack),
   * less the one-pass plan's piece, which the vocab-parallel step (always two passes) does
   * not reserve: (S + 1 + 3P + S) int64, 2048 bytes here. */
  geopref_vocab_linear_train_args v;
  geopref_linear_train_args slice_train = a;
  geopref_vocab_linear_train_args_init(&v);
  slice_train.in.vocab = 64128;
  v.train = &slice_train;
  v.slice.begin = 64128;
  v.slice.total = 128256;
  v.slice.rank = 1;
  v.slice.n_ranks = 2;
  v.records = NULL;
  size_t plain = 0, sharded = 0;
  fails += expect("slice, unsharded query",
                  geopref_fused_linear_step(NULL, &plain, &slice_train, &opt, NULL), GEOPREF_SUCCESS);
  fails += expect("slice, sharded query", geopref_vocab_linear_step(NULL, &sharded, &v, &opt, NULL),
                  GEOPREF_SUCCESS);
  if (sharded < plain + 16384 * 4 - 2048 || sharded > plain + 16384 * 4 - 2048 + 256) {
    fprintf(stderr, "vocab-linear step workspace %zu, fused-linear %zu\n", sharded, plain);
    ++fails;
  }
  geopref_vocab_linear_stats_args st;
  geopref_vocab_linear_stats_args_init(&st);
  st.in = slice_train.in;
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
