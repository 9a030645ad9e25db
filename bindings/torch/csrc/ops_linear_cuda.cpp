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
using grads3 = std::tuple<Tensor, Tensor, Tensor>;

int c_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return GEOPREF_FLOAT32;
    case at::kHalf: return GEOPREF_FLOAT16;
    case at::kBFloat16: return GEOPREF_BFLOAT16;
    default:
      TORCH_CHECK_TYPE(false, "geopref.", op,
                       ": CUDA hidden and weight must be float32, float16 or bfloat16 (float64 "
                       "is CPU only), got ", t.scalar_type());
  }
  return -1;
}

int c_index(const Tensor& t) { return t.scalar_type() == at::kInt ? GEOPREF_INT32 : GEOPREF_INT64; }


/// The C ABI's hidden states, projection and token rows. The tensors must
/// outlive the call.
geopref_linear_inputs c_linear(const linear_tensors& t, const Tensor& labels,
                               const Tensor& offsets, int64_t chunk_bytes, const char* op) {
  geopref_linear_inputs in{};
  in.hidden = t.hidden.data_ptr();
  in.ld_hidden = row_stride(t.hidden);
  in.weight = t.weight.data_ptr();
  in.ld_weight = row_stride(t.weight);
  in.bias = t.bias.defined() ? t.bias.data_ptr() : nullptr;
  in.dtype = c_dtype(t.hidden, op);
  in.n_rows = t.n_rows();
  in.hidden_size = t.hidden_size();
  in.vocab = t.vocab();
  in.labels = labels.data_ptr();
  in.label_type = c_index(labels);
  in.offsets = offsets.data_ptr();
  in.offset_type = c_index(offsets);
  in.n_seqs = offsets.size(0) - 1;
  in.chunk_bytes = static_cast<size_t>(chunk_bytes);
  // torch's handle, already bound to the current stream and its workspace.
  in.cublas_handle = at::cuda::getCurrentCUDABlasHandle();
  return in;
}

geopref_stream_t current_stream() {
  return reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
}

/// One C entry the two-phase way (size query, workspace from the caching
/// allocator, launch, and with `check` the recorded device status).
template <class Args, class Entry>
void launch(const Args& a, const geopref_options* opt, const Tensor& like, bool check,
            Entry entry, const char* op) {
  size_t bytes = 0;
  const geopref_stream_t stream = current_stream();
  check_status(entry(nullptr, &bytes, &a, opt, stream), op);
  // At least one byte: a null workspace would make the second call a size query.
  Tensor ws = at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                        like.options().dtype(at::kByte));
  check_status(entry(ws.data_ptr(), &bytes, &a, opt, stream), op);
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(ws.data_ptr(), stream, &recorded), op);
    check_status(recorded, op);
  }
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

const float* float_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

/// The optional token weights [N] as the C ABI takes them (float32; undefined: all 1).
Tensor cuda_token_weights(const optional<Tensor>& tw, const Tensor& like, const char* op) {
  return optional_vector(tw, like.size(0), like, at::kFloat, "token_weights", op);
}

/// Pairs, soft labels, reference log-probs, weights and token weights as the
/// C ABI takes them (int64, float32).
struct cuda_pairs {
  Tensor pairs, soft, ref_logps, weights, token_weights;
  int64_t n_pairs;
  cuda_pairs(const Tensor& like, int64_t n_seqs, const optional<Tensor>& p,
             const optional<Tensor>& s, const optional<Tensor>& r, const optional<Tensor>& w,
             const optional<Tensor>& tw, const char* op)
      : pairs(optional_pairs(p, like, op)), n_pairs(pair_count(pairs, n_seqs)) {
    soft = optional_vector(s, n_pairs, like, at::kFloat, "soft_labels", op);
    ref_logps = optional_vector(r, n_seqs, like, at::kFloat, "ref_logps", op);
    weights = optional_vector(w, n_pairs, like, at::kFloat, "weights", op);
    token_weights = cuda_token_weights(tw, like, op);
  }
  /// After a.in is set (it fills in.token_weights).
  void fill(geopref_linear_train_args& a) const {
    a.n_pairs = n_pairs;
    a.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
    a.soft_labels = float_or_null(soft);
    a.ref_logps = float_or_null(ref_logps);
    a.weights = float_or_null(weights);
    a.in.token_weights = float_or_null(token_weights);
  }
};

using step_result = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

