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

/// What the C ABI's token views (geopref_tokens, geopref_token_rows) share:
/// the logits `z` (check_tokens' or check_rows' result) and the labels. The
/// tensors must outlive the call.
template <class View>
View c_logits_view(const Tensor& z, const Tensor& labels, const char* op) {
  View v{};
  v.logits = z.data_ptr();
  v.logits_dtype = c_dtype(z, "logits", op);
  v.n_rows = z.size(0);
  v.vocab = z.size(1);
  v.ld = row_stride(z);
  v.labels = labels.data_ptr();
  v.label_type = c_index(labels);
  return v;
}

/// The C ABI's token view with the sequences.
geopref_tokens c_tokens(const Tensor& z, const Tensor& labels, const Tensor& offsets,
                        const char* op) {
  geopref_tokens t = c_logits_view<geopref_tokens>(z, labels, op);
  t.offsets = offsets.data_ptr();
  t.offset_type = c_index(offsets);
  t.n_seqs = offsets.size(0) - 1;
  return t;
}

/// The C ABI's rows of the per-token primitive.
geopref_token_rows c_rows(const Tensor& z, const Tensor& labels, int64_t ignore_index,
                          const char* op) {
  geopref_token_rows r = c_logits_view<geopref_token_rows>(z, labels, op);
  r.ignore_index = ignore_index;
  return r;
}

