/* tests/tools/test_c_api_abi.c — ABI 1.0 and its growth rule (geopref/c_api.h)
 * from C99.
 *
 * Host only: every *_args_init's struct, byte for byte, is zero but for
 * struct_size and the defaults geopref/c_api.h names; and every argument
 * struct through its *_workspace_size helper:
 *   - the helper equals its entry with a NULL workspace;
 *   - struct_size 0, 8 below the 1.0 size, or inside the logit transform
 *     (between two layouts) is GEOPREF_INVALID_STRUCT_SIZE; so is a larger
 *     struct with a non-zero byte past the library's layout, while zero bytes
 *     there are accepted with the same workspace;
 *   - a struct of the ABI 1.0 size placed against a PROT_NONE page (an
 *     over-read faults) is accepted with the same workspace, and so is one
 *     whose bytes past the 1.0 size hold an invalid (zero) transform: they are
 *     never read.
 * With a device (a GPU, or the host emulator: test_c_api_abi_emu), the ABI 1.0
 * consumer itself: structs declared as a caller compiled against the 1.0
 * header declared them (no logit transform), struct_size set to their size,
 * against the page guard, give bit for bit the results of today's structs
 * with the identity transform (train_step, token_logps, linear_token_logps);
 * today's structs with a soft-cap give other, finite values. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_api_check.h"
#include "c_api_device.h"
#include "geopref/c_api.h"

/* ---- What a caller compiled against the ABI 1.0 header declares. */
struct train_args_1_0 {
  size_t struct_size;
  geopref_tokens tokens;
  int64_t n_pairs;
  const int64_t* pairs;
  const float* soft_labels;
  const float* ref_logps;
  const float* weights;
  double grad_loss;
  const float* grad_output;
  float* loss;
  geopref_metrics* stats;
  float* seq_logps;
  int64_t* seq_counts;
  float* token_logps;
  float* lse;
  float* grad_seq_logps;
  void* grad_logits;
  int64_t grad_ld;
  int grad_float32;
  geopref_metric_sums* stat_sums;
};
struct token_logps_args_1_0 {
  size_t struct_size;
  geopref_token_rows rows;
  float* token_logps;
  float* lse;
  float* entropy;
};
struct linear_token_logps_args_1_0 {
  size_t struct_size;
  geopref_linear_token_rows rows;
  float* token_logps;
  float* lse;
  float* entropy;
};
/* C99 has no _Static_assert: a negative array size fails to compile. */
#define ABI_CHECK(name, cond) typedef char abi_check_##name[(cond) ? 1 : -1]
ABI_CHECK(train, sizeof(struct train_args_1_0) == GEOPREF_TRAIN_ARGS_SIZE_1_0);
ABI_CHECK(train_sums, offsetof(struct train_args_1_0, stat_sums) ==
                          offsetof(geopref_train_args, stat_sums));
ABI_CHECK(token, sizeof(struct token_logps_args_1_0) == GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0);
ABI_CHECK(linear_token,
          sizeof(struct linear_token_logps_args_1_0) == GEOPREF_LINEAR_TOKEN_LOGPS_ARGS_SIZE_1_0);

static void set_size(void* s, size_t size) { memcpy(s, &size, sizeof size); }

/* ---- Every argument struct through one query signature. */
typedef geopref_status (*query_fn)(const void* args, size_t* bytes);
/* Every entry's arguments, set up by host_checks. */
static test_args g;

#define QUERY_OPT(name, type)                                             \
  static geopref_status q_##name(const void* a, size_t* b) {              \
    return geopref_##name##_workspace_size((const type*)a, &g.opt, b);    \
  }                                                                      \
  static geopref_status e_##name(const void* a, size_t* b) {              \
    return geopref_##name(NULL, b, (const type*)a, &g.opt, NULL);          \
  }
#define QUERY(name, type)                                               \
  static geopref_status q_##name(const void* a, size_t* b) {            \
    return geopref_##name##_workspace_size((const type*)a, b);          \
  }                                                                    \
  static geopref_status e_##name(const void* a, size_t* b) {            \
    return geopref_##name(NULL, b, (const type*)a, NULL);               \
  }
