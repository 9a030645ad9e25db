// tools/geopref_check_cuda.cpp — geopref-check --device cuda: the problem is
// copied to the GPU and run through the C ABI of the compiled kernels
// (geopref/c_api.h), exactly as a stack without nvcc would call it.
//
// Logits go to the device in their own dtype, except float64, which the
// kernels do not take: it is rounded to float32 first. Soft labels, weights and
// reference log-probs are float32 on the device (the API's type). The
// gradient comes back as float32 (grad_float32), so grad_logits.npy is float32.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "check_problem.hpp"
#include "device_buffer.hpp"
#include "geopref/c_api.h"

namespace geopref::tools {

namespace {

using support::device_buffer;

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

bool cuda_fail(std::string* error, const char* what, cudaError_t e) {
  *error = std::string(what) + ": " + cudaGetErrorString(e);
  return false;
}

geopref_options c_options(const check_problem& p) {
  geopref_options opt;
  geopref_options_init(&opt);
  opt.loss = static_cast<int>(p.opt.loss.type);
  opt.beta = p.opt.loss.beta;
  opt.alpha = p.opt.loss.alpha;
  opt.gamma = p.opt.loss.gamma;
  opt.epsilon = p.opt.loss.epsilon;
  opt.tau = p.opt.loss.tau;
  opt.bco_delta = p.opt.loss.bco_delta;
  opt.transform = static_cast<int>(p.opt.loss.transform);
  opt.f_alpha = p.opt.loss.f_alpha;
  opt.geometric = p.opt.loss.geometric ? 1 : 0;
  opt.n_terms = p.opt.loss.n_terms;
  for (int k = 0; k < p.opt.loss.n_terms && k < GEOPREF_MAX_LOSS_TERMS; ++k) {
    opt.terms[k] = static_cast<int>(p.opt.loss.terms[k]);
    opt.term_weights[k] = p.opt.loss.term_weights[k];
  }
  opt.reduction = static_cast<int>(p.opt.reduce);
  opt.normalizer = p.opt.normalizer;
  opt.average_logps = p.opt.average_logps ? 1 : 0;
  opt.ignore_index = p.opt.ignore_index;
  opt.nll_tokens = p.opt.nll_tokens;
  opt.nll_weight = p.opt.nll_weight;
  return opt;
}

}  // namespace

bool run_cuda(const check_problem& p, check_result* r, std::string* error) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    *error = "no usable CUDA device";
    return false;
  }
  const auto N = static_cast<std::size_t>(p.n_rows), S = static_cast<std::size_t>(p.n_seqs),
             P = static_cast<std::size_t>(p.n_pairs);

  int dtype = GEOPREF_FLOAT32;
  device_buffer logits;
  switch (p.logits.dtype) {
    case npy_dtype::float16: logits = device_buffer::upload(p.logits.f16); dtype = GEOPREF_FLOAT16; break;
    case npy_dtype::float32: logits = device_buffer::upload(p.logits.f32); break;
    default: logits = device_buffer::upload(to_float(p.logits.f64)); break;
  }
  const device_buffer labels = p.labels.dtype == npy_dtype::int32 ? device_buffer::upload(p.labels.i32)
                                                                  : device_buffer::upload(p.labels.i64);
  const device_buffer offsets = device_buffer::upload(p.offsets), pairs = device_buffer::upload(p.pairs),
                      soft = device_buffer::upload(to_float(p.soft_labels)),
                      ref = device_buffer::upload(to_float(p.ref_logps)),
                      weights = device_buffer::upload(to_float(p.weights)),
                      token_weights = device_buffer::upload(to_float(p.token_weights));
  const bool per_pair = p.opt.reduce == reduction::none;
  const device_buffer loss((per_pair ? P : 1) * sizeof(float)), stats(sizeof(geopref_metrics)),
      seq_logps(S * sizeof(float)), grad(N * static_cast<std::size_t>(p.vocab) * sizeof(float));
  cudaError_t e = cudaSuccess;
  const std::initializer_list<const device_buffer*> all = {
      &logits, &labels, &offsets, &pairs, &soft, &ref, &weights, &token_weights, &loss, &stats,
      &seq_logps, &grad};
  for (const device_buffer* b : all)
    if (e == cudaSuccess) e = b->error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  const geopref_options opt = c_options(p);

  geopref_train_args a;
  geopref_train_args_init(&a);
  a.tokens.logits = logits.get<void>();
  a.tokens.logits_dtype = dtype;
  a.tokens.n_rows = p.n_rows;
  a.tokens.vocab = p.vocab;
  a.tokens.ld = p.vocab;
  a.tokens.labels = labels.get<void>();
  a.tokens.label_type = p.labels.dtype == npy_dtype::int32 ? GEOPREF_INT32 : GEOPREF_INT64;
  a.tokens.offsets = offsets.get<void>();
  a.tokens.offset_type = GEOPREF_INT64;
  a.tokens.n_seqs = p.n_seqs;
  a.tokens.token_weights = p.token_weights.empty() ? nullptr : token_weights.get<float>();
  a.n_pairs = p.n_pairs;
  a.pairs = p.pairs.empty() ? nullptr : pairs.get<int64_t>();
  a.soft_labels = p.soft_labels.empty() ? nullptr : soft.get<float>();
  a.ref_logps = p.ref_logps.empty() ? nullptr : ref.get<float>();
  a.weights = p.weights.empty() ? nullptr : weights.get<float>();
  a.loss = loss.get<float>();
  a.stats = stats.get<geopref_metrics>();
  a.seq_logps = seq_logps.get<float>();
  a.grad_logits = grad.get<void>();
  a.grad_float32 = 1;

  geopref_status st = GEOPREF_SUCCESS;
  // One call through `entry`: size query, workspace, call, device status.
  auto run_entry = [&](auto entry, const auto* args) {
    size_t bytes = 0;
    if (st == GEOPREF_SUCCESS) st = entry(nullptr, &bytes, args, &opt, nullptr);
    device_buffer workspace(st == GEOPREF_SUCCESS ? bytes : 0);
    if (!workspace.ok()) {
      e = workspace.error();
      return;
    }
    if (st == GEOPREF_SUCCESS) st = entry(workspace.get<void>(), &bytes, args, &opt, nullptr);
    geopref_status recorded = GEOPREF_SUCCESS;
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
    if (st == GEOPREF_SUCCESS) st = recorded;
  };
  if (p.vocab_shards == 0) {
    run_entry(geopref_train_step, &a);
  } else {
    // K simulated ranks: each one's records into its slot, then each one's
    // step over its slice (every rank writes the same combined outputs, and
    // its own columns of the gradient).
    const int k = p.vocab_shards;
    const int elem = dtype == GEOPREF_FLOAT32 ? 4 : 2;
    const device_buffer records(N * static_cast<std::size_t>(k) * sizeof(geopref_vocab_record));
    if (!records.ok()) return cuda_fail(error, "allocating the records", records.error());
    auto slice_of = [&](int rank, int64_t* width) {
      geopref_vocab_slice sl;
      sl.begin = shard_begin(p.vocab, rank, k);
      sl.total = p.vocab;
      sl.rank = rank;
      sl.n_ranks = k;
      *width = (rank == k - 1 ? p.vocab : shard_begin(p.vocab, rank + 1, k)) - sl.begin;
      return sl;
    };
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_stats_args sa;
      int64_t width = 0;
      sa.slice = slice_of(q, &width);
      sa.tokens = a.tokens;
      sa.tokens.logits = static_cast<const char*>(a.tokens.logits) + sa.slice.begin * elem;
      sa.tokens.vocab = width;
      sa.records = records.get<geopref_vocab_record>() + static_cast<int64_t>(q) * p.n_rows;
      run_entry(geopref_vocab_parallel_stats, &sa);
    }
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_train_args ta;
      int64_t width = 0;
      ta.slice = slice_of(q, &width);
      ta.train = a;
      ta.train.tokens.logits = static_cast<const char*>(a.tokens.logits) + ta.slice.begin * elem;
      ta.train.tokens.vocab = width;
      ta.train.grad_logits = grad.get<float>() + ta.slice.begin;
      ta.train.grad_ld = p.vocab;
      ta.records = records.get<geopref_vocab_record>();
      run_entry(geopref_vocab_parallel_train_step, &ta);
    }
  }
  if (e != cudaSuccess) return cuda_fail(error, "allocating the workspace", e);
  if (st != GEOPREF_SUCCESS) {
    *error = std::string("geopref: ") + geopref_status_string(st);
    return false;
  }

  std::vector<float> loss_h(per_pair ? P : 1), seq_h(S);
  geopref_metrics m{};
  r->grad32.assign(N * static_cast<std::size_t>(p.vocab), 0.0f);
  e = cudaMemcpy(loss_h.data(), loss.get<void>(), loss_h.size() * sizeof(float),
                             cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && S > 0)
    e = cudaMemcpy(seq_h.data(), seq_logps.get<void>(), S * sizeof(float), cudaMemcpyDeviceToHost);
  if (e == cudaSuccess)
    e = cudaMemcpy(&m, stats.get<void>(), sizeof m, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !r->grad32.empty())
    e = cudaMemcpy(r->grad32.data(), grad.get<void>(), r->grad32.size() * sizeof(float),
                   cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);

  r->seq_logps.assign(seq_h.begin(), seq_h.end());
  if (per_pair) {
    r->pair_losses.assign(loss_h.begin(), loss_h.end());
    r->loss = 0;
    for (float v : loss_h) r->loss += v;  // the CPU path's loss for none: Σ w_i f_i
  } else {
    r->loss = loss_h[0];
  }
  r->stats.rewards_chosen = m.rewards_chosen;
  r->stats.rewards_rejected = m.rewards_rejected;
  r->stats.rewards_accuracies = m.rewards_accuracies;
  r->stats.rewards_margins = m.rewards_margins;
  r->stats.logps_chosen = m.logps_chosen;
  r->stats.logps_rejected = m.logps_rejected;
  r->stats.calibration_error = m.calibration_error;
  return true;
}

