// bindings/torch/csrc/ops_cuda.cpp — CUDA kernels of the geopref torch
// operators (schemas and documentation: ops.cpp). Each runs the fused path
// through the C ABI (geopref/c_api.h, compiled into this extension from
// kernels/c_api.cu) on the current CUDA stream of the logits' device; the
// workspace comes from torch's caching allocator (stream-ordered, no sync).
// `check` reads the status the kernels recorded about device data (a label
// out of range, bad offsets, soft labels outside [0, 1], ...), which
// synchronises the stream; pass check=False inside CUDA graphs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "c_abi.h"
#include "common.h"
#include "geopref/c_api.h"

namespace geopref_torch {
namespace {

using c10::optional;

int c_logits_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return GEOPREF_FLOAT32;
    case at::kHalf: return GEOPREF_FLOAT16;
    case at::kBFloat16: return GEOPREF_BFLOAT16;
    default:
      TORCH_CHECK_TYPE(false, "geopref.", op,
                       ": CUDA logits must be float32, float16 or bfloat16 (float64 is CPU "
                       "only), got ", t.scalar_type());
  }
  return -1;
}

int c_index_type(const Tensor& t) {
  return t.scalar_type() == at::kInt ? GEOPREF_INT32 : GEOPREF_INT64;
}

/// The C ABI's token view. `z` is check_tokens' result; the tensors must
/// outlive the call.
geopref_tokens c_tokens(const Tensor& z, const Tensor& labels, const Tensor& offsets,
                        const char* op) {
  geopref_tokens t{};
  t.logits = z.data_ptr();
  t.logits_dtype = c_logits_dtype(z, op);
  t.n_rows = z.size(0);
  t.vocab = z.size(1);
  t.ld = row_stride(z);
  t.labels = labels.data_ptr();
  t.label_type = c_index_type(labels);
  t.offsets = offsets.data_ptr();
  t.offset_type = c_index_type(offsets);
  t.n_seqs = offsets.size(0) - 1;
  return t;
}


geopref_stream_t current_stream() {
  return reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
}

/// Runs one C entry in the two-phase way: size query, workspace from the
/// caching allocator, launch, and (check) the recorded device status.
template <class Args, class SizeFn, class RunFn>
void launch(const Args& a, const geopref_options& opt, const Tensor& like, bool check,
            SizeFn size_fn, RunFn run_fn, const char* op) {
  size_t bytes = 0;
  check_status(size_fn(&a, &opt, &bytes), op);
  // At least one byte: a null workspace would make the second call a size query.
  Tensor ws = at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                        like.options().dtype(at::kByte));
  const geopref_stream_t stream = current_stream();
  check_status(run_fn(ws.data_ptr(), &bytes, &a, &opt, stream), op);
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(ws.data_ptr(), stream, &recorded), op);
    check_status(recorded, op);
  }
}

/// The optional token weights [N] as the C ABI takes them (float32; undefined: all 1).
Tensor cuda_token_weights(const optional<Tensor>& tw, const Tensor& z, const char* op) {
  return optional_vector(tw, z.size(0), z, at::kFloat, "token_weights", op);
}
const float* float_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