QUERY_OPT(train_step, geopref_train_args)
QUERY_OPT(sequence_logps, geopref_logps_args)
QUERY_OPT(logits_grad, geopref_grad_args)
QUERY_OPT(vocab_parallel_stats, geopref_vocab_stats_args)
QUERY_OPT(vocab_parallel_train_step, geopref_vocab_train_args)
QUERY(token_logps, geopref_token_logps_args)
QUERY(token_logps_grad, geopref_token_grad_args)
QUERY_OPT(fused_linear_step, geopref_linear_train_args)
QUERY_OPT(fused_linear_logps, geopref_linear_logps_args)
QUERY(linear_token_logps, geopref_linear_token_logps_args)
QUERY(linear_token_logps_grad, geopref_linear_token_grad_args)
QUERY_OPT(vocab_linear_stats, geopref_vocab_linear_stats_args)
QUERY_OPT(vocab_linear_step, geopref_vocab_linear_train_args)

/* The options through train_step's query on a fixed problem. */
static geopref_status q_options(const void* opt, size_t* b) {
  return geopref_train_step_workspace_size(&g.train, (const geopref_options*)opt, b);
}

/* The struct-size rules for one argument struct `args` (a valid struct of
 * today's layout, `size` bytes, whose 1.0 size is `size_1_0`). */
static int check_sizes(const char* what, const void* args, size_t size, size_t size_1_0,
                       query_fn query, query_fn entry) {
  int fails = 0;
  size_t want = 0, got = 0;
  unsigned char* big = (unsigned char*)calloc(1, size + 16);
  unsigned char* guarded;
  char label[160];
  if (big == NULL) return 1;
#define LABEL(s) (snprintf(label, sizeof label, "%s: %s", what, s), label)
  fails += expect(LABEL("today's layout"), query(args, &want), GEOPREF_SUCCESS);
  if (entry != NULL) {
    fails += expect(LABEL("the entry, NULL workspace"), entry(args, &got), GEOPREF_SUCCESS);
    if (got != want) fprintf(stderr, "%s: helper %zu, entry %zu\n", what, want, got), ++fails;
  }

  /* A newer caller's larger struct: zero bytes past the layout are accepted. */
  memcpy(big, args, size);
  set_size(big, size + 16);
  got = 0;
  fails += expect(LABEL("zero tail"), query(big, &got), GEOPREF_SUCCESS);
  if (got != want) fprintf(stderr, "%s: zero tail %zu, want %zu\n", what, got, want), ++fails;
  big[size + 15] = 1;
  fails += expect(LABEL("non-zero tail"), query(big, &got), GEOPREF_INVALID_STRUCT_SIZE);

  /* Sizes no layout has. */
  memcpy(big, args, size);
  set_size(big, 0);
  fails += expect(LABEL("struct_size 0"), query(big, &got), GEOPREF_INVALID_STRUCT_SIZE);
  set_size(big, size_1_0 - 8);
  fails += expect(LABEL("below 1.0"), query(big, &got), GEOPREF_INVALID_STRUCT_SIZE);
  if (size_1_0 < size) {
    set_size(big, size_1_0 + 8); /* inside the logit transform */
    fails += expect(LABEL("between layouts"), query(big, &got), GEOPREF_INVALID_STRUCT_SIZE);
    /* The bytes past the 1.0 size are never read: zero there (scale = 0, an
     * invalid transform) changes nothing. */
    set_size(big, size_1_0);
    memset(big + size_1_0, 0, size - size_1_0);
    got = 0;
    fails += expect(LABEL("1.0 size, zero transform past it"), query(big, &got),
                    GEOPREF_SUCCESS);
    if (got != want) fprintf(stderr, "%s: 1.0 size %zu, want %zu\n", what, got, want), ++fails;
  }

  /* The 1.0 struct against the guard page: an over-read faults. */
  guarded = test_against_guard(size_1_0);
  memcpy(guarded, args, size_1_0);
  set_size(guarded, size_1_0);
  got = 0;
  fails += expect(LABEL("1.0 size against the guard"), query(guarded, &got), GEOPREF_SUCCESS);
  if (got != want) fprintf(stderr, "%s: guarded %zu, want %zu\n", what, got, want), ++fails;
#undef LABEL
  free(big);
  return fails;
}