/// --per-token with --hidden / --weight: geopref_linear_token_logps (and,
/// with --token-grad, geopref_linear_token_logps_grad) with a 256 MiB chunk
/// budget; H, W, b as run_cuda_linear uploads them, grad_weight and
/// grad_bias back as float32, grad_hidden in the input dtype.
static bool run_cuda_tokens_linear(const check_problem& p, check_result* r, std::string* error) {
  const auto N = static_cast<std::size_t>(p.n_rows), V = static_cast<std::size_t>(p.vocab),
             Hd = static_cast<std::size_t>(p.hidden_size);
  const bool half = p.hidden.dtype == npy_dtype::float16, has_bias = p.bias.ndim() == 1;
  const bool grad = !p.token_grad.empty();
  auto up = [&](const npy_array& a) {
    if (a.dtype == npy_dtype::float16) return device_buffer::upload(a.f16);
    if (a.dtype == npy_dtype::float32) return device_buffer::upload(a.f32);
    return device_buffer::upload(to_float(a.f64));
  };
  const device_buffer H = up(p.hidden), W = up(p.weight), B = has_bias ? up(p.bias) : device_buffer();
  const device_buffer labels = p.labels.dtype == npy_dtype::int32 ? device_buffer::upload(p.labels.i32)
                                                                  : device_buffer::upload(p.labels.i64);
  const device_buffer g = device_buffer::upload(to_float(p.token_grad));
  const device_buffer logps(N * 4), lse(N * 4), ent(N * 4), gh(grad ? N * Hd * (half ? 2 : 4) : 0),
      gw(grad ? V * Hd * 4 : 0), gb(grad && has_bias ? V * 4 : 0);
  cudaError_t e = cudaSuccess;
  for (const device_buffer* b : {&H, &W, &B, &labels, &g, &logps, &lse, &ent, &gh, &gw, &gb})
    if (e == cudaSuccess) e = b->error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  geopref_linear_token_logps_args fa;
  geopref_linear_token_logps_args_init(&fa);
  geopref_linear_token_rows& rows = fa.rows;
  rows.hidden = H.get<void>();
  rows.weight = W.get<void>();
  rows.bias = has_bias ? B.get<void>() : nullptr;
  rows.dtype = half ? GEOPREF_FLOAT16 : GEOPREF_FLOAT32;
  rows.n_rows = p.n_rows;
  rows.hidden_size = p.hidden_size;
  rows.vocab = p.vocab;
  rows.labels = labels.get<void>();
  rows.label_type = p.labels.dtype == npy_dtype::int32 ? GEOPREF_INT32 : GEOPREF_INT64;
  rows.ignore_index = p.opt.ignore_index;
  rows.chunk_bytes = std::size_t{256} << 20;
  fa.token_logps = logps.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = ent.get<float>();
  geopref_linear_token_grad_args ba;
  geopref_linear_token_grad_args_init(&ba);
  ba.rows = rows;
  ba.lse = lse.get<float>();
  ba.grad_token_logps = g.get<float>();
  ba.grad_hidden = gh.get<void>();
  ba.grad_weight = gw.get<void>();
  ba.grad_weight_float32 = 1;
  ba.grad_bias = has_bias ? gb.get<float>() : nullptr;

  size_t fwd_bytes = 0, bwd_bytes = 0;
  geopref_status st = geopref_linear_token_logps(nullptr, &fwd_bytes, &fa, nullptr);
  if (st == GEOPREF_SUCCESS && grad) st = geopref_linear_token_logps_grad(nullptr, &bwd_bytes, &ba, nullptr);
  device_buffer workspace(st == GEOPREF_SUCCESS ? (fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes) : 0);
  if (!workspace.ok()) return cuda_fail(error, "allocating the workspace", workspace.error());
  geopref_status recorded = GEOPREF_SUCCESS;
  if (st == GEOPREF_SUCCESS) st = geopref_linear_token_logps(workspace.get<void>(), &fwd_bytes, &fa, nullptr);
  if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
  if (st == GEOPREF_SUCCESS) st = recorded;
  if (st == GEOPREF_SUCCESS && grad) {
    st = geopref_linear_token_logps_grad(workspace.get<void>(), &bwd_bytes, &ba, nullptr);
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
    if (st == GEOPREF_SUCCESS) st = recorded;
  }
  if (st != GEOPREF_SUCCESS) {
    *error = std::string("geopref: ") + geopref_status_string(st);
    return false;
  }
  std::vector<float> logps_h(N), ent_h(N), gw_h(grad ? V * Hd : 0), gb_h(grad && has_bias ? V : 0),
      gh_f(grad && !half ? N * Hd : 0);
  std::vector<uint16_t> gh_h(grad && half ? N * Hd : 0);
  if (N > 0) e = cudaMemcpy(logps_h.data(), logps.get<void>(), N * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && N > 0) e = cudaMemcpy(ent_h.data(), ent.get<void>(), N * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gw_h.empty()) e = cudaMemcpy(gw_h.data(), gw.get<void>(), gw_h.size() * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gb_h.empty()) e = cudaMemcpy(gb_h.data(), gb.get<void>(), gb_h.size() * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gh_h.empty()) e = cudaMemcpy(gh_h.data(), gh.get<void>(), gh_h.size() * 2, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gh_f.empty()) e = cudaMemcpy(gh_f.data(), gh.get<void>(), gh_f.size() * 4, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  r->token_logps.assign(logps_h.begin(), logps_h.end());
  r->entropy.assign(ent_h.begin(), ent_h.end());
  if (grad) {
    r->grad_weight.assign(gw_h.begin(), gw_h.end());
    r->grad_bias.assign(gb_h.begin(), gb_h.end());
    if (half)
      for (uint16_t b : gh_h) r->grad_hidden.push_back(half_bits_to_float(b));
    else
      r->grad_hidden.assign(gh_f.begin(), gh_f.end());
  }
  return true;
}

bool run_cuda_tokens(const check_problem& p, check_result* r, std::string* error) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    *error = "no usable CUDA device";
    return false;
  }
  if (p.linear) return run_cuda_tokens_linear(p, r, error);
  const auto N = static_cast<std::size_t>(p.n_rows);
  int dtype = GEOPREF_FLOAT32;
  device_buffer logits;
  switch (p.logits.dtype) {
    case npy_dtype::float16: logits = device_buffer::upload(p.logits.f16); dtype = GEOPREF_FLOAT16; break;
    case npy_dtype::float32: logits = device_buffer::upload(p.logits.f32); break;
    default: logits = device_buffer::upload(to_float(p.logits.f64)); break;
  }
  const device_buffer labels = p.labels.dtype == npy_dtype::int32 ? device_buffer::upload(p.labels.i32)
                                                                  : device_buffer::upload(p.labels.i64);
  const device_buffer g = device_buffer::upload(to_float(p.token_grad));
  const device_buffer logps(N * sizeof(float)), lse(N * sizeof(float)), ent(N * sizeof(float)),
      grad(p.token_grad.empty() ? 0 : N * static_cast<std::size_t>(p.vocab) * sizeof(float));
  cudaError_t e = cudaSuccess;
  for (const device_buffer* b : std::initializer_list<const device_buffer*>{
           &logits, &labels, &g, &logps, &lse, &ent, &grad})
    if (e == cudaSuccess) e = b->error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  geopref_token_rows rows;
  rows.logits = logits.get<void>();
  rows.logits_dtype = dtype;
  rows.n_rows = p.n_rows;
  rows.vocab = p.vocab;
  rows.ld = p.vocab;
  rows.labels = labels.get<void>();
  rows.label_type = p.labels.dtype == npy_dtype::int32 ? GEOPREF_INT32 : GEOPREF_INT64;
  rows.ignore_index = p.opt.ignore_index;
  geopref_token_logps_args fa;
  geopref_token_logps_args_init(&fa);
  fa.rows = rows;
  fa.token_logps = logps.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = ent.get<float>();
  geopref_token_grad_args ba;
  geopref_token_grad_args_init(&ba);
  ba.rows = rows;
  ba.lse = lse.get<float>();
  ba.grad_token_logps = g.get<float>();
  ba.grad_logits = grad.get<void>();
  ba.grad_float32 = 1;

  // One workspace for both calls: the larger of the two sizes.
  size_t fwd_bytes = 0, bwd_bytes = 0;
  geopref_status st = geopref_token_logps(nullptr, &fwd_bytes, &fa, nullptr);
  if (st == GEOPREF_SUCCESS && !p.token_grad.empty())
    st = geopref_token_logps_grad(nullptr, &bwd_bytes, &ba, nullptr);
  device_buffer workspace(st == GEOPREF_SUCCESS ? (fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes) : 0);
  if (!workspace.ok()) return cuda_fail(error, "allocating the workspace", workspace.error());
  geopref_status recorded = GEOPREF_SUCCESS;
  if (st == GEOPREF_SUCCESS) st = geopref_token_logps(workspace.get<void>(), &fwd_bytes, &fa, nullptr);
  if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
  if (st == GEOPREF_SUCCESS) st = recorded;
  if (st == GEOPREF_SUCCESS && !p.token_grad.empty()) {
    st = geopref_token_logps_grad(workspace.get<void>(), &bwd_bytes, &ba, nullptr);
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
    if (st == GEOPREF_SUCCESS) st = recorded;
  }
  if (st != GEOPREF_SUCCESS) {
    *error = std::string("geopref: ") + geopref_status_string(st);
    return false;
  }
  std::vector<float> logps_h(N), ent_h(N);
  r->grad32.assign(p.token_grad.empty() ? 0 : N * static_cast<std::size_t>(p.vocab), 0.0f);
  if (N > 0) e = cudaMemcpy(logps_h.data(), logps.get<void>(), N * sizeof(float), cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && N > 0)
    e = cudaMemcpy(ent_h.data(), ent.get<void>(), N * sizeof(float), cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !r->grad32.empty())
    e = cudaMemcpy(r->grad32.data(), grad.get<void>(), r->grad32.size() * sizeof(float),
                   cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  r->token_logps.assign(logps_h.begin(), logps_h.end());
  r->entropy.assign(ent_h.begin(), ent_h.end());
  return true;
}

}  // namespace geopref::tools

