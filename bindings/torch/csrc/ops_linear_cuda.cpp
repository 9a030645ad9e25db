// bindings/torch/csrc/ops_linear_cuda.cpp — CUDA kernels of the fused-linear
// geopref torch operators (schemas and documentation: ops_linear.cpp). Each
// runs the chunked path of geopref/cuda/fused_linear.cuh through the C ABI
// (geopref_fused_linear_step / _logps, geopref_linear_token_logps_grad,
// compiled into this extension from kernels/c_api_linear.cu): the logits
// exist one chunk of at most chunk_bytes at a time, in a workspace from
// torch's caching allocator, on the current CUDA stream; the GEMMs run on
// torch's own cuBLAS handle for that stream (its math mode, e.g. TF32 for
// float32 when torch allows it, and its workspace), which the library
// borrows and restores. `check` synchronises to read the kernels' verdict
// on device data, as in ops_cuda.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "c_abi.h"
#include "common.h"
#include "geopref/c_api.h"
#include "linear.h"

namespace geopref_torch {
namespace {

using c10::optional;

/// What the C ABI's geopref_linear_inputs and geopref_linear_token_rows
/// share: the hidden states, the projection, the labels, the chunk budget
/// and torch's cuBLAS handle. The tensors must outlive the call.
template <class View>
View c_linear_view(const linear_tensors& t, const Tensor& labels, int64_t chunk_bytes,
                   const char* op) {
  View v{};
  v.hidden = t.hidden.data_ptr();
  v.ld_hidden = row_stride(t.hidden);
  v.weight = t.weight.data_ptr();
  v.ld_weight = row_stride(t.weight);
  v.bias = t.bias.defined() ? t.bias.data_ptr() : nullptr;
  v.dtype = c_dtype(t.hidden, "hidden and weight", op);
  v.n_rows = t.n_rows();
  v.hidden_size = t.hidden_size();
  v.vocab = t.vocab();
  v.labels = labels.data_ptr();
  v.label_type = c_index(labels);
  v.chunk_bytes = static_cast<size_t>(chunk_bytes);
  // torch's handle, already bound to the current stream and its workspace.
  v.cublas_handle = at::cuda::getCurrentCUDABlasHandle();
  return v;
}

/// The C ABI's hidden states, projection and token rows with the sequences.
geopref_linear_inputs c_linear(const linear_tensors& t, const Tensor& labels,
                               const Tensor& offsets, int64_t chunk_bytes, const char* op) {
  geopref_linear_inputs in = c_linear_view<geopref_linear_inputs>(t, labels, chunk_bytes, op);
  in.offsets = offsets.data_ptr();
  in.offset_type = c_index(offsets);
  in.n_seqs = offsets.size(0) - 1;
  return in;
}

/// The C ABI's rows of the per-token primitive from hidden states.
geopref_linear_token_rows c_linear_rows(const linear_tensors& t, const Tensor& labels,
                                        int64_t ignore_index, int64_t chunk_bytes, const char* op) {
  geopref_linear_token_rows r = c_linear_view<geopref_linear_token_rows>(t, labels, chunk_bytes, op);
  r.ignore_index = ignore_index;
  return r;
}

/// The gradients the C ABI writes: grad_hidden and grad_weight in the input
/// dtype (fresh: the call overwrites, autograd accumulates .grad itself),
/// grad_bias in float32 (the library's), returned in the bias's dtype.
struct cuda_grads {
  std::array<bool, 3> mask;
  Tensor hidden, weight, bias;
  cuda_grads(const linear_tensors& t, std::array<bool, 3> m) : mask(effective_mask(m, t)) {
    hidden = mask[0] ? at::empty({t.n_rows(), t.hidden_size()}, t.hidden.options())
                     : empty_grad(t.hidden);
    weight = mask[1] ? at::empty({t.vocab(), t.hidden_size()}, t.weight.options())
                     : empty_grad(t.weight);
    bias = mask[2] ? at::empty({t.vocab()}, t.hidden.options().dtype(at::kFloat))
                   : empty_grad(t.hidden);
  }
  bool any() const { return mask[0] || mask[1] || mask[2]; }
  template <class Args>
  void fill(Args& a) const {
    a.grad_hidden = mask[0] ? hidden.data_ptr() : nullptr;
    a.grad_weight = mask[1] ? weight.data_ptr() : nullptr;
    a.grad_bias = mask[2] ? bias.data_ptr<float>() : nullptr;
    a.grad_weight_float32 = 0;
    a.accumulate = 0;
  }
  grads3 result(const linear_tensors& t) const {
    return {hidden, weight, mask[2] ? bias.to(t.bias.scalar_type()) : bias};
  }
};

/// What the pref-loss steps from hidden states (linear_step_cuda,
/// vocab_linear_cuda) share: the logit transform, the device made current,
/// the inputs checked (tensors, pairs, the caller's accumulators, which take
/// the weight's and bias's gradients out of grad_mask, the upstream
/// gradient), the outputs, and geopref_linear_train_args over them. Must
/// outlive the call.
struct cuda_linear_train {
  geopref::logit_transform tr;
  c10::cuda::CUDAGuard guard;
  linear_tensors t;
  pair_tensors pr;
  accumulators acc;
  std::array<bool, 3> grad_mask;
  c_step_outputs out;
  geopref_linear_train_args a;
  cuda_linear_train(const Tensor* upstream, const Tensor& hidden, const Tensor& weight,
                    const optional<Tensor>& bias, const Tensor& labels, const Tensor& offsets,
                    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
                    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
                    const optional<Tensor>& token_weights, const geopref::options& opt,
                    int64_t chunk_bytes, std::array<bool, 3> mask,
                    c10::ArrayRef<double> logit_transform,
                    const optional<Tensor>& grad_weight_acc,
                    const optional<Tensor>& grad_bias_acc, const char* op)
      : tr(to_logit_transform(logit_transform, op)),
        guard(hidden.device()),
        t(check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op)),
        pr(t.hidden, offsets.size(0) - 1, pairs, soft_labels, ref_logps, weights, token_weights,
           at::kFloat, op),
        acc(check_accumulators(grad_weight_acc, grad_bias_acc, t, op)),
        grad_mask(mask),
        out(t.hidden, opt, pr.n_pairs, offsets.size(0) - 1, /*with_counts=*/false, upstream,
            "the device of hidden", op) {
    if (acc.any()) grad_mask[1] = grad_mask[2] = false;  // into the accumulators instead
    geopref_linear_train_args_init(&a);
    a.in = c_linear(t, labels, offsets, chunk_bytes, op);
    a.logit_transform = c_transform(tr);
    pr.fill(a, a.in.token_weights);
    out.fill(a);
  }
  /// The gradients' buffers: `g` (fresh), and the accumulators (added to).
  void fill_grads(const cuda_grads& g) {
    g.fill(a);
    c_accumulators(a, acc, t);
  }
};

/// linear_pref_loss (upstream null: gradients at upstream 1),
/// linear_pref_loss_grad (upstream given, on the device: no host sync) and,
/// with accumulators, linear_pref_loss_accumulate (the library's
/// `accumulate`: grad_weight, grad_bias added to the caller's buffers, in
/// float32 with grad_weight_float32 when the weight's is).
step_result linear_step_cuda(const Tensor* upstream, GEOPREF_LINEAR_PARAMS, const char* op,
                             const optional<Tensor>& grad_weight_acc,
                             const optional<Tensor>& grad_bias_acc, bool* one_pass = nullptr) {
  const geopref::options opt = to_options(options, op);
  cuda_linear_train step(upstream, hidden, weight, bias, labels, offsets, pairs, soft_labels,
                         ref_logps, weights, token_weights, opt, chunk_bytes, grad_mask,
                         logit_transform, grad_weight_acc, grad_bias_acc, op);
  const linear_tensors& t = step.t;
  geopref_linear_train_args& a = step.a;
  // The one-pass path's host copies (CPU int64, checked here for shape and
  // dtype; their values against the device arrays by the library, which
  // records host_layout_mismatch for `check` to report). Null: two passes.
  const auto [host_off, host_pr] =
      check_host_layout(host_offsets, host_pairs, offsets, pairs, /*values=*/false, op);
  a.host_offsets = host_off.defined() ? host_off.data_ptr<int64_t>() : nullptr;
  a.host_pairs = host_pr.defined() ? host_pr.data_ptr<int64_t>() : nullptr;
  const geopref_options copt = c_options(opt);
  if (one_pass != nullptr) {
    // linear_one_pass: the host-side query only. It reads which gradients
    // are asked for, not their memory: the inputs' own pointers stand in for
    // the gradients (never written), so the query allocates nothing.
    const auto m = effective_mask(step.grad_mask, t);
    a.grad_hidden = m[0] ? t.hidden.data_ptr() : nullptr;
    a.grad_weight = m[1] ? t.weight.data_ptr() : nullptr;
    a.grad_bias = m[2] ? static_cast<float*>(t.bias.data_ptr()) : nullptr;
    int on = 0;
    check_status(geopref_fused_linear_one_pass(&a, &copt, &on), op);
    *one_pass = on != 0;
    return {};
  }
  const cuda_grads g(t, step.grad_mask);
  step.fill_grads(g);
  launch(a, &copt, t.hidden, check, geopref_fused_linear_step, op);
  const auto [gh, gw, gb] = g.result(t);
  return {step.out.value, step.out.seq, step.out.metrics, gh, gw, gb, step.out.sums};
}

bool linear_one_pass_cuda(GEOPREF_LINEAR_PARAMS) {
  bool on = false;
  linear_step_cuda(nullptr, GEOPREF_LINEAR_ARGS, "linear_one_pass", {}, {}, &on);
  return on;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_sequence_logps_cuda(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias, const Tensor& labels,
    const Tensor& offsets, const optional<Tensor>& token_weights, c10::ArrayRef<double> options,
    int64_t chunk_bytes, bool check, c10::ArrayRef<double> logit_transform) {
  const char* op = "linear_sequence_logps";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const int64_t N = t.n_rows(), S = offsets.size(0) - 1;
  const Tensor tw = cuda_token_weights(token_weights, t.hidden, op);
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  Tensor seq = at::empty({S}, f32), lse = at::empty({N}, f32);
  Tensor counts = at::empty({S}, t.hidden.options().dtype(at::kLong));
  geopref_linear_logps_args a;
  geopref_linear_logps_args_init(&a);
  a.in = c_linear(t, labels, offsets, chunk_bytes, op);
  a.in.token_weights = data_or_null<float>(tw);
  a.logit_transform = c_transform(tr);
  a.seq_logps = seq.data_ptr<float>();
  a.seq_counts = counts.data_ptr<int64_t>();
  a.lse = lse.data_ptr<float>();
  launch(a, c_options(opt), t.hidden, check, geopref_fused_linear_logps, op);
  return {seq, lse, counts, seq_scale(counts, opt, at::kFloat)};
}

/// A C argument struct of the per-token primitive from hidden states,
/// initialised by `init`, with its rows and the logit transform set.
template <class Args>
Args c_linear_rows_args(void (*init)(Args*), const linear_tensors& t, const Tensor& labels,
                        int64_t ignore_index, int64_t chunk_bytes,
                        const geopref::logit_transform& tr, const char* op) {
  Args a;
  init(&a);
  a.rows = c_linear_rows(t, labels, ignore_index, chunk_bytes, op);
  a.logit_transform = c_transform(tr);
  return a;
}

/// geopref_linear_token_logps_grad for labels y, lse and g [N] (float32 on
/// the device); shared by linear_token_logps_grad and linear_sequence_logps_grad.
/// Optionally the entropy's upstream (e_t and the forward's H_t, float32 [N]:
/// ABI 1.2's grad_entropy / entropy) and the caller's accumulators
/// (linear_token_logps_accumulate: `accumulate`, and grad_weight_float32 for
/// a float32 grad_weight_acc).
grads3 linear_rows_grad_cuda(const linear_tensors& t, const Tensor& y, const Tensor& lse,
                             const Tensor& g_rows, int64_t ignore_index, int64_t chunk_bytes,
                             std::array<bool, 3> grad_mask, bool check,
                             const geopref::logit_transform& tr, const char* op,
                             const std::pair<Tensor, Tensor>& entropy_up = {},
                             const accumulators* acc = nullptr) {
  const bool accumulating = acc != nullptr && acc->any();
  if (accumulating) grad_mask[1] = grad_mask[2] = false;  // into the accumulators instead
  const cuda_grads g(t, grad_mask);
  if (!g.any() && !accumulating) return g.result(t);
  const Tensor l = lse.to(at::kFloat).contiguous(), gt = g_rows.to(at::kFloat).contiguous();
  auto a = c_linear_rows_args(geopref_linear_token_grad_args_init, t, y, ignore_index, chunk_bytes,
                              tr, op);
  a.lse = l.data_ptr<float>();
  a.grad_token_logps = gt.data_ptr<float>();
  a.grad_entropy = entropy_up.first.defined() ? entropy_up.first.data_ptr<float>() : nullptr;
  a.entropy = entropy_up.second.defined() ? entropy_up.second.data_ptr<float>() : nullptr;
  g.fill(a);
  if (accumulating) c_accumulators(a, *acc, t);
  launch(a, t.hidden, check, geopref_linear_token_logps_grad, op);
  return g.result(t);
}

grads3 linear_sequence_logps_grad_cuda(GEOPREF_LINEAR_SEQUENCE_GRAD_PARAMS) {
  const char* op = "linear_sequence_logps_grad";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const int64_t N = t.n_rows(), S = offsets.size(0) - 1;
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad_seq.dim() == 1 &&
                        grad_seq.size(0) == S && lse.device() == t.hidden.device() &&
                        grad_seq.device() == t.hidden.device(),
                    "geopref.", op, ": lse must be [N] = [", N, "] and grad_seq [S] = [", S,
                    "] on the device of hidden, got ", lse.sizes(), " and ", grad_seq.sizes());
  const Tensor tw = cuda_token_weights(token_weights, t.hidden, op);
  // g_t = grad_seq of the row's sequence (times w_t); rows outside every sequence unscored.
  const auto [g_rows, y] = rows_of_sequences(labels, offsets, grad_seq.to(at::kFloat),
                                             ignore_index, tw);
  return linear_rows_grad_cuda(t, y.contiguous(), lse, g_rows, ignore_index, chunk_bytes,
                               grad_mask, check, tr, op);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_token_logps_cuda(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias, const Tensor& labels,
    int64_t ignore_index, bool entropy, int64_t chunk_bytes, bool check,
    c10::ArrayRef<double> logit_transform, bool log_sum_sq_probs, bool mean_logits,
    bool is_top1) {
  const char* op = "linear_token_logps";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear_rows(hidden, weight, bias, labels, chunk_bytes, op);
  const int64_t N = t.n_rows();
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  Tensor logp = at::empty({N}, f32), lse = at::empty({N}, f32);
  // ABI 1.2's statistics beside the entropy: NULL when not asked for.
  const token_stats stats(N, t.hidden, at::kFloat, entropy, log_sum_sq_probs, mean_logits,
                          is_top1);
  auto a = c_linear_rows_args(geopref_linear_token_logps_args_init, t, labels, ignore_index,
                              chunk_bytes, tr, op);
  a.token_logps = logp.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  stats.fill(a);
  launch(a, t.hidden, check, geopref_linear_token_logps, op);
  const auto [h, lssp, mean, top1] = stats.result(at::kFloat);
  return {logp, lse, h, lssp, mean, top1};
}

/// linear_token_logps_grad and, with accumulators, linear_token_logps_accumulate.
grads3 linear_token_grad_cuda(GEOPREF_LINEAR_TOKEN_GRAD_PARAMS,
                              const optional<Tensor>& grad_weight_acc,
                              const optional<Tensor>& grad_bias_acc, const char* op) {
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear_rows(hidden, weight, bias, labels, chunk_bytes, op);
  const int64_t N = t.n_rows();
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad.dim() == 1 && grad.size(0) == N &&
                        lse.device() == t.hidden.device() && grad.device() == t.hidden.device(),
                    "geopref.", op, ": lse and grad must be [N] = [", N,
                    "] on the device of hidden, got ", lse.sizes(), " and ", grad.sizes());
  const auto eh = entropy_upstream(grad_entropy, entropy, N, t.hidden, at::kFloat, op);
  const accumulators acc = check_accumulators(grad_weight_acc, grad_bias_acc, t, op);
  return linear_rows_grad_cuda(t, labels.contiguous(), lse, grad, ignore_index, chunk_bytes,
                               grad_mask, check, tr, op, eh, &acc);
}

GEOPREF_LINEAR_KERNELS(cuda, linear_step_cuda, linear_token_grad_cuda)

// ---- Vocab-parallel fused linear (ops_vocab.cpp documents the operators):
// weight and bias are this rank's rows W_r [V_r, H], b_r [V_r].

Tensor vocab_linear_stats_cuda(const Tensor& hidden, const Tensor& weight,
                               const optional<Tensor>& bias, const Tensor& labels,
                               const Tensor& offsets, c10::IntArrayRef vocab_slice,
                               c10::ArrayRef<double> options, int64_t chunk_bytes, bool check,
                               c10::ArrayRef<double> logit_transform) {
  const char* op = "vocab_linear_stats";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const auto sl = to_vocab_slice(vocab_slice, t.vocab(), op);
  geopref_vocab_linear_stats_args a;
  geopref_vocab_linear_stats_args_init(&a);
  a.in = c_linear(t, labels, offsets, chunk_bytes, op);
  a.logit_transform = c_transform(tr);
  a.slice = c_slice(sl);
  Tensor records = c_records_out(t.n_rows(), t.hidden, &a.records);
  launch(a, c_options(opt), t.hidden, check, geopref_vocab_linear_stats, op);
  return records;
}

/// vocab_linear_step (upstream null: gradients at upstream 1, or the
/// optional grad_output) and, with accumulators, vocab_linear_accumulate
/// (the library's `accumulate`, and grad_weight_float32 for a float32
/// grad_weight_acc).
vocab_linear_result vocab_linear_cuda(const Tensor* upstream, GEOPREF_VOCAB_LINEAR_PARAMS,
                                      const char* op, const optional<Tensor>& grad_weight_acc,
                                      const optional<Tensor>& grad_bias_acc) {
  const geopref::options opt = to_options(options, op);
  cuda_linear_train step(upstream, hidden, weight, bias, labels, offsets, pairs, soft_labels,
                         ref_logps, weights, token_weights, opt, chunk_bytes, grad_mask,
                         logit_transform, grad_weight_acc, grad_bias_acc, op);
  const linear_tensors& t = step.t;
  const auto sl = to_vocab_slice(vocab_slice, t.vocab(), op);
  const cuda_grads g(t, step.grad_mask);
  step.fill_grads(g);
  geopref_vocab_linear_train_args a;
  geopref_vocab_linear_train_args_init(&a);
  a.train = &step.a;
  a.slice = c_slice(sl);
  a.records = c_gathered(records, sl.n_ranks, t.n_rows(), t.hidden, op);
  launch(a, c_options(opt), t.hidden, check, geopref_vocab_linear_step, op);
  const auto [gh, gw, gb] = g.result(t);
  return {step.out.value, step.out.seq, step.out.metrics, step.out.sums, gh, gw, gb};
}

GEOPREF_VOCAB_LINEAR_KERNELS(cuda, vocab_linear_cuda)

}  // namespace
}  // namespace geopref_torch

TORCH_LIBRARY_IMPL(geopref, CUDA, m) {
  GEOPREF_TORCH_VOCAB_LINEAR_OPS(GEOPREF_TORCH_CUDA_IMPL)
  GEOPREF_TORCH_LINEAR_OPS(GEOPREF_TORCH_CUDA_IMPL)
}
