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
  geopref_options opt;
  geopref_train_args train;
  geopref_logps_args logps;
  geopref_grad_args grad;
  geopref_token_logps_args tok;
  geopref_token_grad_args tok_grad;
  geopref_linear_train_args lin;
  geopref_linear_logps_args lin_logps;
  geopref_linear_token_logps_args lin_tok;
  geopref_linear_token_grad_args lin_tok_grad;

  geopref_options_init(&opt);
  geopref_train_args_init(&train);
  geopref_logps_args_init(&logps);
  geopref_grad_args_init(&grad);
  geopref_token_logps_args_init(&tok);
  geopref_token_grad_args_init(&tok_grad);
  geopref_linear_train_args_init(&lin);
  geopref_linear_logps_args_init(&lin_logps);
  geopref_linear_token_logps_args_init(&lin_tok);
  geopref_linear_token_grad_args_init(&lin_tok_grad);
  fails += identity("geopref_train_args_init", train.logit_transform);
  fails += identity("geopref_logps_args_init", logps.logit_transform);
  fails += identity("geopref_grad_args_init", grad.logit_transform);
  fails += identity("geopref_token_logps_args_init", tok.logit_transform);
  fails += identity("geopref_token_grad_args_init", tok_grad.logit_transform);
  fails += identity("geopref_linear_train_args_init", lin.logit_transform);
  fails += identity("geopref_linear_logps_args_init", lin_logps.logit_transform);
  fails += identity("geopref_linear_token_logps_args_init", lin_tok.logit_transform);
  fails += identity("geopref_linear_token_grad_args_init", lin_tok_grad.logit_transform);

  /* Small problems whose queries succeed with the identity: 4 rows of V = 8
   * (Hd = 4 from hidden states), 2 sequences, one pair. */
  train.tokens.n_rows = logps.tokens.n_rows = grad.tokens.n_rows = 4;
  train.tokens.vocab = logps.tokens.vocab = grad.tokens.vocab = 8;
  train.tokens.ld = logps.tokens.ld = grad.tokens.ld = 8;
  train.tokens.n_seqs = logps.tokens.n_seqs = grad.tokens.n_seqs = 2;
  train.n_pairs = 1;
  tok.rows.n_rows = tok_grad.rows.n_rows = 4;
  tok.rows.vocab = tok_grad.rows.vocab = 8;
  tok.rows.ld = tok_grad.rows.ld = 8;
  lin.in.n_rows = lin_logps.in.n_rows = 4;
  lin.in.hidden_size = lin_logps.in.hidden_size = 4;
  lin.in.vocab = lin_logps.in.vocab = 8;
  lin.in.n_seqs = lin_logps.in.n_seqs = 2;
  lin.n_pairs = 1;
  lin_tok.rows.n_rows = lin_tok_grad.rows.n_rows = 4;
  lin_tok.rows.hidden_size = lin_tok_grad.rows.hidden_size = 4;
  lin_tok.rows.vocab = lin_tok_grad.rows.vocab = 8;

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

  GEOPREF_CHECK_ENTRY("train_step", geopref_train_step(NULL, &bytes, &train, &opt, NULL),
                      train.logit_transform);
  GEOPREF_CHECK_ENTRY("sequence_logps", geopref_sequence_logps(NULL, &bytes, &logps, &opt, NULL),
                      logps.logit_transform);
  GEOPREF_CHECK_ENTRY("logits_grad", geopref_logits_grad(NULL, &bytes, &grad, &opt, NULL),
                      grad.logit_transform);
  GEOPREF_CHECK_ENTRY("token_logps", geopref_token_logps(NULL, &bytes, &tok, NULL),
                      tok.logit_transform);
  GEOPREF_CHECK_ENTRY("token_logps_grad", geopref_token_logps_grad(NULL, &bytes, &tok_grad, NULL),
                      tok_grad.logit_transform);
  GEOPREF_CHECK_ENTRY("fused_linear_step", geopref_fused_linear_step(NULL, &bytes, &lin, &opt, NULL),
                      lin.logit_transform);
  GEOPREF_CHECK_ENTRY("fused_linear_logps",
                      geopref_fused_linear_logps(NULL, &bytes, &lin_logps, &opt, NULL),
                      lin_logps.logit_transform);
  GEOPREF_CHECK_ENTRY("linear_token_logps", geopref_linear_token_logps(NULL, &bytes, &lin_tok, NULL),
                      lin_tok.logit_transform);
  GEOPREF_CHECK_ENTRY("linear_token_logps_grad",
                      geopref_linear_token_logps_grad(NULL, &bytes, &lin_tok_grad, NULL),
                      lin_tok_grad.logit_transform);
#undef GEOPREF_CHECK_ENTRY
  if (fails == 0) printf("logit transform: all C ABI checks passed\n");
  return fails == 0 ? 0 : 1;
}
