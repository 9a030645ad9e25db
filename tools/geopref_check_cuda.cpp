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


/// --logit-scale / --softcap / --temperature as the C ABI's struct, one
/// assignment per field of GEOPREF_LOGIT_TRANSFORM_FIELDS.
geopref_logit_transform c_transform(const check_problem& p) {
  geopref_logit_transform t;
#define GEOPREF_X(type, name, def, flag, doc) t.name = p.transform.name;
  GEOPREF_LOGIT_TRANSFORM_FIELDS(GEOPREF_X)
#undef GEOPREF_X
  return t;
}

bool no_device(std::string* error) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) return false;
  *error = "no usable CUDA device";
  return true;
}

bool status_fail(std::string* error, geopref_status st) {
  *error = std::string("geopref: ") + geopref_status_string(st);
  return false;
}

/// The first error among the buffers' allocations and copies.
cudaError_t first_error(std::initializer_list<const device_buffer*> buffers) {
  cudaError_t e = cudaSuccess;
  for (const device_buffer* b : buffers)
    if (e == cudaSuccess) e = b->error();
  return e;
}

/// A real array on the device in its own dtype, except float64, which the
/// kernels do not take: rounded to float32 first.
device_buffer upload_real(const npy_array& a) {
  if (a.dtype == npy_dtype::float16) return device_buffer::upload(a.f16);
  if (a.dtype == npy_dtype::float32) return device_buffer::upload(a.f32);
  return device_buffer::upload(to_float(a.f64));
}
int c_dtype(const npy_array& a) {
  return a.dtype == npy_dtype::float16 ? GEOPREF_FLOAT16 : GEOPREF_FLOAT32;
}

device_buffer upload_labels(const npy_array& labels) {
  return labels.dtype == npy_dtype::int32 ? device_buffer::upload(labels.i32)
                                          : device_buffer::upload(labels.i64);
}
int c_label_type(const npy_array& labels) {
  return labels.dtype == npy_dtype::int32 ? GEOPREF_INT32 : GEOPREF_INT64;
}

/// *v = the first v->size() elements of b, unless e is already an error or v
/// is empty; the copy's error.
template <class T>
cudaError_t fetch(cudaError_t e, std::vector<T>* v, const device_buffer& b) {
  if (e != cudaSuccess || v->empty()) return e;
  return cudaMemcpy(v->data(), b.get<void>(), v->size() * sizeof(T), cudaMemcpyDeviceToHost);
}

/// Rank `rank`'s slice of the --vocab-shards ranks, and its width.
geopref_vocab_slice shard_slice(const check_problem& p, int rank, int64_t* width) {
  const int k = p.vocab_shards;
  geopref_vocab_slice sl;
  sl.begin = shard_begin(p.vocab, rank, k);
  sl.total = p.vocab;
  sl.rank = rank;
  sl.n_ranks = k;
  *width = (rank == k - 1 ? p.vocab : shard_begin(p.vocab, rank + 1, k)) - sl.begin;
  return sl;
}

/// The pair problem's inputs and outputs on the device, shared by run_cuda
/// and run_cuda_linear: the sequences, the pairs and their optional arrays
/// (float32, the API's type), the loss, the metrics and the sequence log-probs.
struct pair_buffers {
  device_buffer labels, offsets, pairs, soft, ref, weights, token_weights, loss, stats, seq_logps;
  bool per_pair;

  explicit pair_buffers(const check_problem& p)
      : labels(upload_labels(p.labels)),
        offsets(device_buffer::upload(p.offsets)),
        pairs(device_buffer::upload(p.pairs)),
        soft(device_buffer::upload(to_float(p.soft_labels))),
        ref(device_buffer::upload(to_float(p.ref_logps))),
        weights(device_buffer::upload(to_float(p.weights))),
        token_weights(device_buffer::upload(to_float(p.token_weights))),
        loss(((p.opt.reduce == reduction::none) ? static_cast<std::size_t>(p.n_pairs) : 1) *
             sizeof(float)),
        stats(sizeof(geopref_metrics)),
        seq_logps(static_cast<std::size_t>(p.n_seqs) * sizeof(float)),
        per_pair(p.opt.reduce == reduction::none) {}