/// pref_loss's per-pair tensors and token weights as the C ABI takes them (float32).
struct cuda_pairs {
  Tensor pairs, soft, ref_logps, weights, token_weights;
  int64_t n_pairs;
  cuda_pairs(const Tensor& logits, int64_t n_seqs, const optional<Tensor>& p,
             const optional<Tensor>& s, const optional<Tensor>& r, const optional<Tensor>& w,
             const optional<Tensor>& tw, const char* op)
      : pairs(optional_pairs(p, logits, op)), n_pairs(pair_count(pairs, n_seqs)) {
    soft = optional_vector(s, n_pairs, logits, at::kFloat, "soft_labels", op);
    ref_logps = optional_vector(r, n_seqs, logits, at::kFloat, "ref_logps", op);
    weights = optional_vector(w, n_pairs, logits, at::kFloat, "weights", op);
    token_weights = cuda_token_weights(tw, logits, op);
  }
  /// After a.tokens is set (it fills tokens.token_weights).
  void fill(geopref_train_args& a) const {
    a.n_pairs = n_pairs;
    a.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
    a.soft_labels = float_or_null(soft);
    a.ref_logps = float_or_null(ref_logps);
    a.weights = float_or_null(weights);
    a.tokens.token_weights = float_or_null(token_weights);
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pref_loss_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, bool check,
    c10::ArrayRef<double> logit_transform) {
  const char* op = "pref_loss";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const int64_t N = z.size(0), S = offsets.size(0) - 1;
  const cuda_pairs pr(z, S, pairs, soft_labels, ref_logps, weights, token_weights, op);
  const auto f32 = z.options().dtype(at::kFloat);
  Tensor value = opt.reduce == geopref::reduction::none ? at::empty({pr.n_pairs}, f32)
                                                        : at::empty({}, f32);
  Tensor seq = at::empty({S}, f32), lse = at::empty({N}, f32), gseq = at::empty({S}, f32);
  Tensor metrics = at::empty({7}, z.options().dtype(at::kDouble));
  Tensor sums = at::empty({METRIC_SUMS}, z.options().dtype(at::kDouble));
  Tensor counts = at::empty({S}, z.options().dtype(at::kLong));
  geopref_train_args a;
  geopref_train_args_init(&a);
  a.tokens = c_tokens(z, labels, offsets, op);
  a.logit_transform = c_transform(tr);
  pr.fill(a);
  a.loss = value.data_ptr<float>();
  a.seq_logps = seq.data_ptr<float>();
  a.seq_counts = counts.data_ptr<int64_t>();
  a.stats = reinterpret_cast<geopref_metrics*>(metrics.data_ptr<double>());
  a.stat_sums = reinterpret_cast<geopref_metric_sums*>(sums.data_ptr<double>());
  a.lse = lse.data_ptr<float>();
  a.grad_seq_logps = gseq.data_ptr<float>();  // g_s at upstream 1; no gradient pass here
  launch(a, c_options(opt), z, check, geopref_train_step_workspace_size, geopref_train_step, op);
  return {value, seq, metrics, lse, gseq, seq_scale(counts, opt, at::kFloat), sums};
}

Tensor pref_loss_grad_seq_cuda(
    const Tensor& grad_output, const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, bool check,
    c10::ArrayRef<double> logit_transform) {
  const char* op = "pref_loss_grad_seq";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const int64_t S = offsets.size(0) - 1;
  const cuda_pairs pr(z, S, pairs, soft_labels, ref_logps, weights, token_weights, op);
  const int64_t n_up = opt.reduce == geopref::reduction::none ? pr.n_pairs : 1;
  TORCH_CHECK_VALUE(grad_output.numel() == n_up && grad_output.device() == z.device(),
                    "geopref.", op, ": grad_output must hold ", n_up,
                    " value(s) on the logits' device, got ", grad_output.sizes());
  const Tensor up = grad_output.to(at::kFloat).contiguous().reshape({-1});
  Tensor gseq = at::empty({S}, z.options().dtype(at::kFloat));
  geopref_train_args a;
  geopref_train_args_init(&a);
  a.tokens = c_tokens(z, labels, offsets, op);
  a.logit_transform = c_transform(tr);
  pr.fill(a);
  a.grad_output = up.data_ptr<float>();
  a.grad_seq_logps = gseq.data_ptr<float>();
  launch(a, c_options(opt), z, check, geopref_train_step_workspace_size, geopref_train_step, op);
  return gseq;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sequence_logps_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, bool check,
    c10::ArrayRef<double> logit_transform) {
  const char* op = "sequence_logps";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const int64_t N = z.size(0), S = offsets.size(0) - 1;
  const Tensor tw = cuda_token_weights(token_weights, z, op);
  Tensor seq = at::empty({S}, z.options().dtype(at::kFloat));
  Tensor lse = at::empty({N}, z.options().dtype(at::kFloat));
  Tensor counts = at::empty({S}, z.options().dtype(at::kLong));
  geopref_logps_args a;
  geopref_logps_args_init(&a);
  a.tokens = c_tokens(z, labels, offsets, op);
  a.tokens.token_weights = float_or_null(tw);
  a.logit_transform = c_transform(tr);
  a.seq_logps = seq.data_ptr<float>();
  a.seq_counts = counts.data_ptr<int64_t>();
  a.lse = lse.data_ptr<float>();
  launch(a, c_options(opt), z, check, geopref_sequence_logps_workspace_size,
         geopref_sequence_logps, op);
  return {seq, lse, counts, seq_scale(counts, opt, at::kFloat)};
}

Tensor logits_grad_cuda(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                        const optional<Tensor>& token_weights, const Tensor& lse,
                        const Tensor& grad_seq, int64_t ignore_index, bool check,
                        c10::ArrayRef<double> logit_transform) {
  const char* op = "logits_grad";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const int64_t N = z.size(0), V = z.size(1), S = offsets.size(0) - 1;
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad_seq.dim() == 1 &&
                        grad_seq.size(0) == S && lse.device() == z.device() &&
                        grad_seq.device() == z.device(),
                    "geopref.logits_grad: lse must be [N] = [", N, "] and grad_seq [S] = [", S,
                    "] on the logits' device, got ", lse.sizes(), " and ", grad_seq.sizes());
  const Tensor l = lse.to(at::kFloat).contiguous(), g = grad_seq.to(at::kFloat).contiguous();
  Tensor grad = at::empty({N, V}, z.options());
  const Tensor tw = cuda_token_weights(token_weights, z, op);
  geopref::options opt;
  opt.ignore_index = ignore_index;
  geopref_grad_args a;
  geopref_grad_args_init(&a);
  a.tokens = c_tokens(z, labels, offsets, op);
  a.tokens.token_weights = float_or_null(tw);
  a.logit_transform = c_transform(tr);
  a.lse = l.data_ptr<float>();
  a.grad_seq_logps = g.data_ptr<float>();
  a.grad_logits = grad.data_ptr();
  a.grad_ld = V;
  launch(a, c_options(opt), z, check, geopref_logits_grad_workspace_size, geopref_logits_grad,
         op);
  return grad;
}

