/* tests/tools/test_c_api_stats.c — ABI 1.2 through the C ABI (C99): TRL 1.x's
 * per-token statistics (log_sum_sq_probs, mean_logits, is_top1, with the
 * entropy) from geopref_token_logps and geopref_linear_token_logps, and the
 * entropy's upstream gradient through their _grad entries, against the same
 * quantities computed here in double; and a 1.1 caller (its structs end before
 * the 1.2 fields, against a guard page) gets today's results without them.
 * Runs on a GPU with the compiled library, and on the host emulator
 * (test_c_api_stats_emu); without either it says so and passes.
 *
 * Tolerances: the library folds V = 16 float32 terms per row (online
 * log-sum-exp, exp2 in float) and forms each gradient element from a few
 * float products; the results are within 64 float32 roundings (u = 2^-24)
 * of the largest term involved, 4e-6 of it: TOL below. A wrong field mapping
 * or a missing term moves a value by 1e-2 or more here. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_api_check.h"
#include "c_api_device.h"
#include "geopref/c_api.h"

enum { N = 8, V = 16, HD = 4 };
#define TOL 4e-6

static unsigned g_seed = 777u;
static float uniform(void) { /* [-4, 4) */
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)((g_seed >> 8) & 0xffffu) / 8192.0f - 4.0f;
}

static void* zeros(size_t bytes) {
  void* h = calloc(1, bytes);
  void* d = test_upload(h, bytes);
  free(h);
  return d;
}
static void fetch(void* host, const void* dev, size_t bytes) {
  if (test_to_host(host, dev, bytes) != 0) {
    fprintf(stderr, "copy of %zu bytes back failed\n", bytes);
    exit(1);
  }
}

/* The row's statistics in double (identity transform). */
typedef struct {
  double logp, lse, entropy, lssp, mean;
  int top1;
} row_stats;

static row_stats stats_of(const double* z, int64_t y) {
  row_stats r;
  double m = z[0], s = 0, s2 = 0, pz = 0, sum = 0;
  int64_t v, first = 0;
  for (v = 1; v < V; ++v)
    if (z[v] > z[first]) first = v; /* the first arg-max (TRL 1.16.0's rule) */
  m = z[first];
  for (v = 0; v < V; ++v) s += exp(z[v] - m);
  r.lse = m + log(s);
  for (v = 0; v < V; ++v) {
    const double p = exp(z[v] - r.lse);
    s2 += p * p;
    pz += p * (z[v] - r.lse);
    sum += z[v];
  }
  r.logp = z[y] - r.lse;
  r.entropy = -pz;
  r.lssp = log(s2);
  r.mean = sum / V;
  r.top1 = y == first;
  return r;
}

/* ∂(g ℓ + e H)/∂z_v = g (1[v = y] − p_v) − e p_v (ln p_v + H). */
static double grad_of(const double* z, int64_t y, int64_t v, double g, double e) {
  const row_stats r = stats_of(z, y);
  const double lp = z[v] - r.lse, p = exp(lp);
  return g * ((v == y) - p) - e * p * (lp + r.entropy);
}

static int near(const char* what, int64_t i, double got, double want, double scale) {
  if (fabs(got - want) <= TOL * (scale > 1 ? scale : 1)) return 0;
  fprintf(stderr, "%s[%lld]: got %.9g, want %.9g\n", what, (long long)i, got, want);
  return 1;
}

typedef struct {
  void *logp, *lse, *ent, *lssp, *mean, *top1;
} stats_dev;

/* The outputs of a token_logps or linear_token_logps argument struct. */
#define POINT_STATS(args, s)                                                 \
  ((args).token_logps = (float*)(s).logp, (args).lse = (float*)(s).lse,      \
   (args).entropy = (float*)(s).ent, (args).log_sum_sq_probs = (float*)(s).lssp, \
   (args).mean_logits = (float*)(s).mean, (args).is_top1 = (uint8_t*)(s).top1)

/* The inputs of a token_logps_grad or linear_token_logps_grad argument
 * struct: the forward's lse and entropy, g_t and e_t. */
#define POINT_UPSTREAM(args, s, g, e)                                               \
  ((args).lse = (const float*)(s).lse, (args).grad_token_logps = (const float*)(g), \
   (args).grad_entropy = (const float*)(e), (args).entropy = (const float*)(s).ent)

static stats_dev stats_alloc(void) {
  stats_dev s;
  s.logp = zeros(N * 4);
  s.lse = zeros(N * 4);
  s.ent = zeros(N * 4);
  s.lssp = zeros(N * 4);
  s.mean = zeros(N * 4);
  s.top1 = zeros(N);
  return s;
}

static void stats_free(stats_dev* s) {
  test_device_free(s->logp);
  test_device_free(s->lse);
  test_device_free(s->ent);
  test_device_free(s->lssp);
  test_device_free(s->mean);
  test_device_free(s->top1);
}