  cudaError_t error() const {
    return first_error({&labels, &offsets, &pairs, &soft, &ref, &weights, &token_weights, &loss,
                        &stats, &seq_logps});
  }

  /// The sequence fields of geopref_tokens / geopref_linear_inputs.
  template <class Tokens>
  void set_sequences(const check_problem& p, Tokens* t) const {
    t->labels = labels.get<void>();
    t->label_type = c_label_type(p.labels);
    t->offsets = offsets.get<void>();
    t->offset_type = GEOPREF_INT64;
    t->n_seqs = p.n_seqs;
    t->token_weights = p.token_weights.empty() ? nullptr : token_weights.get<float>();
  }

  /// The pair fields of geopref_train_args / geopref_linear_train_args.
  template <class Args>
  void set_pairs(const check_problem& p, Args* a) const {
    a->n_pairs = p.n_pairs;
    a->pairs = p.pairs.empty() ? nullptr : pairs.get<int64_t>();
    a->soft_labels = p.soft_labels.empty() ? nullptr : soft.get<float>();
    a->ref_logps = p.ref_logps.empty() ? nullptr : ref.get<float>();
    a->weights = p.weights.empty() ? nullptr : weights.get<float>();
    a->loss = loss.get<float>();
    a->stats = stats.get<geopref_metrics>();
    a->seq_logps = seq_logps.get<float>();
  }

  /// The loss, the per-pair losses, the sequence log-probs and the metrics
  /// back into r.
  cudaError_t take_results(const check_problem& p, check_result* r) const {
    std::vector<float> loss_h(per_pair ? static_cast<std::size_t>(p.n_pairs) : 1),
        seq_h(static_cast<std::size_t>(p.n_seqs));
    geopref_metrics m{};
    cudaError_t e = fetch(cudaSuccess, &loss_h, loss);
    e = fetch(e, &seq_h, seq_logps);
    if (e == cudaSuccess) e = cudaMemcpy(&m, stats.get<void>(), sizeof m, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return e;
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
    return cudaSuccess;
  }
};

/// The per-token primitive's buffers, shared by both of its paths: the
/// upstream gradients G (and E) and the forward's outputs.
struct token_buffers {
  device_buffer g, e, logps, lse, ent, lssp, mean, top1;

  explicit token_buffers(const check_problem& p)
      : g(device_buffer::upload(to_float(p.token_grad))),
        e(device_buffer::upload(to_float(p.entropy_grad))),
        logps(rows_of(p, sizeof(float))), lse(rows_of(p, sizeof(float))),
        ent(rows_of(p, sizeof(float))), lssp(rows_of(p, sizeof(float))),
        mean(rows_of(p, sizeof(float))), top1(rows_of(p, 1)) {}

  static std::size_t rows_of(const check_problem& p, std::size_t elem) {
    return static_cast<std::size_t>(p.n_rows) * elem;
  }

  cudaError_t error() const {
    return first_error({&g, &e, &logps, &lse, &ent, &lssp, &mean, &top1});
  }

  /// The forward's outputs and the backward's inputs of the two argument
  /// structs (ABI 1.2: the statistics, and E with the forward's entropy).
  template <class Fwd, class Bwd>
  void set(const check_problem& p, Fwd* fa, Bwd* ba) const {
    fa->token_logps = logps.get<float>();
    fa->lse = lse.get<float>();
    fa->entropy = ent.get<float>();
    fa->log_sum_sq_probs = lssp.get<float>();
    fa->mean_logits = mean.get<float>();
    fa->is_top1 = top1.get<uint8_t>();
    ba->lse = lse.get<float>();
    ba->grad_token_logps = g.get<float>();
    if (!p.entropy_grad.empty()) {
      ba->grad_entropy = e.get<float>();
      ba->entropy = ent.get<float>();
    }
  }