/// The C ABI's rows of the per-token primitive; `z` is check_rows' result.
geopref_token_rows c_rows(const Tensor& z, const Tensor& labels, int64_t ignore_index,
                          const char* op) {
  geopref_token_rows r{};
  r.logits = z.data_ptr();
  r.logits_dtype = c_logits_dtype(z, op);
  r.n_rows = z.size(0);
  r.vocab = z.size(1);
  r.ld = row_stride(z);
  r.labels = labels.data_ptr();
  r.label_type = c_index_type(labels);
  r.ignore_index = ignore_index;
  return r;
}

/// launch() for the entries without options.
template <class Args, class RunFn>
void launch_rows(const Args& a, const Tensor& like, bool check, RunFn run_fn, const char* op) {
  size_t bytes = 0;
  check_status(run_fn(nullptr, &bytes, &a, nullptr), op);
  Tensor ws = at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                        like.options().dtype(at::kByte));
  const geopref_stream_t stream = current_stream();
  check_status(run_fn(ws.data_ptr(), &bytes, &a, stream), op);
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(ws.data_ptr(), stream, &recorded), op);
    check_status(recorded, op);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> token_logps_cuda(
    const Tensor& logits, const Tensor& labels, int64_t ignore_index, bool entropy, bool check,
    c10::ArrayRef<double> logit_transform, bool log_sum_sq_probs, bool mean_logits,
    bool is_top1) {
  const char* op = "token_logps";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_rows(logits, labels, op);
  const int64_t N = z.size(0);
  const auto f32 = z.options().dtype(at::kFloat);
  Tensor logp = at::empty({N}, f32), lse = at::empty({N}, f32);
  // ABI 1.2's statistics (geopref_token_logps_args' log_sum_sq_probs,
  // mean_logits, is_top1) beside the entropy: NULL when not asked for.
  const token_stats stats(N, z, at::kFloat, entropy, log_sum_sq_probs, mean_logits, is_top1);
  geopref_token_logps_args a;
  geopref_token_logps_args_init(&a);
  a.rows = c_rows(z, labels, ignore_index, op);
  a.logit_transform = c_transform(tr);
  a.token_logps = logp.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  stats.fill(a);
  launch_rows(a, z, check, geopref_token_logps, op);
  const auto [h, lssp, mean, top1] = stats.result(at::kFloat);
  return {logp, lse, h, lssp, mean, top1};
}