/* ---- Small problems every query accepts: N = 8 rows, V = 16, Hd = 4,
 * 4 sequences of 2 rows, 2 pairs (TRL's layout). */
enum { N = 8, V = 16, HD = 4, S = 4, P = 2 };

static void set_tokens(geopref_tokens* t) {
  t->n_rows = N;
  t->vocab = V;
  t->ld = V;
  t->n_seqs = S;
}
static void set_linear(geopref_linear_inputs* in) {
  in->n_rows = N;
  in->hidden_size = HD;
  in->vocab = V;
  in->n_seqs = S;
  in->chunk_bytes = 4096;
}

/* ---- Every *_args_init: struct_size its struct's size, zero bytes but the
 * defaults geopref/c_api.h names (float32 / int64, ignore_index -100,
 * chunk_bytes 1 GiB, one rank, grad_loss 1, the identity transform). */
static void expect_tokens(geopref_tokens* t) {
  t->logits_dtype = GEOPREF_FLOAT32;
  t->label_type = t->offset_type = GEOPREF_INT64;
}
static void expect_rows(geopref_token_rows* r) {
  r->logits_dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = -100;
}
static void expect_linear(geopref_linear_inputs* in) {
  in->dtype = GEOPREF_FLOAT32;
  in->label_type = in->offset_type = GEOPREF_INT64;
  in->chunk_bytes = (size_t)1 << 30;
}
static void expect_linear_rows(geopref_linear_token_rows* r) {
  r->dtype = GEOPREF_FLOAT32;
  r->label_type = GEOPREF_INT64;
  r->ignore_index = -100;
  r->chunk_bytes = (size_t)1 << 30;
}
static void expect_identity(geopref_logit_transform* t) {
  t->scale = t->temperature = 1.0;
  t->softcap = 0.0;
}
static int same_bytes(const char* what, const void* got, const void* want, size_t size) {
  const unsigned char *g = (const unsigned char*)got, *w = (const unsigned char*)want;
  size_t k;
  for (k = 0; k < size; ++k)
    if (g[k] != w[k]) {
      fprintf(stderr, "%s: byte %zu is %u, want %u\n", what, k, g[k], w[k]);
      return 1;
    }
  return 0;
}

static int check_defaults(void) {
  int fails = 0;
  test_args got, want;
  test_args_init(&got);
  memset(&want, 0, sizeof want);
#define WANT(member) want.member.struct_size = sizeof want.member
  WANT(train), WANT(logps), WANT(grad), WANT(vstats), WANT(vtrain), WANT(tok), WANT(tok_grad);
  WANT(lin), WANT(lin_logps), WANT(lin_tok), WANT(lin_tok_grad), WANT(vlstats), WANT(vltrain);
#undef WANT
  expect_tokens(&want.train.tokens), expect_identity(&want.train.logit_transform);
  want.train.grad_loss = 1.0;
  expect_tokens(&want.logps.tokens), expect_identity(&want.logps.logit_transform);
  expect_tokens(&want.grad.tokens), expect_identity(&want.grad.logit_transform);
  expect_tokens(&want.vstats.tokens), expect_identity(&want.vstats.logit_transform);
  want.vstats.slice.n_ranks = want.vtrain.slice.n_ranks = 1;
  expect_rows(&want.tok.rows), expect_identity(&want.tok.logit_transform);
  expect_rows(&want.tok_grad.rows), expect_identity(&want.tok_grad.logit_transform);
  expect_linear(&want.lin.in), expect_identity(&want.lin.logit_transform);
  want.lin.grad_loss = 1.0;
  expect_linear(&want.lin_logps.in), expect_identity(&want.lin_logps.logit_transform);
  expect_linear_rows(&want.lin_tok.rows), expect_identity(&want.lin_tok.logit_transform);
  expect_linear_rows(&want.lin_tok_grad.rows), expect_identity(&want.lin_tok_grad.logit_transform);
  expect_linear(&want.vlstats.in), expect_identity(&want.vlstats.logit_transform);
  want.vlstats.slice.n_ranks = want.vltrain.slice.n_ranks = 1;
#define SAME(member) fails += same_bytes(#member "_init", &got.member, &want.member, sizeof got.member)
  SAME(train), SAME(logps), SAME(grad), SAME(vstats), SAME(vtrain), SAME(tok), SAME(tok_grad);
  SAME(lin), SAME(lin_logps), SAME(lin_tok), SAME(lin_tok_grad), SAME(vlstats), SAME(vltrain);
#undef SAME
  return fails;
}

