/* tests/tools/c_api_check.h — what the host-only C ABI tests share (C99):
 * the status check, one argument struct of every entry as its *_args_init
 * leaves it, and the chunked workspace's expected size for their problem,
 * N = 16384 rows of Hd = 4096, V = 128256, bfloat16, a 256 MiB chunk budget. */
#ifndef GEOPREF_TESTS_C_API_CHECK_H
#define GEOPREF_TESTS_C_API_CHECK_H

#include <stddef.h>
#include <stdint.h>
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

/* expect() for the label `what` followed by `suffix`. */
static inline int expect_labelled(const char* what, const char* suffix, geopref_status got,
                                  geopref_status want) {
  char label[200];
  snprintf(label, sizeof label, "%s%s", what, suffix);
  return expect(label, got, want);
}

/* The options and one argument struct of every entry. */
typedef struct {
  geopref_options opt;
  geopref_train_args train;
  geopref_logps_args logps;
  geopref_grad_args grad;
  geopref_vocab_stats_args vstats;
  geopref_vocab_train_args vtrain;
  geopref_token_logps_args tok;
  geopref_token_grad_args tok_grad;
  geopref_linear_train_args lin;
  geopref_linear_logps_args lin_logps;
  geopref_linear_token_logps_args lin_tok;
  geopref_linear_token_grad_args lin_tok_grad;
  geopref_vocab_linear_stats_args vlstats;
  geopref_vocab_linear_train_args vltrain;
} test_args;

/* Each member of `a` through its own init function. */
static inline void test_args_init(test_args* a) {
  geopref_options_init(&a->opt);
  geopref_train_args_init(&a->train);
  geopref_logps_args_init(&a->logps);
  geopref_grad_args_init(&a->grad);
  geopref_vocab_stats_args_init(&a->vstats);
  geopref_vocab_train_args_init(&a->vtrain);
  geopref_token_logps_args_init(&a->tok);
  geopref_token_grad_args_init(&a->tok_grad);
  geopref_linear_train_args_init(&a->lin);
  geopref_linear_logps_args_init(&a->lin_logps);
  geopref_linear_token_logps_args_init(&a->lin_tok);
  geopref_linear_token_grad_args_init(&a->lin_tok_grad);
  geopref_vocab_linear_stats_args_init(&a->vlstats);
  geopref_vocab_linear_train_args_init(&a->vltrain);
}

/* The rows of a per-token problem: from logits [n_rows, vocab] (ld = vocab),
 * or from hidden states [n_rows, hidden_size] and a weight [vocab,
 * hidden_size] in chunks of chunk_bytes; the rest as the init function left
 * it. */
static inline void test_rows(geopref_token_rows* r, const void* logits, const void* labels,
                             int64_t n_rows, int64_t vocab) {
  r->logits = logits;
  r->labels = labels;
  r->n_rows = n_rows;
  r->vocab = r->ld = vocab;
}
static inline void test_linear_rows(geopref_linear_token_rows* r, const void* hidden,
                                    const void* weight, const void* labels, int64_t n_rows,
                                    int64_t hidden_size, int64_t vocab, size_t chunk_bytes) {
  r->hidden = hidden;
  r->weight = weight;
  r->labels = labels;
  r->n_rows = n_rows;
  r->hidden_size = hidden_size;
  r->vocab = vocab;
  r->chunk_bytes = chunk_bytes;
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