/* The statistics against z [N, V] in double; unscored rows all zero. */
static int check_stats(const char* what, const stats_dev* s, const double* z,
                       const int64_t* labels) {
  float logp[N], lse[N], ent[N], lssp[N], mean[N];
  uint8_t top1[N];
  int fails = 0;
  int64_t t;
  fetch(logp, s->logp, sizeof logp);
  fetch(lse, s->lse, sizeof lse);
  fetch(ent, s->ent, sizeof ent);
  fetch(lssp, s->lssp, sizeof lssp);
  fetch(mean, s->mean, sizeof mean);
  fetch(top1, s->top1, sizeof top1);
  for (t = 0; t < N; ++t) {
    if (labels[t] < 0) {
      if (logp[t] != 0 || ent[t] != 0 || lssp[t] != 0 || mean[t] != 0 || top1[t] != 0)
        fprintf(stderr, "%s: unscored row %lld not zero\n", what, (long long)t), ++fails;
      continue;
    }
    {
      const row_stats r = stats_of(z + t * V, labels[t]);
      fails += near("token_logps", t, logp[t], r.logp, fabs(r.lse));
      fails += near("entropy", t, ent[t], r.entropy, fabs(r.lse));
      fails += near("log_sum_sq_probs", t, lssp[t], r.lssp, fabs(r.lse));
      fails += near("mean_logits", t, mean[t], r.mean, 4.0);
      if (top1[t] != r.top1)
        fprintf(stderr, "%s: is_top1[%lld] %d, want %d\n", what, (long long)t, top1[t], r.top1),
            ++fails;
    }
  }
  if (fails) fprintf(stderr, "%s: %d statistic(s) off\n", what, fails);
  return fails;
}