/// What every kernel here starts with: the logit transform (checked before
/// any tensor is read), the logits' device made current, the logits checked
/// with the labels and the offsets (check_tokens; without offsets, the rows
/// of the per-token primitive: check_rows); then the C argument structs
/// over them. Must outlive the call.
struct cuda_logits {
  geopref::logit_transform tr;
  c10::cuda::CUDAGuard guard;
  Tensor z;
  cuda_logits(const Tensor& logits, const Tensor& labels, const optional<Tensor>& offsets,
              c10::ArrayRef<double> logit_transform, const char* op)
      : tr(to_logit_transform(logit_transform, op)),
        guard(logits.device()),
        z(offsets.has_value() ? check_tokens(logits, labels, *offsets, op)
                              : check_rows(logits, labels, op)) {}
  /// A C argument struct over sequences, initialised by `init`, with the
  /// tokens (token weights: undefined for none) and the logit transform set.
  template <class Args>
  Args tokens_args(void (*init)(Args*), const Tensor& labels, const Tensor& offsets,
                   const Tensor& token_weights, const char* op) const {
    Args a;
    init(&a);
    a.tokens = c_tokens(z, labels, offsets, op);
    a.tokens.token_weights = data_or_null<float>(token_weights);
    a.logit_transform = c_transform(tr);
    return a;
  }
  /// One over the rows of the per-token primitive.
  template <class Args>
  Args rows_args(void (*init)(Args*), const Tensor& labels, int64_t ignore_index,
                 const char* op) const {
    Args a;
    init(&a);
    a.rows = c_rows(z, labels, ignore_index, op);
    a.logit_transform = c_transform(tr);
    return a;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pref_loss_cuda(
    GEOPREF_PREF_LOSS_PARAMS) {
  const char* op = "pref_loss";
  const geopref::options opt = to_options(options, op);
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const int64_t N = z.size(0), S = offsets.size(0) - 1;
  const pair_tensors pr(z, S, pairs, soft_labels, ref_logps, weights, token_weights, at::kFloat,
                        op);
  const c_step_outputs o(z, opt, pr.n_pairs, S, /*with_counts=*/true, nullptr, "", op);
  const auto f32 = z.options().dtype(at::kFloat);
  Tensor lse = at::empty({N}, f32), gseq = at::empty({S}, f32);
  auto a = in.tokens_args(geopref_train_args_init, labels, offsets, Tensor(), op);
  pr.fill(a, a.tokens.token_weights);
  o.fill(a);
  a.lse = lse.data_ptr<float>();
  a.grad_seq_logps = gseq.data_ptr<float>();  // g_s at upstream 1; no gradient pass here
  launch(a, c_options(opt), z, check, geopref_train_step, op);
  return {o.value, o.seq, o.metrics, lse, gseq, seq_scale(o.counts, opt, at::kFloat), o.sums};
}

Tensor pref_loss_grad_seq_cuda(const Tensor& grad_output, GEOPREF_PREF_LOSS_PARAMS) {
  const char* op = "pref_loss_grad_seq";
  const geopref::options opt = to_options(options, op);
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const int64_t S = offsets.size(0) - 1;
  const pair_tensors pr(z, S, pairs, soft_labels, ref_logps, weights, token_weights, at::kFloat,
                        op);
  const Tensor up = upstream_of(&grad_output, opt, pr.n_pairs, z, at::kFloat, "the logits' device",
                                op);
  Tensor gseq = at::empty({S}, z.options().dtype(at::kFloat));
  auto a = in.tokens_args(geopref_train_args_init, labels, offsets, Tensor(), op);
  pr.fill(a, a.tokens.token_weights);
  a.grad_output = up.data_ptr<float>();
  a.grad_seq_logps = gseq.data_ptr<float>();
  launch(a, c_options(opt), z, check, geopref_train_step, op);
  return gseq;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sequence_logps_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, bool check,
    c10::ArrayRef<double> logit_transform) {
  const char* op = "sequence_logps";
  const geopref::options opt = to_options(options, op);
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const int64_t N = z.size(0), S = offsets.size(0) - 1;
  const Tensor tw = cuda_token_weights(token_weights, z, op);
  Tensor seq = at::empty({S}, z.options().dtype(at::kFloat));
  Tensor lse = at::empty({N}, z.options().dtype(at::kFloat));
  Tensor counts = at::empty({S}, z.options().dtype(at::kLong));
  auto a = in.tokens_args(geopref_logps_args_init, labels, offsets, tw, op);
  a.seq_logps = seq.data_ptr<float>();
  a.seq_counts = counts.data_ptr<int64_t>();
  a.lse = lse.data_ptr<float>();
  launch(a, c_options(opt), z, check, geopref_sequence_logps, op);
  return {seq, lse, counts, seq_scale(counts, opt, at::kFloat)};
}

Tensor logits_grad_cuda(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                        const optional<Tensor>& token_weights, const Tensor& lse,
                        const Tensor& grad_seq, int64_t ignore_index, bool check,
                        c10::ArrayRef<double> logit_transform) {
  const char* op = "logits_grad";
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
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
  auto a = in.tokens_args(geopref_grad_args_init, labels, offsets, tw, op);
  a.lse = l.data_ptr<float>();
  a.grad_seq_logps = g.data_ptr<float>();
  a.grad_logits = grad.data_ptr();
  a.grad_ld = V;
  launch(a, c_options(opt), z, check, geopref_logits_grad, op);
  return grad;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> token_logps_cuda(
    const Tensor& logits, const Tensor& labels, int64_t ignore_index, bool entropy, bool check,
    c10::ArrayRef<double> logit_transform, bool log_sum_sq_probs, bool mean_logits,
    bool is_top1) {
  const char* op = "token_logps";
  const cuda_logits in(logits, labels, {}, logit_transform, op);
  const Tensor& z = in.z;
  const int64_t N = z.size(0);
  const auto f32 = z.options().dtype(at::kFloat);
  Tensor logp = at::empty({N}, f32), lse = at::empty({N}, f32);
  // ABI 1.2's statistics (geopref_token_logps_args' log_sum_sq_probs,
  // mean_logits, is_top1) beside the entropy: NULL when not asked for.
  const token_stats stats(N, z, at::kFloat, entropy, log_sum_sq_probs, mean_logits, is_top1);
  auto a = in.rows_args(geopref_token_logps_args_init, labels, ignore_index, op);
  a.token_logps = logp.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  stats.fill(a);
  launch(a, z, check, geopref_token_logps, op);
  const auto [h, lssp, mean, top1] = stats.result(at::kFloat);
  return {logp, lse, h, lssp, mean, top1};
}

Tensor token_logps_grad_cuda(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                             const Tensor& grad, int64_t ignore_index, bool check,
                             c10::ArrayRef<double> logit_transform,
                             const optional<Tensor>& grad_entropy,
                             const optional<Tensor>& entropy) {
  const char* op = "token_logps_grad";
  const cuda_logits in(logits, labels, {}, logit_transform, op);
  const Tensor& z = in.z;
  const int64_t N = z.size(0), V = z.size(1);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad.dim() == 1 && grad.size(0) == N &&
                        lse.device() == z.device() && grad.device() == z.device(),
                    "geopref.token_logps_grad: lse and grad must be [N] = [", N,
                    "] on the logits' device, got ", lse.sizes(), " and ", grad.sizes());
  const Tensor l = lse.to(at::kFloat).contiguous(), g = grad.to(at::kFloat).contiguous();
  // ABI 1.2: the entropy's upstream e_t and the forward's entropy H_t (float32), or NULL.
  const auto eh = entropy_upstream(grad_entropy, entropy, N, z, at::kFloat, op);
  Tensor out = at::empty({N, V}, z.options());
  auto a = in.rows_args(geopref_token_grad_args_init, labels, ignore_index, op);
  a.lse = l.data_ptr<float>();
  a.grad_token_logps = g.data_ptr<float>();
  a.grad_logits = out.data_ptr();
  a.grad_ld = V;
  a.grad_entropy = eh.first.defined() ? eh.first.data_ptr<float>() : nullptr;
  a.entropy = eh.second.defined() ? eh.second.data_ptr<float>() : nullptr;
  launch(a, z, check, geopref_token_logps_grad, op);
  return out;
}

// ---- Vocab parallel (ops_vocab.cpp documents the operators).

Tensor vocab_parallel_stats_cuda(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                                 c10::IntArrayRef vocab_slice, c10::ArrayRef<double> options,
                                 bool check, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_stats";
  const geopref::options opt = to_options(options, op);
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  auto a = in.tokens_args(geopref_vocab_stats_args_init, labels, offsets, Tensor(), op);
  a.slice = c_slice(sl);
  Tensor records = c_records_out(z.size(0), z, &a.records);
  launch(a, c_options(opt), z, check, geopref_vocab_parallel_stats, op);
  return records;
}

/// vocab_parallel_train_step (pr given) and vocab_parallel_logps (pr null:
/// explicit pairing with P = 0, no pair terms) through
/// geopref_vocab_parallel_train_step.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> vocab_step_cuda(
    const cuda_logits& in, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const pair_tensors* pr, const Tensor& token_weights, const geopref_vocab_slice_fields& sl,
    const geopref::options& opt, bool grad, bool check, const optional<Tensor>& grad_output,
    const char* op) {
  const Tensor& z = in.z;
  const int64_t N = z.size(0), W = z.size(1), S = offsets.size(0) - 1;
  const int64_t P = pr != nullptr ? pr->n_pairs : 0;
  const c_step_outputs o(z, opt, P, S, /*with_counts=*/true, given(grad_output),
                         "the logits' device", op);
  Tensor g = grad ? at::empty({N, W}, z.options()) : at::empty({0}, z.options());
  Tensor no_pairs;
  auto t = in.tokens_args(geopref_train_args_init, labels, offsets, token_weights, op);
  if (pr != nullptr) {
    pr->fill(t, t.tokens.token_weights);
  } else {
    no_pairs = at::zeros({1, 2}, z.options().dtype(at::kLong));  // P = 0: never read
    t.n_pairs = 0;
    t.pairs = no_pairs.data_ptr<int64_t>();
  }
  o.fill(t);
  if (grad) {
    t.grad_logits = g.data_ptr();
    t.grad_ld = W;
  }
  geopref_vocab_train_args a;
  geopref_vocab_train_args_init(&a);
  a.train = &t;
  a.slice = c_slice(sl);
  a.records = c_gathered(records, sl.n_ranks, N, z, op);
  launch(a, c_options(opt), z, check, geopref_vocab_parallel_train_step, op);
  return {o.value, o.seq, o.metrics, o.sums, g, o.counts};
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
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  const pair_tensors pr(z, offsets.size(0) - 1, pairs, soft_labels, ref_logps, weights,
                        token_weights, at::kFloat, op);
  const auto r = vocab_step_cuda(in, labels, offsets, records, &pr, pr.token_weights, sl, opt,
                                 grad, check, grad_output, op);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

std::tuple<Tensor, Tensor> vocab_parallel_logps_cuda(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, bool check, c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_parallel_logps";
  const geopref::options opt = to_options(options, op);
  const cuda_logits in(logits, labels, offsets, logit_transform, op);
  const Tensor& z = in.z;
  const auto sl = to_vocab_slice(vocab_slice, z.size(1), op);
  const Tensor tw = cuda_token_weights(token_weights, z, op);
  const auto r = vocab_step_cuda(in, labels, offsets, records, nullptr, tw, sl, opt, false, check,
                                 {}, op);
  return {std::get<1>(r), std::get<5>(r)};
}

}  // namespace
}  // namespace geopref_torch

TORCH_LIBRARY_IMPL(geopref, CUDA, m) {
  GEOPREF_TORCH_LOGITS_OPS(GEOPREF_TORCH_CUDA_IMPL)
  GEOPREF_TORCH_VOCAB_LOGITS_OPS(GEOPREF_TORCH_CUDA_IMPL)
}
