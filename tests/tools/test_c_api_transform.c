/* tests/tools/test_c_api_transform.c — the logit transform in the C ABI from
 * C99, host only: every *_args_init sets the identity (scale 1, softcap 0,
 * temperature 1) at the end of the argument struct (ABI 1.1), and each entry's workspace query
 * (no GPU) rejects a transform zeroed by hand, a negative softcap and a
 * non-finite temperature with GEOPREF_INVALID_LOGIT_TRANSFORM. The values
 * themselves are checked on the GPU (tests/cuda, geopref-check --device cuda). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "c_api_check.h"
#include "geopref/c_api.h"

static int identity(const char* what, geopref_logit_transform t) {
  if (t.scale == 1.0 && t.softcap == 0.0 && t.temperature == 1.0) return 0;
  fprintf(stderr, "%s: logit_transform = (%g, %g, %g), want the identity (1, 0, 1)\n", what,
          t.scale, t.softcap, t.temperature);
  return 1;
}

/* The three bad transforms each entry below must reject. */
static geopref_logit_transform bad_transform(int k) {
  geopref_logit_transform t;
  memset(&t, 0, sizeof t); /* k == 0: zeroed by hand (scale = temperature = 0) */
  if (k == 1) t.scale = 1.0, t.softcap = -1.0, t.temperature = 1.0;
  if (k == 2) t.scale = 1.0, t.softcap = 30.0, t.temperature = HUGE_VAL;
  return t;
}

int main(void) {
  int fails = 0, k;
  size_t bytes = 0;
  test_args a;

  test_args_init(&a);
  fails += identity("geopref_train_args_init", a.train.logit_transform);
  fails += identity("geopref_logps_args_init", a.logps.logit_transform);
  fails += identity("geopref_grad_args_init", a.grad.logit_transform);
  fails += identity("geopref_vocab_stats_args_init", a.vstats.logit_transform);
  fails += identity("geopref_token_logps_args_init", a.tok.logit_transform);
  fails += identity("geopref_token_grad_args_init", a.tok_grad.logit_transform);
  fails += identity("geopref_linear_train_args_init", a.lin.logit_transform);
  fails += identity("geopref_linear_logps_args_init", a.lin_logps.logit_transform);
  fails += identity("geopref_vocab_linear_stats_args_init", a.vlstats.logit_transform);
  fails += identity("geopref_linear_token_logps_args_init", a.lin_tok.logit_transform);
  fails += identity("geopref_linear_token_grad_args_init", a.lin_tok_grad.logit_transform);

  /* Small problems whose queries succeed with the identity: 4 rows of V = 8
   * (Hd = 4 from hidden states), 2 sequences, one pair. */
  a.train.tokens.n_rows = a.logps.tokens.n_rows = a.grad.tokens.n_rows = 4;
  a.train.tokens.vocab = a.logps.tokens.vocab = a.grad.tokens.vocab = 8;
  a.train.tokens.ld = a.logps.tokens.ld = a.grad.tokens.ld = 8;
  a.train.tokens.n_seqs = a.logps.tokens.n_seqs = a.grad.tokens.n_seqs = 2;
  a.train.n_pairs = 1;
  a.tok.rows.n_rows = a.tok_grad.rows.n_rows = 4;
  a.tok.rows.vocab = a.tok_grad.rows.vocab = 8;
  a.tok.rows.ld = a.tok_grad.rows.ld = 8;
  a.lin.in.n_rows = a.lin_logps.in.n_rows = 4;
  a.lin.in.hidden_size = a.lin_logps.in.hidden_size = 4;
  a.lin.in.vocab = a.lin_logps.in.vocab = 8;
  a.lin.in.n_seqs = a.lin_logps.in.n_seqs = 2;
  a.lin.n_pairs = 1;
  a.lin_tok.rows.n_rows = a.lin_tok_grad.rows.n_rows = 4;
  a.lin_tok.rows.hidden_size = a.lin_tok_grad.rows.hidden_size = 4;
  a.lin_tok.rows.vocab = a.lin_tok_grad.rows.vocab = 8;

#define GEOPREF_CHECK_ENTRY(what, call, field)                                    \
  do {                                                                           \
    const geopref_logit_transform keep = field;                                  \
    fails += expect(what " (identity)", call, GEOPREF_SUCCESS);                   \
    for (k = 0; k < 3; ++k) {                                                     \
      field = bad_transform(k);                                                   \
      if (expect(what, call, GEOPREF_INVALID_LOGIT_TRANSFORM))                    \
        fprintf(stderr, "  (bad transform %d)\n", k), ++fails;                    \
    }                                                                            \
    field = keep;                                                                \
  } while (0)

  GEOPREF_CHECK_ENTRY("train_step", geopref_train_step(NULL, &bytes, &a.train, &a.opt, NULL),
                      a.train.logit_transform);
  GEOPREF_CHECK_ENTRY("sequence_logps", geopref_sequence_logps(NULL, &bytes, &a.logps, &a.opt, NULL),
                      a.logps.logit_transform);
  GEOPREF_CHECK_ENTRY("logits_grad", geopref_logits_grad(NULL, &bytes, &a.grad, &a.opt, NULL),
                      a.grad.logit_transform);
  GEOPREF_CHECK_ENTRY("token_logps", geopref_token_logps(NULL, &bytes, &a.tok, NULL),
                      a.tok.logit_transform);
  GEOPREF_CHECK_ENTRY("token_logps_grad", geopref_token_logps_grad(NULL, &bytes, &a.tok_grad, NULL),
                      a.tok_grad.logit_transform);
  GEOPREF_CHECK_ENTRY("fused_linear_step", geopref_fused_linear_step(NULL, &bytes, &a.lin, &a.opt, NULL),
                      a.lin.logit_transform);
  GEOPREF_CHECK_ENTRY("fused_linear_logps",
                      geopref_fused_linear_logps(NULL, &bytes, &a.lin_logps, &a.opt, NULL),
                      a.lin_logps.logit_transform);
  GEOPREF_CHECK_ENTRY("linear_token_logps", geopref_linear_token_logps(NULL, &bytes, &a.lin_tok, NULL),
                      a.lin_tok.logit_transform);
  GEOPREF_CHECK_ENTRY("linear_token_logps_grad",
                      geopref_linear_token_logps_grad(NULL, &bytes, &a.lin_tok_grad, NULL),
                      a.lin_tok_grad.logit_transform);
#undef GEOPREF_CHECK_ENTRY
  if (fails == 0) printf("logit transform: all C ABI checks passed\n");
  return fails == 0 ? 0 : 1;
}