static int host_checks(void) {
  int fails = 0;
  geopref_linear_train_args lin_slice;
  geopref_train_args train_slice;
  unsigned char* guarded;
  size_t want = 0, got = 0;

  test_args_init(&g);
  if (g.opt.struct_size != sizeof g.opt) fprintf(stderr, "options_init: struct_size\n"), ++fails;
  if (g.train.struct_size != sizeof g.train) fprintf(stderr, "train_args_init: struct_size\n"), ++fails;
  set_tokens(&g.train.tokens);
  g.train.n_pairs = P;
  set_tokens(&g.logps.tokens);
  set_tokens(&g.grad.tokens);
  set_tokens(&g.vstats.tokens);
  g.vstats.tokens.vocab = g.vstats.tokens.ld = V / 2;
  g.vstats.slice.total = V;
  g.vstats.slice.n_ranks = 2;
  train_slice = g.train;
  train_slice.tokens.vocab = V / 2;
  g.vtrain.train = &train_slice;
  g.vtrain.slice = g.vstats.slice;
  test_rows(&g.tok.rows, NULL, NULL, N, V);
  test_rows(&g.tok_grad.rows, NULL, NULL, N, V);
  set_linear(&g.lin.in);
  g.lin.n_pairs = P;
  set_linear(&g.lin_logps.in);
  test_linear_rows(&g.lin_tok.rows, NULL, NULL, NULL, N, HD, V, 4096);
  test_linear_rows(&g.lin_tok_grad.rows, NULL, NULL, NULL, N, HD, V, 4096);
  set_linear(&g.vlstats.in);
  g.vlstats.in.vocab = V / 2;
  g.vlstats.slice = g.vstats.slice;
  lin_slice = g.lin;
  lin_slice.in.vocab = V / 2;
  g.vltrain.train = &lin_slice;
  g.vltrain.slice = g.vstats.slice;

#define CHECK(name, var, SIZE_1_0) \
  fails += check_sizes(#name, &g.var, sizeof g.var, SIZE_1_0, q_##name, e_##name)
  fails += check_sizes("options", &g.opt, sizeof g.opt, GEOPREF_OPTIONS_SIZE_1_0, q_options, NULL);
  CHECK(train_step, train, GEOPREF_TRAIN_ARGS_SIZE_1_0);
  CHECK(sequence_logps, logps, GEOPREF_LOGPS_ARGS_SIZE_1_0);
  CHECK(logits_grad, grad, GEOPREF_GRAD_ARGS_SIZE_1_0);
  CHECK(vocab_parallel_stats, vstats, GEOPREF_VOCAB_STATS_ARGS_SIZE_1_0);
  CHECK(vocab_parallel_train_step, vtrain, GEOPREF_VOCAB_TRAIN_ARGS_SIZE_1_0);
  CHECK(token_logps, tok, GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0);
  CHECK(token_logps_grad, tok_grad, GEOPREF_TOKEN_GRAD_ARGS_SIZE_1_0);
  CHECK(fused_linear_step, lin, GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0);
  CHECK(fused_linear_logps, lin_logps, GEOPREF_LINEAR_LOGPS_ARGS_SIZE_1_0);
  CHECK(linear_token_logps, lin_tok, GEOPREF_LINEAR_TOKEN_LOGPS_ARGS_SIZE_1_0);
  CHECK(linear_token_logps_grad, lin_tok_grad, GEOPREF_LINEAR_TOKEN_GRAD_ARGS_SIZE_1_0);
  CHECK(vocab_linear_stats, vlstats, GEOPREF_VOCAB_LINEAR_STATS_ARGS_SIZE_1_0);
  CHECK(vocab_linear_step, vltrain, GEOPREF_VOCAB_LINEAR_TRAIN_ARGS_SIZE_1_0);
#undef CHECK

  /* The train arguments a vocab-parallel step points to are read by their
   * own struct_size: a 1.0 one against the guard, a bad one, none. */
  fails += expect("vocab step", q_vocab_parallel_train_step(&g.vtrain, &want), GEOPREF_SUCCESS);
  guarded = test_against_guard(GEOPREF_TRAIN_ARGS_SIZE_1_0);
  memcpy(guarded, &train_slice, GEOPREF_TRAIN_ARGS_SIZE_1_0);
  set_size(guarded, GEOPREF_TRAIN_ARGS_SIZE_1_0);
  g.vtrain.train = (const geopref_train_args*)(const void*)guarded;
  fails += expect("vocab step, 1.0 train args against the guard",
                  q_vocab_parallel_train_step(&g.vtrain, &got), GEOPREF_SUCCESS);
  if (got != want) fprintf(stderr, "vocab step: %zu, want %zu\n", got, want), ++fails;
  set_size(guarded, 0);
  fails += expect("vocab step, train struct_size 0", q_vocab_parallel_train_step(&g.vtrain, &got),
                  GEOPREF_INVALID_STRUCT_SIZE);
  g.vtrain.train = NULL;
  fails += expect("vocab step, no train args", q_vocab_parallel_train_step(&g.vtrain, &got),
                  GEOPREF_NULL_POINTER);
  guarded = test_against_guard(GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0);
  memcpy(guarded, &lin_slice, GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0);
  set_size(guarded, GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0);
  fails += expect("vocab linear step", q_vocab_linear_step(&g.vltrain, &want), GEOPREF_SUCCESS);
  g.vltrain.train = (const geopref_linear_train_args*)(const void*)guarded;
  fails += expect("vocab linear step, 1.0 train args against the guard",
                  q_vocab_linear_step(&g.vltrain, &got), GEOPREF_SUCCESS);
  if (got != want) fprintf(stderr, "vocab linear step: %zu, want %zu\n", got, want), ++fails;
  set_size(guarded, GEOPREF_LINEAR_TRAIN_ARGS_SIZE_1_0 + 8);
  fails += expect("vocab linear step, train struct_size between layouts",
                  q_vocab_linear_step(&g.vltrain, &got), GEOPREF_INVALID_STRUCT_SIZE);

  if (geopref_status_string(GEOPREF_INVALID_STRUCT_SIZE)[0] == 'u') /* "unknown status" */
    fprintf(stderr, "GEOPREF_INVALID_STRUCT_SIZE has no message\n"), ++fails;
  return fails;
}

/* ---- With a device: the ABI 1.0 caller's results are today's with the
 * identity transform, bit for bit. */

static unsigned g_seed = 12345u;
static float uniform(void) { /* [-4, 4) */
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)((g_seed >> 8) & 0xffffu) / 8192.0f - 4.0f;
}