/// linear_pref_loss (upstream null: gradients at upstream 1),
/// linear_pref_loss_grad (upstream given, on the device: no host sync) and,
/// with accumulators, linear_pref_loss_accumulate (the library's
/// `accumulate`: grad_weight, grad_bias added to the caller's buffers, in
/// float32 with grad_weight_float32 when the weight's is).
step_result linear_step_cuda(
    const Tensor* upstream, const Tensor& hidden, const Tensor& weight,
    const optional<Tensor>& bias, const Tensor& labels, const Tensor& offsets,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::ArrayRef<double> options, int64_t chunk_bytes,
    std::array<bool, 3> grad_mask, bool check, c10::ArrayRef<double> logit_transform,
    const optional<Tensor>& host_offsets, const optional<Tensor>& host_pairs, const char* op,
    bool* one_pass = nullptr, const optional<Tensor>& grad_weight_acc = {},
    const optional<Tensor>& grad_bias_acc = {}) {
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const int64_t S = offsets.size(0) - 1;
  const cuda_pairs pr(t.hidden, S, pairs, soft_labels, ref_logps, weights, token_weights, op);
  const accumulators acc = check_accumulators(grad_weight_acc, grad_bias_acc, t, op);
  if (acc.any()) grad_mask[1] = grad_mask[2] = false;  // into the accumulators instead
  const bool per_pair = opt.reduce == geopref::reduction::none;
  Tensor up;
  if (upstream != nullptr) {
    const int64_t n_up = per_pair ? pr.n_pairs : 1;
    TORCH_CHECK_VALUE(upstream->numel() == n_up && upstream->device() == t.hidden.device(),
                      "geopref.", op, ": grad_output must hold ", n_up,
                      " value(s) on the device of hidden, got ", upstream->sizes());
    up = upstream->to(at::kFloat).contiguous().reshape({-1});
  }
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  Tensor value = per_pair ? at::empty({pr.n_pairs}, f32) : at::empty({}, f32);
  Tensor seq = at::empty({S}, f32);
  Tensor metrics = at::empty({7}, t.hidden.options().dtype(at::kDouble));
  Tensor sums = at::empty({METRIC_SUMS}, t.hidden.options().dtype(at::kDouble));
  geopref_linear_train_args a;
  geopref_linear_train_args_init(&a);
  a.in = c_linear(t, labels, offsets, chunk_bytes, op);
  a.logit_transform = c_transform(tr);
  // The one-pass path's host copies (CPU int64, checked here for shape and
  // dtype; their values against the device arrays by the library, which
  // records host_layout_mismatch for `check` to report). Null: two passes.
  const auto [host_off, host_pr] =
      check_host_layout(host_offsets, host_pairs, offsets, pairs, /*values=*/false, op);
  a.host_offsets = host_off.defined() ? host_off.data_ptr<int64_t>() : nullptr;
  a.host_pairs = host_pr.defined() ? host_pr.data_ptr<int64_t>() : nullptr;
  pr.fill(a);
  if (up.defined()) a.grad_output = up.data_ptr<float>();
  a.loss = value.data_ptr<float>();
  a.seq_logps = seq.data_ptr<float>();
  a.stats = reinterpret_cast<geopref_metrics*>(metrics.data_ptr<double>());
  a.stat_sums = reinterpret_cast<geopref_metric_sums*>(sums.data_ptr<double>());
  const geopref_options copt = c_options(opt);
  if (one_pass != nullptr) {
    // linear_one_pass: the host-side query only. It reads which gradients
    // are asked for, not their memory: the inputs' own pointers stand in for
    // the gradients (never written), so the query allocates nothing.
    const auto m = effective_mask(grad_mask, t);
    a.grad_hidden = m[0] ? t.hidden.data_ptr() : nullptr;
    a.grad_weight = m[1] ? t.weight.data_ptr() : nullptr;
    a.grad_bias = m[2] ? static_cast<float*>(t.bias.data_ptr()) : nullptr;
    int on = 0;
    check_status(geopref_fused_linear_one_pass(&a, &copt, &on), op);
    *one_pass = on != 0;
    return {};
  }
  const cuda_grads g(t, grad_mask);
  g.fill(a);
  if (acc.any()) {
    a.grad_weight = acc.weight.defined() ? acc.weight.data_ptr() : nullptr;
    a.ld_grad_weight = t.hidden_size();
    a.grad_weight_float32 = acc.weight_float32() ? 1 : 0;
    a.grad_bias = acc.bias.defined() ? acc.bias.data_ptr<float>() : nullptr;
    a.accumulate = 1;
  }
  launch(a, &copt, t.hidden, check, geopref_fused_linear_step, op);
  const auto [gh, gw, gb] = g.result(t);
  return {value, seq, metrics, gh, gw, gb, sums};
}