namespace geopref::tools {

/// --hidden / --weight: geopref_fused_linear_step with a 256 MiB chunk
/// budget. H, W and b go to the device in their dtype (float64 rounded to
/// float32); grad_weight and grad_bias come back as float32, grad_hidden in
/// the input dtype (widened exactly).
bool run_cuda_linear(const check_problem& p, check_result* r, std::string* error) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    *error = "no usable CUDA device";
    return false;
  }
  const auto N = static_cast<std::size_t>(p.n_rows), S = static_cast<std::size_t>(p.n_seqs),
             P = static_cast<std::size_t>(p.n_pairs), V = static_cast<std::size_t>(p.vocab),
             Hd = static_cast<std::size_t>(p.hidden_size);
  const bool half = p.hidden.dtype == npy_dtype::float16, has_bias = p.bias.ndim() == 1;
  auto up = [&](const npy_array& a) {
    if (a.dtype == npy_dtype::float16) return device_buffer::upload(a.f16);
    if (a.dtype == npy_dtype::float32) return device_buffer::upload(a.f32);
    return device_buffer::upload(to_float(a.f64));
  };
  const device_buffer H = up(p.hidden), W = up(p.weight), B = has_bias ? up(p.bias) : device_buffer();
  const device_buffer labels = p.labels.dtype == npy_dtype::int32 ? device_buffer::upload(p.labels.i32)
                                                                  : device_buffer::upload(p.labels.i64);
  const device_buffer offsets = device_buffer::upload(p.offsets), pairs = device_buffer::upload(p.pairs),
                      soft = device_buffer::upload(to_float(p.soft_labels)),
                      ref = device_buffer::upload(to_float(p.ref_logps)),
                      weights = device_buffer::upload(to_float(p.weights)),
                      token_weights = device_buffer::upload(to_float(p.token_weights));
  const bool per_pair = p.opt.reduce == reduction::none;
  const device_buffer loss((per_pair ? P : 1) * sizeof(float)), stats(sizeof(geopref_metrics)),
      seq_logps(S * sizeof(float)), gh(N * Hd * (half ? 2 : 4)), gw(V * Hd * 4), gb(V * 4);
  cudaError_t e = cudaSuccess;
  for (const device_buffer* b : {&H, &W, &B, &labels, &offsets, &pairs, &soft, &ref, &weights,
                                 &token_weights, &loss, &stats, &seq_logps, &gh, &gw, &gb})
    if (e == cudaSuccess) e = b->error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  const geopref_options opt = c_options(p);
  geopref_linear_train_args a;
  geopref_linear_train_args_init(&a);
  a.in.hidden = H.get<void>();
  a.in.weight = W.get<void>();
  a.in.bias = has_bias ? B.get<void>() : nullptr;
  a.in.dtype = half ? GEOPREF_FLOAT16 : GEOPREF_FLOAT32;
  a.in.n_rows = p.n_rows;
  a.in.hidden_size = p.hidden_size;
  a.in.vocab = p.vocab;
  a.in.labels = labels.get<void>();
  a.in.label_type = p.labels.dtype == npy_dtype::int32 ? GEOPREF_INT32 : GEOPREF_INT64;
  a.in.offsets = offsets.get<void>();
  a.in.offset_type = GEOPREF_INT64;
  a.in.n_seqs = p.n_seqs;
  a.in.token_weights = p.token_weights.empty() ? nullptr : token_weights.get<float>();
  a.in.chunk_bytes = std::size_t{256} << 20;
  a.n_pairs = p.n_pairs;
  a.pairs = p.pairs.empty() ? nullptr : pairs.get<int64_t>();
  a.soft_labels = p.soft_labels.empty() ? nullptr : soft.get<float>();
  a.ref_logps = p.ref_logps.empty() ? nullptr : ref.get<float>();
  a.weights = p.weights.empty() ? nullptr : weights.get<float>();
  a.loss = loss.get<float>();
  a.stats = stats.get<geopref_metrics>();
  a.seq_logps = seq_logps.get<float>();
  a.grad_hidden = gh.get<void>();
  a.grad_weight = gw.get<void>();
  a.grad_weight_float32 = 1;
  a.grad_bias = has_bias ? gb.get<float>() : nullptr;
  // The offsets and pairs are on the host already: their host copies let the
  // step take its one-pass path when it applies (fused_linear.cuh).
  a.host_offsets = p.offsets.data();
  a.host_pairs = p.pairs.empty() ? nullptr : p.pairs.data();

  geopref_status st = GEOPREF_SUCCESS;
  // One entry: size query, a workspace of that size, the call, the device status.
  auto run_entry = [&](auto entry, const auto* args) {
    if (st != GEOPREF_SUCCESS || e != cudaSuccess) return;
    size_t bytes = 0;
    st = entry(nullptr, &bytes, args, &opt, nullptr);
    device_buffer workspace(st == GEOPREF_SUCCESS ? bytes : 0);
    if (!workspace.ok()) {
      e = workspace.error();
      return;
    }
    if (st == GEOPREF_SUCCESS) st = entry(workspace.get<void>(), &bytes, args, &opt, nullptr);
    geopref_status recorded = GEOPREF_SUCCESS;
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
    if (st == GEOPREF_SUCCESS) st = recorded;
  };
  std::vector<double> gh_sum;  // --vocab-shards: Σ_r of the ranks' grad_hidden partials
  if (p.vocab_shards == 0) {
    run_entry(geopref_fused_linear_step, &a);
  } else {
    // K simulated ranks holding rows [begin, begin + width) of W and b: each
    // one's records into its slot, then each one's step, writing its rows of
    // grad_weight / grad_bias in place and its grad_hidden partial, summed
    // here in rank order (a real caller's all-reduce).
    const int k = p.vocab_shards;
    const std::size_t elem = half ? 2 : 4;
    const device_buffer records(N * static_cast<std::size_t>(k) * sizeof(geopref_vocab_record)),
        part(N * Hd * elem);
    if (!records.ok()) return cuda_fail(error, "allocating the records", records.error());
    if (!part.ok()) return cuda_fail(error, "allocating grad_hidden", part.error());
    gh_sum.assign(N * Hd, 0.0);
    auto slice_of = [&](int rank, geopref_linear_inputs* in) {
      geopref_vocab_slice sl;
      sl.begin = shard_begin(p.vocab, rank, k);
      sl.total = p.vocab;
      sl.rank = rank;
      sl.n_ranks = k;
      in->vocab = (rank == k - 1 ? p.vocab : shard_begin(p.vocab, rank + 1, k)) - sl.begin;
      in->weight = static_cast<const char*>(W.get<void>()) + static_cast<std::size_t>(sl.begin) * Hd * elem;
      in->bias = has_bias ? static_cast<const char*>(B.get<void>()) + static_cast<std::size_t>(sl.begin) * elem
                          : nullptr;
      return sl;
    };
    for (int q = 0; q < k; ++q) {
      geopref_vocab_linear_stats_args sa;
      sa.in = a.in;
      sa.slice = slice_of(q, &sa.in);
      sa.records = records.get<geopref_vocab_record>() + static_cast<int64_t>(q) * p.n_rows;
      run_entry(geopref_vocab_linear_stats, &sa);
    }
    std::vector<float> part_f(half ? 0 : N * Hd);
    std::vector<uint16_t> part_h(half ? N * Hd : 0);
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_linear_train_args ta;
      ta.train = a;
      ta.slice = slice_of(q, &ta.train.in);
      ta.train.grad_weight = gw.get<float>() + static_cast<std::size_t>(ta.slice.begin) * Hd;
      ta.train.grad_bias = has_bias ? gb.get<float>() + ta.slice.begin : nullptr;
      ta.train.grad_hidden = part.get<void>();
      ta.records = records.get<geopref_vocab_record>();
      run_entry(geopref_vocab_linear_step, &ta);
      if (st != GEOPREF_SUCCESS || e != cudaSuccess || N * Hd == 0) continue;
      if (half) {
        e = cudaMemcpy(part_h.data(), part.get<void>(), part_h.size() * 2, cudaMemcpyDeviceToHost);
        for (std::size_t i = 0; e == cudaSuccess && i < part_h.size(); ++i) gh_sum[i] += half_bits_to_float(part_h[i]);
      } else {
        e = cudaMemcpy(part_f.data(), part.get<void>(), part_f.size() * 4, cudaMemcpyDeviceToHost);
        for (std::size_t i = 0; e == cudaSuccess && i < part_f.size(); ++i) gh_sum[i] += part_f[i];
      }
    }
  }
  if (e != cudaSuccess) return cuda_fail(error, "running the step", e);
  if (st != GEOPREF_SUCCESS) {
    *error = std::string("geopref: ") + geopref_status_string(st);
    return false;
  }
  std::vector<float> loss_h(per_pair ? P : 1), seq_h(S), gw_h(V * Hd), gb_h(has_bias ? V : 0),
      gh_f(half ? 0 : N * Hd);
  std::vector<uint16_t> gh_h(half ? N * Hd : 0);
  geopref_metrics m{};
  e = cudaMemcpy(loss_h.data(), loss.get<void>(), loss_h.size() * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && S > 0) e = cudaMemcpy(seq_h.data(), seq_logps.get<void>(), S * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess) e = cudaMemcpy(&m, stats.get<void>(), sizeof m, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gw_h.empty()) e = cudaMemcpy(gw_h.data(), gw.get<void>(), gw_h.size() * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gb_h.empty()) e = cudaMemcpy(gb_h.data(), gb.get<void>(), gb_h.size() * 4, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gh_h.empty()) e = cudaMemcpy(gh_h.data(), gh.get<void>(), gh_h.size() * 2, cudaMemcpyDeviceToHost);
  if (e == cudaSuccess && !gh_f.empty()) e = cudaMemcpy(gh_f.data(), gh.get<void>(), gh_f.size() * 4, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  r->seq_logps.assign(seq_h.begin(), seq_h.end());
  if (per_pair) {
    r->pair_losses.assign(loss_h.begin(), loss_h.end());
    r->loss = 0;
    for (float v : loss_h) r->loss += v;
  } else {
    r->loss = loss_h[0];
  }
  r->grad_weight.assign(gw_h.begin(), gw_h.end());
  r->grad_bias.assign(gb_h.begin(), gb_h.end());
  if (half)
    for (uint16_t b : gh_h) r->grad_hidden.push_back(half_bits_to_float(b));
  else
    r->grad_hidden.assign(gh_f.begin(), gh_f.end());
  if (p.vocab_shards > 0) r->grad_hidden = gh_sum;
  r->stats.rewards_chosen = m.rewards_chosen;
  r->stats.rewards_rejected = m.rewards_rejected;
  r->stats.rewards_accuracies = m.rewards_accuracies;
  r->stats.rewards_margins = m.rewards_margins;
  r->stats.logps_chosen = m.logps_chosen;
  r->stats.logps_rejected = m.logps_rejected;
  r->stats.calibration_error = m.calibration_error;
  return true;
}

}  // namespace geopref::tools