/* Outputs of one call, back on the host. */
typedef struct {
  float loss, seq_logps[S], token_logps[N], lse[N], grad[N * V];
} results;

/* The output buffers every call writes, poisoned before each call. */
typedef struct {
  float *loss, *seq_logps, *token_logps, *lse, *grad;
} outputs;

static void poison(const outputs* o) {
  float nan[N * V];
  size_t k;
  for (k = 0; k < N * V; ++k) nan[k] = NAN;
  test_to_device(o->loss, nan, sizeof(float));
  test_to_device(o->seq_logps, nan, S * sizeof(float));
  test_to_device(o->token_logps, nan, N * sizeof(float));
  test_to_device(o->lse, nan, N * sizeof(float));
  test_to_device(o->grad, nan, N * V * sizeof(float));
}

static int fetch(const outputs* o, results* r, int what) {
  memset(r, 0, sizeof *r);
  if (what == 0) { /* train_step */
    if (test_to_host(&r->loss, o->loss, sizeof(float)) != 0) return 1;
    if (test_to_host(r->seq_logps, o->seq_logps, sizeof r->seq_logps) != 0) return 1;
    if (test_to_host(r->grad, o->grad, sizeof r->grad) != 0) return 1;
  }
  if (test_to_host(r->token_logps, o->token_logps, sizeof r->token_logps) != 0) return 1;
  return test_to_host(r->lse, o->lse, sizeof r->lse);
}