static int device_checks(void) {
  int fails = 0;
  float logits[N * V], hidden[N * HD], weight[V * HD], g[N], e[N];
  double z[N * V], zl[N * V];
  int64_t labels[N];
  int64_t t, v, k;
  void *d_logits, *d_labels, *d_hidden, *d_weight, *d_g, *d_e, *d_grad, *d_gh;
  stats_dev s;
  float grad[N * V], gh[N * HD], grad_old[N * V];
  geopref_token_logps_args tok;
  geopref_token_grad_args tg;
  geopref_linear_token_logps_args lin;
  geopref_linear_token_grad_args lg;
  unsigned char* guarded;

  for (k = 0; k < N * V; ++k) logits[k] = uniform();
  for (k = 0; k < N * HD; ++k) hidden[k] = uniform() / 2;
  for (k = 0; k < V * HD; ++k) weight[k] = uniform() / 2;
  for (t = 0; t < N; ++t) {
    labels[t] = (t * 7 + 3) % V;
    g[t] = uniform() / 4;
    e[t] = uniform() / 4;
  }
  labels[3] = -100; /* one unscored row */
  /* Ties: row 1's maximum at columns 2 and 9 with the label at 9 (not the
   * first arg-max), row 2's at 5 and 11 with the label at 5. */
  for (v = 0; v < V; ++v) logits[1 * V + v] = logits[2 * V + v] = -1.0f;
  logits[1 * V + 2] = logits[1 * V + 9] = 3.0f;
  labels[1] = 9;
  logits[2 * V + 5] = logits[2 * V + 11] = 3.0f;
  labels[2] = 5;
  for (k = 0; k < N * V; ++k) z[k] = logits[k];
  for (t = 0; t < N; ++t)
    for (v = 0; v < V; ++v) {
      double acc = 0;
      for (k = 0; k < HD; ++k) acc += (double)hidden[t * HD + k] * weight[v * HD + k];
      zl[t * V + v] = acc;
    }
  d_logits = test_upload(logits, sizeof logits);
  d_labels = test_upload(labels, sizeof labels);
  d_hidden = test_upload(hidden, sizeof hidden);
  d_weight = test_upload(weight, sizeof weight);
  d_g = test_upload(g, sizeof g);
  d_e = test_upload(e, sizeof e);
  d_grad = zeros(sizeof grad);
  d_gh = zeros(sizeof gh);
  s = stats_alloc();

  /* From logits: every statistic. */
  geopref_token_logps_args_init(&tok);
  test_rows(&tok.rows, d_logits, d_labels, N, V);
  POINT_STATS(tok, s);
  TEST_RUN_ENTRY("token_logps", geopref_token_logps(ws, &bytes, &tok, NULL));
  fails += check_stats("token_logps", &s, z, labels);

  /* Its backward with g_t and e_t. */
  geopref_token_grad_args_init(&tg);
  tg.rows = tok.rows;
  POINT_UPSTREAM(tg, s, d_g, d_e);
  tg.grad_logits = d_grad;
  tg.grad_float32 = 1;
  TEST_RUN_ENTRY("token_logps_grad", geopref_token_logps_grad(ws, &bytes, &tg, NULL));
  fetch(grad, d_grad, sizeof grad);
  for (t = 0; t < N; ++t)
    for (v = 0; v < V; ++v) {
      const double want = labels[t] < 0 ? 0 : grad_of(z + t * V, labels[t], v, g[t], e[t]);
      fails += near("grad_logits", t * V + v, grad[t * V + v], want, 1.0);
    }

  /* A 1.1 caller: the struct ends before grad_entropy (against the guard):
   * the gradient of g_t alone, as today's call without e_t, bit for bit. */
  guarded = test_against_guard(offsetof(geopref_token_grad_args, grad_entropy));
  memcpy(guarded, &tg, offsetof(geopref_token_grad_args, grad_entropy));
  ((geopref_token_grad_args*)(void*)guarded)->struct_size =
      offsetof(geopref_token_grad_args, grad_entropy);
  TEST_RUN_ENTRY("token_logps_grad, ABI 1.1",
      geopref_token_logps_grad(ws, &bytes, (const geopref_token_grad_args*)(const void*)guarded,
                               NULL));
  fetch(grad_old, d_grad, sizeof grad_old);
  tg.grad_entropy = NULL;
  TEST_RUN_ENTRY("token_logps_grad, no e_t", geopref_token_logps_grad(ws, &bytes, &tg, NULL));
  fetch(grad, d_grad, sizeof grad);
  if (memcmp(grad, grad_old, sizeof grad) != 0)
    fprintf(stderr, "token_logps_grad: the 1.1 caller's gradient differs\n"), ++fails;
  for (t = 0; t < N; ++t) /* and e_t was not applied: g_t's gradient */
    for (v = 0; v < V; ++v) {
      const double want = labels[t] < 0 ? 0 : grad_of(z + t * V, labels[t], v, g[t], 0.0);
      fails += near("grad_logits without e_t", t * V + v, grad[t * V + v], want, 1.0);
    }

  /* From hidden states: every statistic of Z = H·Wᵀ, into fresh outputs. */
  stats_free(&s);
  s = stats_alloc();
  geopref_linear_token_logps_args_init(&lin);
  /* three rows a chunk: a short last chunk */
  test_linear_rows(&lin.rows, d_hidden, d_weight, d_labels, N, HD, V, 3 * V * 4);
  POINT_STATS(lin, s);
  TEST_RUN_ENTRY("linear_token_logps", geopref_linear_token_logps(ws, &bytes, &lin, NULL));
  fails += check_stats("linear_token_logps", &s, zl, labels);

  /* Its backward with g_t and e_t: grad_H = G·W. */
  geopref_linear_token_grad_args_init(&lg);
  lg.rows = lin.rows;
  POINT_UPSTREAM(lg, s, d_g, d_e);
  lg.grad_hidden = d_gh;
  TEST_RUN_ENTRY("linear_token_logps_grad", geopref_linear_token_logps_grad(ws, &bytes, &lg, NULL));
  fetch(gh, d_gh, sizeof gh);
  for (t = 0; t < N; ++t)
    for (k = 0; k < HD; ++k) {
      double want = 0;
      if (labels[t] >= 0)
        for (v = 0; v < V; ++v)
          want += grad_of(zl + t * V, labels[t], v, g[t], e[t]) * weight[v * HD + k];
      fails += near("grad_hidden", t * HD + k, gh[t * HD + k], want, 1.0);
    }

  test_device_free(d_logits);
  test_device_free(d_labels);
  test_device_free(d_hidden);
  test_device_free(d_weight);
  test_device_free(d_g);
  test_device_free(d_e);
  test_device_free(d_grad);
  test_device_free(d_gh);
  stats_free(&s);
  return fails;
}

int main(void) {
  int fails = 0;
  /* The 1.2 fields come after the 1.1 layout: its size is offsetof the first. */
  if (offsetof(geopref_token_logps_args, log_sum_sq_probs) <= GEOPREF_TOKEN_LOGPS_ARGS_SIZE_1_0 ||
      offsetof(geopref_token_grad_args, grad_entropy) <= GEOPREF_TOKEN_GRAD_ARGS_SIZE_1_0)
    fprintf(stderr, "the 1.2 fields are not past the 1.0 layout\n"), ++fails;
  if (!test_device_available()) {
    printf("ABI 1.2 statistics: no device (nor emulator): skipped\n");
    return fails != 0;
  }
  fails += device_checks();
  if (fails != 0) {
    fprintf(stderr, "%d check(s) failed\n", fails);
    return 1;
  }
  printf("ABI 1.2: the per-token statistics and the entropy's upstream through the C ABI\n");
  return 0;
}