  /// token_logps, entropy and the statistics back into r.
  cudaError_t take_results(cudaError_t err, const check_problem& p, check_result* r) const {
    const auto n = static_cast<std::size_t>(p.n_rows);
    std::vector<float> logps_h(n), ent_h(n), lssp_h(n), mean_h(n);
    std::vector<uint8_t> top1_h(n);
    err = fetch(err, &logps_h, logps);
    err = fetch(err, &ent_h, ent);
    err = fetch(err, &lssp_h, lssp);
    err = fetch(err, &mean_h, mean);
    err = fetch(err, &top1_h, top1);
    if (err != cudaSuccess) return err;
    r->token_logps.assign(logps_h.begin(), logps_h.end());
    r->entropy.assign(ent_h.begin(), ent_h.end());
    r->log_sum_sq_probs.assign(lssp_h.begin(), lssp_h.end());
    r->mean_logits.assign(mean_h.begin(), mean_h.end());
    r->is_top1.assign(top1_h.begin(), top1_h.end());
    return cudaSuccess;
  }
};

/// One entry that takes options, unless *st or *e already holds an error:
/// size query, a workspace of that size, the call, the device status.
template <class Entry, class Args>
void run_entry(Entry entry, const Args* args, const geopref_options& opt, geopref_status* st,
               cudaError_t* e) {
  if (*st != GEOPREF_SUCCESS || *e != cudaSuccess) return;
  size_t bytes = 0;
  *st = entry(nullptr, &bytes, args, &opt, nullptr);
  device_buffer workspace(*st == GEOPREF_SUCCESS ? bytes : 0);
  if (!workspace.ok()) {
    *e = workspace.error();
    return;
  }
  if (*st == GEOPREF_SUCCESS) *st = entry(workspace.get<void>(), &bytes, args, &opt, nullptr);
  geopref_status recorded = GEOPREF_SUCCESS;
  if (*st == GEOPREF_SUCCESS) *st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
  if (*st == GEOPREF_SUCCESS) *st = recorded;
}

/// A per-token forward (fwd, fa) and, with `grad`, its backward (bwd, ba),
/// in one workspace of the larger of the two sizes, each followed by the
/// device status. False with *error set on any failure.
template <class Fwd, class FArgs, class Bwd, class BArgs>
bool run_token_calls(Fwd fwd, const FArgs* fa, Bwd bwd, const BArgs* ba, bool grad,
                     std::string* error) {
  size_t fwd_bytes = 0, bwd_bytes = 0;
  geopref_status st = fwd(nullptr, &fwd_bytes, fa, nullptr);
  if (st == GEOPREF_SUCCESS && grad) st = bwd(nullptr, &bwd_bytes, ba, nullptr);
  device_buffer workspace(st == GEOPREF_SUCCESS ? (fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes) : 0);
  if (!workspace.ok()) return cuda_fail(error, "allocating the workspace", workspace.error());
  geopref_status recorded = GEOPREF_SUCCESS;
  if (st == GEOPREF_SUCCESS) st = fwd(workspace.get<void>(), &fwd_bytes, fa, nullptr);
  if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
  if (st == GEOPREF_SUCCESS) st = recorded;
  if (st == GEOPREF_SUCCESS && grad) {
    st = bwd(workspace.get<void>(), &bwd_bytes, ba, nullptr);
    if (st == GEOPREF_SUCCESS) st = geopref_device_status(workspace.get<void>(), nullptr, &recorded);
    if (st == GEOPREF_SUCCESS) st = recorded;
  }
  if (st != GEOPREF_SUCCESS) return status_fail(error, st);
  return true;
}

/// The projection's gradients back into r: grad_weight and grad_bias as
/// float32, grad_hidden in the input dtype (widened exactly). Each vector
/// is sized by the caller (empty: not fetched).
struct linear_grads_host {
  std::vector<float> gw, gb, gh_f;
  std::vector<uint16_t> gh_h;