static int same(const char* what, const results* a, const results* b) {
  if (memcmp(a, b, sizeof *a) == 0) return 0;
  fprintf(stderr, "%s: the ABI 1.0 call's results differ from today's\n", what);
  return 1;
}

static int finite_all(const float* v, size_t n) {
  size_t k;
  for (k = 0; k < n; ++k)
    if (!isfinite(v[k])) return 0;
  return 1;
}

/* The entries run on the device, through one signature. */
typedef geopref_status (*entry_fn)(void* ws, size_t* bytes, const void* args);
static geopref_status run_train_step(void* ws, size_t* bytes, const void* a) {
  return geopref_train_step(ws, bytes, (const geopref_train_args*)a, &g.opt, NULL);
}
static geopref_status run_token_logps(void* ws, size_t* bytes, const void* a) {
  return geopref_token_logps(ws, bytes, (const geopref_token_logps_args*)a, NULL);
}
static geopref_status run_linear_token_logps(void* ws, size_t* bytes, const void* a) {
  return geopref_linear_token_logps(ws, bytes, (const geopref_linear_token_logps_args*)a, NULL);
}

/* One entry three ways on the outputs `o` (fetched as fetch()'s `what`):
 * today's struct `args` (identity transform); the ABI 1.0 caller, a copy of
 * its first size_1_0 bytes with that struct_size against the guard (nothing
 * past it), the same bit for bit; today's with the soft-cap `softcap` set in
 * `transform` (a member of *args), finite and different. */
static int check_1_0(const char* what, entry_fn entry, void* args, size_t size_1_0,
                     geopref_logit_transform* transform, double softcap, const outputs* o,
                     int fetched) {
  int fails = 0, changed;
  results now, old, capped;
  unsigned char* args_1_0 = test_against_guard(size_1_0);
  char label[160];
  poison(o);
  TEST_RUN_ENTRY(what, entry(ws, &bytes, args));
  fails += fetch(o, &now, fetched);
  memcpy(args_1_0, args, size_1_0); /* every 1.0 field as above */
  set_size(args_1_0, size_1_0);
  poison(o);
  snprintf(label, sizeof label, "%s, ABI 1.0", what);
  TEST_RUN_ENTRY(label, entry(ws, &bytes, args_1_0));
  fails += fetch(o, &old, fetched);
  fails += same(what, &now, &old);
  /* Today's caller with a soft-cap: it still works, and it changes the values. */
  transform->softcap = softcap;
  poison(o);
  snprintf(label, sizeof label, "%s, soft-cap", what);
  TEST_RUN_ENTRY(label, entry(ws, &bytes, args));
  fails += fetch(o, &capped, fetched);
  if (fetched == 0) /* train_step: its loss and gradient */
    changed = finite_all(&capped.loss, 1) && finite_all(capped.grad, N * V) &&
              capped.loss != now.loss && memcmp(capped.grad, now.grad, sizeof now.grad) != 0;
  else
    changed = finite_all(capped.token_logps, N) && capped.token_logps[0] != now.token_logps[0];
  if (!changed)
    fprintf(stderr, "%s, soft-cap: loss %g (identity %g), token_logps[0] %g (identity %g)\n",
            what, capped.loss, now.loss, capped.token_logps[0], now.token_logps[0]), ++fails;
  return fails;
}