Tensor token_logps_grad_cuda(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                             const Tensor& grad, int64_t ignore_index, bool check,
                             c10::ArrayRef<double> logit_transform,
                             const optional<Tensor>& grad_entropy,
                             const optional<Tensor>& entropy) {
  const char* op = "token_logps_grad";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_rows(logits, labels, op);
  const int64_t N = z.size(0), V = z.size(1);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad.dim() == 1 && grad.size(0) == N &&
                        lse.device() == z.device() && grad.device() == z.device(),
                    "geopref.token_logps_grad: lse and grad must be [N] = [", N,
                    "] on the logits' device, got ", lse.sizes(), " and ", grad.sizes());
  const Tensor l = lse.to(at::kFloat).contiguous(), g = grad.to(at::kFloat).contiguous();
  // ABI 1.2: the entropy's upstream e_t and the forward's entropy H_t (float32), or NULL.
  const auto eh = entropy_upstream(grad_entropy, entropy, N, z, at::kFloat, op);
  Tensor out = at::empty({N, V}, z.options());
  geopref_token_grad_args a;
  geopref_token_grad_args_init(&a);
  a.rows = c_rows(z, labels, ignore_index, op);
  a.logit_transform = c_transform(tr);
  a.lse = l.data_ptr<float>();
  a.grad_token_logps = g.data_ptr<float>();
  a.grad_logits = out.data_ptr();
  a.grad_ld = V;
  a.grad_entropy = eh.first.defined() ? eh.first.data_ptr<float>() : nullptr;
  a.entropy = eh.second.defined() ? eh.second.data_ptr<float>() : nullptr;
  launch_rows(a, z, check, geopref_token_logps_grad, op);
  return out;
}

/// One C entry of the form entry(workspace, &bytes, args, options, stream),
/// the two-phase way, with `check` the recorded device status.
template <class Args, class Entry>
void launch_entry(const Args& a, const geopref_options* opt, const Tensor& like, bool check,
                  Entry entry, const char* op) {
  size_t bytes = 0;
  const geopref_stream_t stream = current_stream();
  check_status(entry(nullptr, &bytes, &a, opt, stream), op);
  Tensor ws = at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                        like.options().dtype(at::kByte));
  check_status(entry(ws.data_ptr(), &bytes, &a, opt, stream), op);
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(ws.data_ptr(), stream, &recorded), op);
    check_status(recorded, op);
  }
}

// ---- Vocab parallel (ops_vocab.cpp documents the operators).

Tensor vocab_parallel_stats_cuda(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                                 c10::IntArrayRef vocab_slice, c10::ArrayRef<double> options,
                                 bool check, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_stats";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  geopref_vocab_stats_args a;
  geopref_vocab_stats_args_init(&a);
  a.tokens = c_tokens(z, labels, offsets, op);
  a.logit_transform = c_transform(tr);
  a.slice = c_slice(sl);
  Tensor records = c_records_out(z.size(0), z, &a.records);
  const geopref_options copt = c_options(opt);
  launch_entry(a, &copt, z, check, geopref_vocab_parallel_stats, op);
  return records;
}