  cudaError_t fetch_all(cudaError_t e, const device_buffer& gw_d, const device_buffer& gb_d,
                        const device_buffer& gh_d) {
    e = fetch(e, &gw, gw_d);
    e = fetch(e, &gb, gb_d);
    e = fetch(e, &gh_h, gh_d);
    return fetch(e, &gh_f, gh_d);
  }
  void take(bool half, check_result* r) const {
    r->grad_weight.assign(gw.begin(), gw.end());
    r->grad_bias.assign(gb.begin(), gb.end());
    if (half)
      for (uint16_t b : gh_h) r->grad_hidden.push_back(half_bits_to_float(b));
    else
      r->grad_hidden.assign(gh_f.begin(), gh_f.end());
  }
};

}  // namespace

bool run_cuda(const check_problem& p, check_result* r, std::string* error) {
  if (no_device(error)) return false;
  const auto N = static_cast<std::size_t>(p.n_rows);

  const int dtype = c_dtype(p.logits);
  const device_buffer logits = upload_real(p.logits);
  const pair_buffers pb(p);
  const device_buffer grad(N * static_cast<std::size_t>(p.vocab) * sizeof(float));
  cudaError_t e = first_error({&logits, &grad});
  if (e == cudaSuccess) e = pb.error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  const geopref_options opt = c_options(p);

  geopref_train_args a;
  geopref_train_args_init(&a);
  a.tokens.logits = logits.get<void>();
  a.tokens.logits_dtype = dtype;
  a.tokens.n_rows = p.n_rows;
  a.tokens.vocab = p.vocab;
  a.tokens.ld = p.vocab;
  a.logit_transform = c_transform(p);  // the vocab shards copy it
  pb.set_sequences(p, &a.tokens);
  pb.set_pairs(p, &a);
  a.grad_logits = grad.get<void>();
  a.grad_float32 = 1;

  geopref_status st = GEOPREF_SUCCESS;
  if (p.vocab_shards == 0) {
    run_entry(geopref_train_step, &a, opt, &st, &e);
  } else {
    // K simulated ranks: each one's records into its slot, then each one's
    // step over its slice (every rank writes the same combined outputs, and
    // its own columns of the gradient).
    const int k = p.vocab_shards;
    const int elem = dtype == GEOPREF_FLOAT32 ? 4 : 2;
    const device_buffer records(N * static_cast<std::size_t>(k) * sizeof(geopref_vocab_record));
    if (!records.ok()) return cuda_fail(error, "allocating the records", records.error());
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_stats_args sa;
      geopref_vocab_stats_args_init(&sa);
      int64_t width = 0;
      sa.slice = shard_slice(p, q, &width);
      sa.tokens = a.tokens;
      sa.logit_transform = a.logit_transform;
      sa.tokens.logits = static_cast<const char*>(a.tokens.logits) + sa.slice.begin * elem;
      sa.tokens.vocab = width;
      sa.records = records.get<geopref_vocab_record>() + static_cast<int64_t>(q) * p.n_rows;
      run_entry(geopref_vocab_parallel_stats, &sa, opt, &st, &e);
    }
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_train_args ta;
      geopref_vocab_train_args_init(&ta);
      int64_t width = 0;
      ta.slice = shard_slice(p, q, &width);
      geopref_train_args train = a;
      train.tokens.logits = static_cast<const char*>(a.tokens.logits) + ta.slice.begin * elem;
      train.tokens.vocab = width;
      train.grad_logits = grad.get<float>() + ta.slice.begin;
      train.grad_ld = p.vocab;
      ta.train = &train;
      ta.records = records.get<geopref_vocab_record>();
      run_entry(geopref_vocab_parallel_train_step, &ta, opt, &st, &e);
    }
  }
  if (e != cudaSuccess) return cuda_fail(error, "allocating the workspace", e);
  if (st != GEOPREF_SUCCESS) return status_fail(error, st);

  r->grad32.assign(N * static_cast<std::size_t>(p.vocab), 0.0f);
  e = pb.take_results(p, r);
  e = fetch(e, &r->grad32, grad);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
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
  const device_buffer H = upload_real(p.hidden), W = upload_real(p.weight),
                      B = has_bias ? upload_real(p.bias) : device_buffer();
  const device_buffer labels = upload_labels(p.labels);
  const token_buffers tb(p);
  const device_buffer gh(grad ? N * Hd * (half ? 2 : 4) : 0), gw(grad ? V * Hd * 4 : 0),
      gb(grad && has_bias ? V * 4 : 0);
  cudaError_t e = first_error({&H, &W, &B, &labels, &gh, &gw, &gb});
  if (e == cudaSuccess) e = tb.error();
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
  rows.label_type = c_label_type(p.labels);
  rows.ignore_index = p.opt.ignore_index;
  rows.chunk_bytes = std::size_t{256} << 20;
  fa.logit_transform = c_transform(p);
  geopref_linear_token_grad_args ba;
  geopref_linear_token_grad_args_init(&ba);
  ba.rows = rows;
  ba.logit_transform = fa.logit_transform;
  tb.set(p, &fa, &ba);
  ba.grad_hidden = gh.get<void>();
  ba.grad_weight = gw.get<void>();
  ba.grad_weight_float32 = 1;
  ba.grad_bias = has_bias ? gb.get<float>() : nullptr;

  if (!run_token_calls(geopref_linear_token_logps, &fa, geopref_linear_token_logps_grad, &ba, grad,
                       error))
    return false;
  linear_grads_host gr;
  gr.gw.resize(grad ? V * Hd : 0);
  gr.gb.resize(grad && has_bias ? V : 0);
  gr.gh_f.resize(grad && !half ? N * Hd : 0);
  gr.gh_h.resize(grad && half ? N * Hd : 0);
  e = tb.take_results(e, p, r);
  e = gr.fetch_all(e, gw, gb, gh);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  if (grad) gr.take(half, r);
  return true;
}

