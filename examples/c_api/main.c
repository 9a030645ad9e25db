/* examples/c_api/main.c — the compiled kernels from plain C.
 *
 * One gdpo training step on the GPU through geopref/c_api.h: two pairs with
 * soft labels, float32 logits. The program computes the same loss and one
 * gradient row on the host in double from the formulas (no library code),
 * prints both and fails loudly if they disagree. Exit codes: 0 pass, 1 fail,
 * 77 no usable GPU (after the host-only checks have passed).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "geopref/c_api.h"

enum { N = 10, V = 8, S = 4, P = 2 };

#define CHECK_CUDA(call)                                                        \
  do {                                                                          \
    cudaError_t e_ = (call);                                                    \
    if (e_ != cudaSuccess) {                                                    \
      fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));               \
      return 1;                                                                 \
    }                                                                           \
  } while (0)

static double log_sum_exp(const float* row) {
  double m = row[0], s = 0.0;
  for (int v = 1; v < V; ++v) m = fmax(m, (double)row[v]);
  for (int v = 0; v < V; ++v) s += exp((double)row[v] - m);
  return m + log(s);
}

int main(void) {
  /* Sequences [0,3) [3,5) [5,8) [8,10); pairs (0, 2) and (1, 3), TRL's layout. */
  float logits[N * V];
  int64_t labels[N] = {1, 7, -100, 0, 3, 5, 5, 2, 6, 4};
  int64_t offsets[S + 1] = {0, 3, 5, 8, 10};
  float soft_labels[P] = {0.9f, 0.3f};
  uint32_t x = 12345u;
  for (int i = 0; i < N * V; ++i) { /* a fixed LCG: the same inputs everywhere */
    x = x * 1664525u + 1013904223u;
    logits[i] = (float)((double)(x >> 8) / 16777216.0 * 6.0 - 3.0);
  }

  geopref_options opt;
  geopref_options_init(&opt);
  opt.loss = GEOPREF_LOSS_GDPO;
  opt.beta = 0.5;

  geopref_train_args args;
  geopref_train_args_init(&args);
  args.tokens.logits_dtype = GEOPREF_FLOAT32;
  args.tokens.n_rows = N;
  args.tokens.vocab = V;
  args.tokens.ld = V;
  args.tokens.label_type = GEOPREF_INT64;
  args.tokens.offset_type = GEOPREF_INT64;
  args.tokens.n_seqs = S;
  args.n_pairs = P;

  /* Host-only part: the workspace query needs no GPU, and bad arguments are
   * reported before anything touches a device. */
  size_t bytes = 0;
  geopref_status st = geopref_train_step_workspace_size(&args, &opt, &bytes);
  if (st != GEOPREF_SUCCESS || bytes == 0) {
    fprintf(stderr, "workspace query: %s\n", geopref_status_string(st));
    return 1;
  }
  opt.beta = -1.0;
  if (geopref_train_step_workspace_size(&args, &opt, &bytes) != GEOPREF_INVALID_BETA) {
    fprintf(stderr, "a negative beta was not rejected\n");
    return 1;
  }
  opt.beta = 0.5;
  printf("geopref %d, workspace %zu bytes\n", geopref_version(), bytes);

  /* The per-token primitive has the same protocol, without options: its size
   * query, and a stride below V rejected on the host. */
  geopref_token_logps_args tok;
  geopref_token_logps_args_init(&tok);
  tok.rows.n_rows = N;
  tok.rows.vocab = V;
  tok.rows.ld = V;
  size_t tok_bytes = 0;
  if (geopref_token_logps(NULL, &tok_bytes, &tok, NULL) != GEOPREF_SUCCESS || tok_bytes == 0) {
    fprintf(stderr, "per-token workspace query failed\n");
    return 1;
  }
  tok.rows.ld = V - 1;
  if (geopref_token_logps(NULL, &tok_bytes, &tok, NULL) != GEOPREF_INVALID_STRIDE) {
    fprintf(stderr, "a per-token row stride below V was not rejected\n");
    return 1;
  }

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    printf("no usable CUDA device: skipped\n");
    return 77;
  }

  /* Device buffers. */
  float *d_logits, *d_soft, *d_loss, *d_grad;
  int64_t *d_labels, *d_offsets;
  geopref_metrics* d_stats;
  void* d_workspace;
  CHECK_CUDA(cudaMalloc((void**)&d_logits, sizeof logits));
  CHECK_CUDA(cudaMalloc((void**)&d_labels, sizeof labels));
  CHECK_CUDA(cudaMalloc((void**)&d_offsets, sizeof offsets));
  CHECK_CUDA(cudaMalloc((void**)&d_soft, sizeof soft_labels));
  CHECK_CUDA(cudaMalloc((void**)&d_loss, sizeof(float)));
  CHECK_CUDA(cudaMalloc((void**)&d_stats, sizeof(geopref_metrics)));
  CHECK_CUDA(cudaMalloc((void**)&d_grad, sizeof logits));
  CHECK_CUDA(cudaMalloc(&d_workspace, bytes));
  CHECK_CUDA(cudaMemcpy(d_logits, logits, sizeof logits, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_labels, labels, sizeof labels, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_offsets, offsets, sizeof offsets, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_soft, soft_labels, sizeof soft_labels, cudaMemcpyHostToDevice));

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  args.tokens.logits = d_logits;
  args.tokens.labels = d_labels;
  args.tokens.offsets = d_offsets;
  args.soft_labels = d_soft;
  args.loss = d_loss;
  args.stats = d_stats;
  args.grad_logits = d_grad; /* float32 logits: gradient in float32 */

  st = geopref_train_step(d_workspace, &bytes, &args, &opt, (geopref_stream_t)stream);
  geopref_status recorded = GEOPREF_INTERNAL_ERROR;
  if (st == GEOPREF_SUCCESS) st = geopref_device_status(d_workspace, (geopref_stream_t)stream,
                                                        &recorded);
  if (st != GEOPREF_SUCCESS || recorded != GEOPREF_SUCCESS) {
    fprintf(stderr, "train_step: %s / %s\n", geopref_status_string(st),
            geopref_status_string(recorded));
    return 1;
  }
  float loss = 0.0f, grad[N * V];
  geopref_metrics stats;
  CHECK_CUDA(cudaMemcpy(&loss, d_loss, sizeof loss, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(&stats, d_stats, sizeof stats, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(grad, d_grad, sizeof grad, cudaMemcpyDeviceToHost));

  /* The same step on the host, in double, from docs/math.md:
   * L_s = sum of z[t, y_t] - lse_t over scored rows; h_i = L_{a_i} - L_{b_i};
   * loss = mean_i softplus(-beta (2p_i - 1) h_i);
   * grad[t, v] = g_s (1[v = y_t] - softmax_v) with
   * g_{a_i} = -g_{b_i} = -(beta / P)(2p_i - 1) sigma(-beta (2p_i - 1) h_i). */
  double seq[S] = {0}, g[S] = {0}, expect_loss = 0.0;
  for (int s = 0; s < S; ++s)
    for (int64_t t = offsets[s]; t < offsets[s + 1]; ++t)
      if (labels[t] != -100) seq[s] += logits[t * V + labels[t]] - log_sum_exp(logits + t * V);
  for (int i = 0; i < P; ++i) {
    const double scale = 2.0 * soft_labels[i] - 1.0, z = opt.beta * scale * (seq[i] - seq[P + i]);
    expect_loss += log1p(exp(-z)) / P;
    g[i] = -(opt.beta / P) * scale / (1.0 + exp(z));
    g[P + i] = -g[i];
  }
  double worst_grad = 0.0;
  for (int t = 0; t < N; ++t) {
    int s = 0;
    while (t >= offsets[s + 1]) ++s;
    const double lse = log_sum_exp(logits + t * V);
    for (int v = 0; v < V; ++v) {
      const double e = labels[t] == -100 ? 0.0
                       : g[s] * ((v == labels[t] ? 1.0 : 0.0) - exp(logits[t * V + v] - lse));
      worst_grad = fmax(worst_grad, fabs(grad[t * V + v] - e));
    }
  }
  printf("gdpo loss: GPU %.7f, host %.7f; rewards/accuracies %.2f; max |grad error| %.2e\n",
         (double)loss, expect_loss, stats.rewards_accuracies, worst_grad);

  /* float32 storage of the loss and gradient: a few ulps of O(1) values, with
   * log-sum-exp over V = 8 accumulated in float on the device. */
  const int ok = fabs(loss - expect_loss) <= 1e-5 * (1.0 + fabs(expect_loss)) && worst_grad <= 1e-6;
  cudaStreamDestroy(stream);
  cudaFree(d_logits);
  cudaFree(d_labels);
  cudaFree(d_offsets);
  cudaFree(d_soft);
  cudaFree(d_loss);
  cudaFree(d_stats);
  cudaFree(d_grad);
  cudaFree(d_workspace);
  if (!ok) {
    fprintf(stderr, "FAIL: the GPU result disagrees with the host formula\n");
    return 1;
  }
  return 0;
}