// The arguments every fused-linear pref-loss operator takes, in the schema's
// order (ops_linear.cpp, GEOPREF_LINEAR_PREF_LOSS_ARGS).
#define GEOPREF_LINEAR_PARAMS                                                                 \
  const Tensor &hidden, const Tensor &weight, const optional<Tensor> &bias,                   \
      const Tensor &labels, const Tensor &offsets, const optional<Tensor> &pairs,             \
      const optional<Tensor> &soft_labels, const optional<Tensor> &ref_logps,                 \
      const optional<Tensor> &weights, const optional<Tensor> &token_weights,                 \
      c10::ArrayRef<double> options, int64_t chunk_bytes, std::array<bool, 3> grad_mask,      \
      bool check, c10::ArrayRef<double> logit_transform, const optional<Tensor> &host_offsets, \
      const optional<Tensor> &host_pairs
#define GEOPREF_LINEAR_ARGS                                                                    \
  hidden, weight, bias, labels, offsets, pairs, soft_labels, ref_logps, weights, token_weights, \
      options, chunk_bytes, grad_mask, check, logit_transform, host_offsets, host_pairs

step_result linear_pref_loss_cuda(GEOPREF_LINEAR_PARAMS) {
  return linear_step_cuda(nullptr, GEOPREF_LINEAR_ARGS, "linear_pref_loss");
}