static int device_checks(void) {
  int fails = 0;
  float logits[N * V], hidden[N * HD], weight[V * HD];
  int64_t labels[N], offsets[S + 1];
  size_t k;
  void *d_logits, *d_labels, *d_offsets, *d_hidden, *d_weight;
  outputs o;
  geopref_train_args train;
  geopref_token_logps_args tok;
  geopref_linear_token_logps_args lin;

  for (k = 0; k < N * V; ++k) logits[k] = uniform();
  for (k = 0; k < N * HD; ++k) hidden[k] = uniform() / 2;
  for (k = 0; k < V * HD; ++k) weight[k] = uniform() / 2;
  for (k = 0; k < N; ++k) labels[k] = (int64_t)((k * 7 + 3) % V);
  labels[3] = -100; /* one unscored row */
  for (k = 0; k <= S; ++k) offsets[k] = (int64_t)(2 * k);
  d_logits = test_upload(logits, sizeof logits);
  d_labels = test_upload(labels, sizeof labels);
  d_offsets = test_upload(offsets, sizeof offsets);
  d_hidden = test_upload(hidden, sizeof hidden);
  d_weight = test_upload(weight, sizeof weight);
  o.loss = (float*)test_device_alloc(sizeof(float));
  o.seq_logps = (float*)test_device_alloc(S * sizeof(float));
  o.token_logps = (float*)test_device_alloc(N * sizeof(float));
  o.lse = (float*)test_device_alloc(N * sizeof(float));
  o.grad = (float*)test_device_alloc(N * V * sizeof(float));
  geopref_options_init(&g.opt);

  /* train_step. */
  geopref_train_args_init(&train);
  set_tokens(&train.tokens);
  train.tokens.logits = d_logits;
  train.tokens.labels = d_labels;
  train.tokens.offsets = d_offsets;
  train.n_pairs = P;
  train.loss = o.loss;
  train.seq_logps = o.seq_logps;
  train.token_logps = o.token_logps;
  train.lse = o.lse;
  train.grad_logits = o.grad;
  train.grad_float32 = 1;
  fails += check_1_0("train_step", run_train_step, &train, sizeof(struct train_args_1_0),
                     &train.logit_transform, 2.0, &o, 0);

  /* token_logps. */
  geopref_token_logps_args_init(&tok);
  test_rows(&tok.rows, d_logits, d_labels, N, V);
  tok.token_logps = o.token_logps;
  tok.lse = o.lse;
  fails += check_1_0("token_logps", run_token_logps, &tok, sizeof(struct token_logps_args_1_0),
                     &tok.logit_transform, 2.0, &o, 1);

  /* linear_token_logps (the cuBLAS translation unit). */
  geopref_linear_token_logps_args_init(&lin);
  test_linear_rows(&lin.rows, d_hidden, d_weight, d_labels, N, HD, V, 4096);
  lin.token_logps = o.token_logps;
  lin.lse = o.lse;
  fails += check_1_0("linear_token_logps", run_linear_token_logps, &lin,
                     sizeof(struct linear_token_logps_args_1_0), &lin.logit_transform, 1.0, &o, 1);

  test_device_free(d_logits);
  test_device_free(d_labels);
  test_device_free(d_offsets);
  test_device_free(d_hidden);
  test_device_free(d_weight);
  test_device_free(o.loss);
  test_device_free(o.seq_logps);
  test_device_free(o.token_logps);
  test_device_free(o.lse);
  test_device_free(o.grad);
  return fails;
}

int main(void) {
  int fails = check_defaults() + host_checks();
  const int device = test_device_available();
  if (device) fails += device_checks();
  if (fails != 0) {
    fprintf(stderr, "%d ABI check(s) failed\n", fails);
    return 1;
  }
  printf("ABI %d.%d: struct sizes checked for every entry%s\n", GEOPREF_ABI_VERSION_MAJOR,
         GEOPREF_ABI_VERSION_MINOR,
         device ? "; the 1.0 layouts give today's results on the device" : " (no device)");
  return 0;
}