bool run_cuda_tokens(const check_problem& p, check_result* r, std::string* error) {
  if (no_device(error)) return false;
  if (p.linear) return run_cuda_tokens_linear(p, r, error);
  const auto N = static_cast<std::size_t>(p.n_rows);
  const int dtype = c_dtype(p.logits);
  const device_buffer logits = upload_real(p.logits);
  const device_buffer labels = upload_labels(p.labels);
  const token_buffers tb(p);
  const device_buffer grad(p.token_grad.empty() ? 0 : N * static_cast<std::size_t>(p.vocab) * sizeof(float));
  cudaError_t e = first_error({&logits, &labels, &grad});
  if (e == cudaSuccess) e = tb.error();
  if (e != cudaSuccess) return cuda_fail(error, "copying the inputs to the device", e);

  geopref_token_logps_args fa;
  geopref_token_logps_args_init(&fa);  // every field of the rows set, new ones included
  geopref_token_rows rows = fa.rows;
  rows.logits = logits.get<void>();
  rows.logits_dtype = dtype;
  rows.n_rows = p.n_rows;
  rows.vocab = p.vocab;
  rows.ld = p.vocab;
  rows.labels = labels.get<void>();
  rows.label_type = c_label_type(p.labels);
  rows.ignore_index = p.opt.ignore_index;
  fa.rows = rows;
  fa.logit_transform = c_transform(p);
  geopref_token_grad_args ba;
  geopref_token_grad_args_init(&ba);
  ba.rows = rows;
  ba.logit_transform = fa.logit_transform;
  tb.set(p, &fa, &ba);
  ba.grad_logits = grad.get<void>();
  ba.grad_float32 = 1;

  if (!run_token_calls(geopref_token_logps, &fa, geopref_token_logps_grad, &ba,
                       !p.token_grad.empty(), error))
    return false;
  r->grad32.assign(p.token_grad.empty() ? 0 : N * static_cast<std::size_t>(p.vocab), 0.0f);
  e = tb.take_results(e, p, r);
  e = fetch(e, &r->grad32, grad);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  return true;
}

}  // namespace geopref::tools