/// vocab_parallel_train_step (pr given) and vocab_parallel_logps (pr null:
/// explicit pairing with P = 0, no pair terms) through
/// geopref_vocab_parallel_train_step.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> vocab_step_cuda(
    const Tensor& z, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const cuda_pairs* pr, const Tensor& token_weights, const geopref_vocab_slice_fields& sl,
    const geopref::options& opt, bool grad, bool check, const geopref::logit_transform& tr,
    const optional<Tensor>& grad_output, const char* op) {
  const int64_t N = z.size(0), W = z.size(1), S = offsets.size(0) - 1;
  const int64_t P = pr != nullptr ? pr->n_pairs : 0;
  const bool per_pair = opt.reduce == geopref::reduction::none;
  const auto f32 = z.options().dtype(at::kFloat);
  Tensor value = per_pair ? at::empty({P}, f32) : at::empty({}, f32);
  Tensor seq = at::empty({S}, f32), counts = at::empty({S}, z.options().dtype(at::kLong));
  Tensor metrics = at::empty({7}, z.options().dtype(at::kDouble));
  Tensor sums = at::empty({METRIC_SUMS}, z.options().dtype(at::kDouble));
  Tensor g = grad ? at::empty({N, W}, z.options()) : at::empty({0}, z.options());
  Tensor no_pairs, up;
  geopref_train_args t;
  geopref_train_args_init(&t);
  t.tokens = c_tokens(z, labels, offsets, op);
  t.logit_transform = c_transform(tr);
  if (pr != nullptr) {
    pr->fill(t);
  } else {
    no_pairs = at::zeros({1, 2}, z.options().dtype(at::kLong));  // P = 0: never read
    t.n_pairs = 0;
    t.pairs = no_pairs.data_ptr<int64_t>();
    t.tokens.token_weights = float_or_null(token_weights);
  }
  if (grad_output.has_value() && grad_output->defined()) {
    const int64_t n_up = per_pair ? P : 1;
    TORCH_CHECK_VALUE(grad_output->numel() == n_up && grad_output->device() == z.device(),
                      "geopref.", op, ": grad_output must hold ", n_up,
                      " value(s) on the logits' device, got ", grad_output->sizes());
    up = grad_output->to(at::kFloat).contiguous().reshape({-1});
    t.grad_output = up.data_ptr<float>();
  }
  t.loss = value.data_ptr<float>();
  t.seq_logps = seq.data_ptr<float>();
  t.seq_counts = counts.data_ptr<int64_t>();
  t.stats = reinterpret_cast<geopref_metrics*>(metrics.data_ptr<double>());
  t.stat_sums = reinterpret_cast<geopref_metric_sums*>(sums.data_ptr<double>());
  if (grad) {
    t.grad_logits = g.data_ptr();
    t.grad_ld = W;
  }
  geopref_vocab_train_args a;
  geopref_vocab_train_args_init(&a);
  a.train = &t;
  a.slice = c_slice(sl);
  a.records = c_gathered(records, sl.n_ranks, N, z, op);
  const geopref_options copt = c_options(opt);
  launch_entry(a, &copt, z, check, geopref_vocab_parallel_train_step, op);
  return {value, seq, metrics, sums, g, counts};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> vocab_parallel_train_step_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, bool grad, bool check,
    c10::ArrayRef<double> logit_transform, const optional<Tensor>& grad_output) {
  const char* op = "vocab_parallel_train_step";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  const cuda_pairs pr(z, offsets.size(0) - 1, pairs, soft_labels, ref_logps, weights,
                      token_weights, op);
  const auto r = vocab_step_cuda(z, labels, offsets, records, &pr, pr.token_weights, sl, opt, grad,
                                 check, tr, grad_output, op);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

std::tuple<Tensor, Tensor> vocab_parallel_logps_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, bool check, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_logps";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor z = check_tokens(logits, labels, offsets, op);
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  const Tensor tw = cuda_token_weights(token_weights, z, op);
  const auto r = vocab_step_cuda(z, labels, offsets, records, nullptr, tw, sl, opt, false, check,
                                 tr, {}, op);
  return {std::get<1>(r), std::get<5>(r)};
}

}  // namespace
}  // namespace geopref_torch

TORCH_LIBRARY_IMPL(geopref, CUDA, m) {
  m.impl("vocab_parallel_stats", &geopref_torch::vocab_parallel_stats_cuda);
  m.impl("vocab_parallel_train_step", &geopref_torch::vocab_parallel_train_step_cuda);
  m.impl("vocab_parallel_logps", &geopref_torch::vocab_parallel_logps_cuda);
  m.impl("token_logps", &geopref_torch::token_logps_cuda);
  m.impl("token_logps_grad", &geopref_torch::token_logps_grad_cuda);
  m.impl("pref_loss", &geopref_torch::pref_loss_cuda);
  m.impl("pref_loss_grad_seq", &geopref_torch::pref_loss_grad_seq_cuda);
  m.impl("sequence_logps", &geopref_torch::sequence_logps_cuda);
  m.impl("logits_grad", &geopref_torch::logits_grad_cuda);
}