grads3 linear_pref_loss_grad_cuda(const Tensor& grad_output, GEOPREF_LINEAR_PARAMS) {
  const auto r = linear_step_cuda(&grad_output, GEOPREF_LINEAR_ARGS, "linear_pref_loss_grad");
  return {std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

Tensor linear_pref_loss_accumulate_cuda(const Tensor& grad_output, GEOPREF_LINEAR_PARAMS,
                                        const optional<Tensor>& grad_weight_acc,
                                        const optional<Tensor>& grad_bias_acc) {
  const auto r = linear_step_cuda(&grad_output, GEOPREF_LINEAR_ARGS,
                                  "linear_pref_loss_accumulate", nullptr, grad_weight_acc,
                                  grad_bias_acc);
  return std::get<3>(r);
}

bool linear_one_pass_cuda(GEOPREF_LINEAR_PARAMS) {
  bool on = false;
  linear_step_cuda(nullptr, GEOPREF_LINEAR_ARGS, "linear_one_pass", &on);
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
  a.in.token_weights = float_or_null(tw);
  a.logit_transform = c_transform(tr);
  a.seq_logps = seq.data_ptr<float>();
  a.seq_counts = counts.data_ptr<int64_t>();
  a.lse = lse.data_ptr<float>();
  const geopref_options copt = c_options(opt);
  launch(a, &copt, t.hidden, check, geopref_fused_linear_logps, op);
  return {seq, lse, counts, seq_scale(counts, opt, at::kFloat)};
}

/// The C ABI's rows of the per-token primitive from hidden states; `labels`
/// must outlive the call.
geopref_linear_token_rows c_linear_rows(const linear_tensors& t, const Tensor& labels,
                                        int64_t ignore_index, int64_t chunk_bytes, const char* op) {
  geopref_linear_token_rows r{};
  r.hidden = t.hidden.data_ptr();
  r.ld_hidden = row_stride(t.hidden);
  r.weight = t.weight.data_ptr();
  r.ld_weight = row_stride(t.weight);
  r.bias = t.bias.defined() ? t.bias.data_ptr() : nullptr;
  r.dtype = c_dtype(t.hidden, op);
  r.n_rows = t.n_rows();
  r.hidden_size = t.hidden_size();
  r.vocab = t.vocab();
  r.labels = labels.data_ptr();
  r.label_type = c_index(labels);
  r.ignore_index = ignore_index;
  r.chunk_bytes = static_cast<size_t>(chunk_bytes);
  r.cublas_handle = at::cuda::getCurrentCUDABlasHandle();
  return r;
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
  geopref_linear_token_grad_args a;
  geopref_linear_token_grad_args_init(&a);
  a.rows = c_linear_rows(t, y, ignore_index, chunk_bytes, op);
  a.logit_transform = c_transform(tr);
  a.lse = l.data_ptr<float>();
  a.grad_token_logps = gt.data_ptr<float>();
  a.grad_entropy = entropy_up.first.defined() ? entropy_up.first.data_ptr<float>() : nullptr;
  a.entropy = entropy_up.second.defined() ? entropy_up.second.data_ptr<float>() : nullptr;
  g.fill(a);
  if (accumulating) {
    a.grad_weight = acc->weight.defined() ? acc->weight.data_ptr() : nullptr;
    a.ld_grad_weight = t.hidden_size();
    a.grad_weight_float32 = acc->weight_float32() ? 1 : 0;
    a.grad_bias = acc->bias.defined() ? acc->bias.data_ptr<float>() : nullptr;
    a.accumulate = 1;
  }
  auto entry = [](void* ws, size_t* bytes, const geopref_linear_token_grad_args* args,
                  const geopref_options*, geopref_stream_t stream) {
    return geopref_linear_token_logps_grad(ws, bytes, args, stream);
  };
  launch(a, nullptr, t.hidden, check, entry, op);
  return g.result(t);
}

grads3 linear_sequence_logps_grad_cuda(const Tensor& hidden, const Tensor& weight,
                                       const optional<Tensor>& bias, const Tensor& labels,
                                       const Tensor& offsets, const optional<Tensor>& token_weights,
                                       const Tensor& lse, const Tensor& grad_seq,
                                       int64_t ignore_index, int64_t chunk_bytes,
                                       std::array<bool, 3> grad_mask, bool check,
                                       c10::ArrayRef<double> logit_transform) {
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
  geopref_linear_token_logps_args a;
  geopref_linear_token_logps_args_init(&a);
  a.rows = c_linear_rows(t, labels, ignore_index, chunk_bytes, op);
  a.logit_transform = c_transform(tr);
  a.token_logps = logp.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  stats.fill(a);
  auto entry = [](void* ws, size_t* bytes, const geopref_linear_token_logps_args* args,
                  const geopref_options*, geopref_stream_t stream) {
    return geopref_linear_token_logps(ws, bytes, args, stream);
  };
  launch(a, nullptr, t.hidden, check, entry, op);
  const auto [h, lssp, mean, top1] = stats.result(at::kFloat);
  return {logp, lse, h, lssp, mean, top1};
}

/// linear_token_logps_grad and, with accumulators, linear_token_logps_accumulate.
grads3 linear_token_grad_cuda(const Tensor& hidden, const Tensor& weight,
                              const optional<Tensor>& bias, const Tensor& labels,
                              const Tensor& lse, const Tensor& grad, int64_t ignore_index,
                              int64_t chunk_bytes, std::array<bool, 3> grad_mask, bool check,
                              c10::ArrayRef<double> logit_transform,
                              const optional<Tensor>& grad_entropy,
                              const optional<Tensor>& entropy,
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

grads3 linear_token_logps_grad_cuda(const Tensor& hidden, const Tensor& weight,
                                    const optional<Tensor>& bias, const Tensor& labels,
                                    const Tensor& lse, const Tensor& grad, int64_t ignore_index,
                                    int64_t chunk_bytes, std::array<bool, 3> grad_mask,
                                    bool check, c10::ArrayRef<double> logit_transform,
                                    const optional<Tensor>& grad_entropy,
                                    const optional<Tensor>& entropy) {
  return linear_token_grad_cuda(hidden, weight, bias, labels, lse, grad, ignore_index,
                                chunk_bytes, grad_mask, check, logit_transform, grad_entropy,
                                entropy, {}, {}, "linear_token_logps_grad");
}

Tensor linear_token_logps_accumulate_cuda(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias, const Tensor& labels,
    const Tensor& lse, const Tensor& grad, int64_t ignore_index, int64_t chunk_bytes,
    std::array<bool, 3> grad_mask, bool check, c10::ArrayRef<double> logit_transform,
    const optional<Tensor>& grad_entropy, const optional<Tensor>& entropy,
    const optional<Tensor>& grad_weight_acc, const optional<Tensor>& grad_bias_acc) {
  return std::get<0>(linear_token_grad_cuda(hidden, weight, bias, labels, lse, grad, ignore_index,
                                            chunk_bytes, grad_mask, check, logit_transform,
                                            grad_entropy, entropy, grad_weight_acc, grad_bias_acc,
                                            "linear_token_logps_accumulate"));
}

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
  const geopref_options copt = c_options(opt);
  launch(a, &copt, t.hidden, check, geopref_vocab_linear_stats, op);
  return records;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> vocab_linear_step_cuda(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias,
    const Tensor& labels, const Tensor& offsets, const Tensor& records,
    const optional<Tensor>& pairs, const optional<Tensor>& soft_labels,
    const optional<Tensor>& ref_logps, const optional<Tensor>& weights,
    const optional<Tensor>& token_weights, c10::IntArrayRef vocab_slice,
    c10::ArrayRef<double> options, int64_t chunk_bytes, std::array<bool, 3> grad_mask,
    bool check, c10::ArrayRef<double> logit_transform, const optional<Tensor>& grad_output) {
  const char* op = "vocab_linear_step";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const auto sl = to_vocab_slice(vocab_slice, t.vocab(), op);
  const int64_t S = offsets.size(0) - 1;
  const cuda_pairs pr(t.hidden, S, pairs, soft_labels, ref_logps, weights, token_weights, op);
  const bool per_pair = opt.reduce == geopref::reduction::none;
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  Tensor value = per_pair ? at::empty({pr.n_pairs}, f32) : at::empty({}, f32);
  Tensor seq = at::empty({S}, f32);
  Tensor metrics = at::empty({7}, t.hidden.options().dtype(at::kDouble));
  Tensor sums = at::empty({METRIC_SUMS}, t.hidden.options().dtype(at::kDouble));
  Tensor up;
  geopref_linear_train_args tr_args;
  geopref_linear_train_args_init(&tr_args);
  tr_args.in = c_linear(t, labels, offsets, chunk_bytes, op);
  tr_args.logit_transform = c_transform(tr);
  pr.fill(tr_args);
  if (grad_output.has_value() && grad_output->defined()) {
    const int64_t n_up = per_pair ? pr.n_pairs : 1;
    TORCH_CHECK_VALUE(grad_output->numel() == n_up && grad_output->device() == t.hidden.device(),
                      "geopref.", op, ": grad_output must hold ", n_up,
                      " value(s) on the device of hidden, got ", grad_output->sizes());
    up = grad_output->to(at::kFloat).contiguous().reshape({-1});
    tr_args.grad_output = up.data_ptr<float>();
  }
  tr_args.loss = value.data_ptr<float>();
  tr_args.seq_logps = seq.data_ptr<float>();
  tr_args.stats = reinterpret_cast<geopref_metrics*>(metrics.data_ptr<double>());
  tr_args.stat_sums = reinterpret_cast<geopref_metric_sums*>(sums.data_ptr<double>());
  const cuda_grads g(t, grad_mask);
  g.fill(tr_args);
  geopref_vocab_linear_train_args a;
  geopref_vocab_linear_train_args_init(&a);
  a.train = &tr_args;
  a.slice = c_slice(sl);
  a.records = c_gathered(records, sl.n_ranks, t.n_rows(), t.hidden, op);
  const geopref_options copt = c_options(opt);
  launch(a, &copt, t.hidden, check, geopref_vocab_linear_step, op);
  const auto [gh, gw, gb] = g.result(t);
  return {value, seq, metrics, sums, gh, gw, gb};
}

}  // namespace
}  // namespace geopref_torch

TORCH_LIBRARY_IMPL(geopref, CUDA, m) {
  m.impl("vocab_linear_stats", &geopref_torch::vocab_linear_stats_cuda);
  m.impl("vocab_linear_step", &geopref_torch::vocab_linear_step_cuda);
  m.impl("linear_pref_loss", &geopref_torch::linear_pref_loss_cuda);
  m.impl("linear_pref_loss_grad", &geopref_torch::linear_pref_loss_grad_cuda);
  m.impl("linear_pref_loss_accumulate", &geopref_torch::linear_pref_loss_accumulate_cuda);
  m.impl("linear_token_logps", &geopref_torch::linear_token_logps_cuda);
  m.impl("linear_token_logps_grad", &geopref_torch::linear_token_logps_grad_cuda);
  m.impl("linear_token_logps_accumulate", &geopref_torch::linear_token_logps_accumulate_cuda);
  m.impl("linear_one_pass", &geopref_torch::linear_one_pass_cuda);
  m.impl("linear_sequence_logps", &geopref_torch::linear_sequence_logps_cuda);
  m.impl("linear_sequence_logps_grad", &geopref_torch::linear_sequence_logps_grad_cuda);
}