namespace geopref::tools {

/// --hidden / --weight: geopref_fused_linear_step with a 256 MiB chunk
/// budget. H, W and b go to the device in their dtype (float64 rounded to
/// float32); grad_weight and grad_bias come back as float32, grad_hidden in
/// the input dtype (widened exactly).
bool run_cuda_linear(const check_problem& p, check_result* r, std::string* error) {
  if (no_device(error)) return false;
  const auto N = static_cast<std::size_t>(p.n_rows), V = static_cast<std::size_t>(p.vocab),
             Hd = static_cast<std::size_t>(p.hidden_size);
  const bool half = p.hidden.dtype == npy_dtype::float16, has_bias = p.bias.ndim() == 1;
  const device_buffer H = upload_real(p.hidden), W = upload_real(p.weight),
                      B = has_bias ? upload_real(p.bias) : device_buffer();
  const pair_buffers pb(p);
  const device_buffer gh(N * Hd * (half ? 2 : 4)), gw(V * Hd * 4), gb(V * 4);
  cudaError_t e = first_error({&H, &W, &B, &gh, &gw, &gb});
  if (e == cudaSuccess) e = pb.error();
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
  pb.set_sequences(p, &a.in);
  a.in.chunk_bytes = std::size_t{256} << 20;
  a.logit_transform = c_transform(p);  // the vocab shards copy it
  pb.set_pairs(p, &a);
  a.grad_hidden = gh.get<void>();
  a.grad_weight = gw.get<void>();
  a.grad_weight_float32 = 1;
  a.grad_bias = has_bias ? gb.get<float>() : nullptr;
  // The offsets and pairs are on the host already: their host copies let the
  // step take its one-pass path when it applies (fused_linear.cuh).
  a.host_offsets = p.offsets.data();
  a.host_pairs = p.pairs.empty() ? nullptr : p.pairs.data();

  geopref_status st = GEOPREF_SUCCESS;
  std::vector<double> gh_sum;  // --vocab-shards: Σ_r of the ranks' grad_hidden partials
  if (p.vocab_shards == 0) {
    run_entry(geopref_fused_linear_step, &a, opt, &st, &e);
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
      const geopref_vocab_slice sl = shard_slice(p, rank, &in->vocab);
      in->weight = static_cast<const char*>(W.get<void>()) + static_cast<std::size_t>(sl.begin) * Hd * elem;
      in->bias = has_bias ? static_cast<const char*>(B.get<void>()) + static_cast<std::size_t>(sl.begin) * elem
                          : nullptr;
      return sl;
    };
    for (int q = 0; q < k; ++q) {
      geopref_vocab_linear_stats_args sa;
      geopref_vocab_linear_stats_args_init(&sa);
      sa.in = a.in;
      sa.logit_transform = a.logit_transform;
      sa.slice = slice_of(q, &sa.in);
      sa.records = records.get<geopref_vocab_record>() + static_cast<int64_t>(q) * p.n_rows;
      run_entry(geopref_vocab_linear_stats, &sa, opt, &st, &e);
    }
    std::vector<float> part_f(half ? 0 : N * Hd);
    std::vector<uint16_t> part_h(half ? N * Hd : 0);
    for (int q = 0; q < k && st == GEOPREF_SUCCESS && e == cudaSuccess; ++q) {
      geopref_vocab_linear_train_args ta;
      geopref_vocab_linear_train_args_init(&ta);
      geopref_linear_train_args train = a;
      ta.slice = slice_of(q, &train.in);
      train.grad_weight = gw.get<float>() + static_cast<std::size_t>(ta.slice.begin) * Hd;
      train.grad_bias = has_bias ? gb.get<float>() + ta.slice.begin : nullptr;
      train.grad_hidden = part.get<void>();
      ta.train = &train;
      ta.records = records.get<geopref_vocab_record>();
      run_entry(geopref_vocab_linear_step, &ta, opt, &st, &e);
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
  if (st != GEOPREF_SUCCESS) return status_fail(error, st);
  linear_grads_host gr;
  gr.gw.resize(V * Hd);
  gr.gb.resize(has_bias ? V : 0);
  gr.gh_f.resize(half ? 0 : N * Hd);
  gr.gh_h.resize(half ? N * Hd : 0);
  e = pb.take_results(p, r);
  e = gr.fetch_all(e, gw, gb, gh);
  if (e != cudaSuccess) return cuda_fail(error, "copying the results back", e);
  gr.take(half, r);
  if (p.vocab_shards > 0) r->grad_hidden = gh_sum;
  return true;
}

}  // namespace geopref::tools
