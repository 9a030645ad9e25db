// bindings/torch/geopref_torch.cpp — geopref as a PyTorch op.
//
// Registers two ops in the `geopref` namespace, both running on the current
// CUDA stream of the logits' device, through the C ABI (geopref/c_api.h;
// kernels/c_api.cu is compiled into the same extension by torch's tooling):
//
//   torch.ops.geopref.pref_loss(logits, labels, offsets, pairs?, soft_labels?,
//       ref_logps?, weights?, loss, beta, alpha, gamma, epsilon, tau,
//       average_logps, reduction, ignore_index, check)
//     -> (loss, seq_logps, metrics)
//   torch.ops.geopref.sequence_logps(logits, labels, offsets, average_logps,
//       ignore_index, check) -> seq_logps
//
// pref_loss is autograd-aware: the loss is differentiable with respect to the
// logits (only). For mean/sum the forward runs train_step without a gradient
// but keeps lse [N] and g_s [S] (upstream 1); the backward scales g_s by the
// upstream scalar (an [S] multiply) and calls logits_grad: one more read of
// the logits and one write of the gradient, so no [N, V] gradient is kept
// alive between forward and backward. For reduction none the upstream is per
// pair, so g_s cannot be rescaled afterwards: the backward runs train_step
// again with the upstream gradient as a device buffer.
// `check` reads the device-side status (a label out of range, bad offsets)
// after the call; that synchronises the stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <vector>

#include "geopref/c_api.h"

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int logits_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return GEOPREF_FLOAT32;
    case at::kHalf: return GEOPREF_FLOAT16;
    case at::kBFloat16: return GEOPREF_BFLOAT16;
    default: TORCH_CHECK(false, "geopref: logits must be float32, float16 or bfloat16");
  }
  return -1;
}

int index_type(const Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "geopref: ", what,
              " must be int32 or int64");
  return t.scalar_type() == at::kInt ? GEOPREF_INT32 : GEOPREF_INT64;
}

void check_status(geopref_status st) {
  TORCH_CHECK(st == GEOPREF_SUCCESS, "geopref: ", geopref_status_string(st));
}

// Everything that is not a tensor, as the op receives it.
struct config {
  std::string loss, reduction;
  double beta, alpha, gamma, epsilon, tau;
  bool average_logps;
  int64_t ignore_index;
  bool check;
};

geopref_options make_options(const config& c) {
  geopref_options o;
  geopref_options_init(&o);
  TORCH_CHECK(geopref_parse_loss(c.loss.c_str(), &o.loss), "geopref: unknown loss '", c.loss, "'");
  if (c.reduction == "mean") o.reduction = GEOPREF_REDUCTION_MEAN;
  else if (c.reduction == "sum") o.reduction = GEOPREF_REDUCTION_SUM;
  else if (c.reduction == "none") o.reduction = GEOPREF_REDUCTION_NONE;
  else TORCH_CHECK(false, "geopref: reduction must be mean, sum or none");
  o.beta = c.beta;
  o.alpha = c.alpha;
  o.gamma = c.gamma;
  o.epsilon = c.epsilon;
  o.tau = c.tau;
  o.average_logps = c.average_logps ? 1 : 0;
  o.ignore_index = c.ignore_index;
  return o;
}

// Fills the token part of the arguments; the tensors must outlive the call.
geopref_tokens make_tokens(const Tensor& logits, const Tensor& labels, const Tensor& offsets) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2, "geopref: logits must be a 2-D CUDA tensor [N, V]");
  TORCH_CHECK(logits.size(1) == 0 || logits.stride(1) == 1, "geopref: logits rows must be contiguous");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0) && labels.is_contiguous(),
              "geopref: labels must be contiguous [N]");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.is_contiguous(),
              "geopref: offsets must be contiguous [S + 1]");
  TORCH_CHECK(labels.device() == logits.device() && offsets.device() == logits.device(),
              "geopref: all tensors must be on the logits' device");
  geopref_tokens t{};
  t.logits = logits.data_ptr();
  t.logits_dtype = logits_dtype(logits);
  t.n_rows = logits.size(0);
  t.vocab = logits.size(1);
  t.ld = logits.size(0) > 1 ? logits.stride(0) : logits.size(1);
  t.labels = labels.data_ptr();
  t.label_type = index_type(labels, "labels");
  t.offsets = offsets.data_ptr();
  t.offset_type = index_type(offsets, "offsets");
  t.n_seqs = offsets.size(0) - 1;
  return t;
}

// Optional per-pair / per-sequence float input as a contiguous float32 tensor.
Tensor as_f32(const c10::optional<Tensor>& t, int64_t n, const Tensor& like, const char* what) {
  if (!t.has_value() || !t->defined()) return Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "geopref: ", what, " must have shape [", n, "]");
  return t->to(like.device(), at::kFloat).contiguous();
}

// One train step; grad_output (device, [1] or [P]) and grad (same shape and
// dtype as logits) only for the backward.
struct step_outputs {
  Tensor loss, seq_logps, metrics;
  Tensor lse, grad_seq;  // [N], [S] for logits_grad: forward of a mean/sum reduction only
};

step_outputs train_step(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                        const Tensor& pairs, const Tensor& soft, const Tensor& ref,
                        const Tensor& weights, const config& c, const Tensor& grad_output,
                        Tensor* grad) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const geopref_options opt = make_options(c);
  geopref_train_args a;
  geopref_train_args_init(&a);
  a.tokens = make_tokens(logits, labels, offsets);
  a.n_pairs = pairs.defined() ? pairs.size(0) : a.tokens.n_seqs / 2;
  a.pairs = pairs.defined() ? pairs.data_ptr<int64_t>() : nullptr;
  a.soft_labels = soft.defined() ? soft.data_ptr<float>() : nullptr;
  a.ref_logps = ref.defined() ? ref.data_ptr<float>() : nullptr;
  a.weights = weights.defined() ? weights.data_ptr<float>() : nullptr;

  const auto f32 = logits.options().dtype(at::kFloat);
  step_outputs out;
  out.loss = opt.reduction == GEOPREF_REDUCTION_NONE ? torch::empty({a.n_pairs}, f32)
                                                     : torch::empty({}, f32);
  out.seq_logps = torch::empty({a.tokens.n_seqs}, f32);
  out.metrics = torch::empty({7}, logits.options().dtype(at::kDouble));
  a.loss = out.loss.data_ptr<float>();
  a.seq_logps = out.seq_logps.data_ptr<float>();
  a.stats = reinterpret_cast<geopref_metrics*>(out.metrics.data_ptr<double>());
  if (grad != nullptr) {
    *grad = torch::empty_like(logits, at::MemoryFormat::Contiguous);
    a.grad_logits = grad->data_ptr();
    a.grad_ld = a.tokens.vocab;
    a.grad_output = grad_output.data_ptr<float>();
  } else if (opt.reduction != GEOPREF_REDUCTION_NONE) {
    out.lse = torch::empty({a.tokens.n_rows}, f32);
    out.grad_seq = torch::empty({a.tokens.n_seqs}, f32);
    a.lse = out.lse.data_ptr<float>();
    a.grad_seq_logps = out.grad_seq.data_ptr<float>();
  }

  size_t bytes = 0;
  check_status(geopref_train_step_workspace_size(&a, &opt, &bytes));
  // The caching allocator hands out stream-ordered memory: no sync here.
  Tensor workspace = torch::empty({static_cast<int64_t>(bytes)}, logits.options().dtype(at::kByte));
  const auto stream = reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
  check_status(geopref_train_step(workspace.data_ptr(), &bytes, &a, &opt, stream));
  if (c.check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(workspace.data_ptr(), stream, &recorded));
    check_status(recorded);
  }
  return out;
}

// The backward pass alone: the gradient from the forward's lse and g_s
// (already scaled by the upstream gradient).
Tensor logits_grad(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                   const Tensor& lse, const Tensor& grad_seq, const config& c) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const geopref_options opt = make_options(c);
  geopref_grad_args a;
  geopref_grad_args_init(&a);
  a.tokens = make_tokens(logits, labels, offsets);
  a.lse = lse.data_ptr<float>();
  a.grad_seq_logps = grad_seq.data_ptr<float>();
  Tensor grad = torch::empty_like(logits, at::MemoryFormat::Contiguous);
  a.grad_logits = grad.data_ptr();
  a.grad_ld = a.tokens.vocab;

  size_t bytes = 0;
  check_status(geopref_logits_grad_workspace_size(&a, &opt, &bytes));
  Tensor workspace = torch::empty({static_cast<int64_t>(bytes)}, logits.options().dtype(at::kByte));
  const auto stream = reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
  check_status(geopref_logits_grad(workspace.data_ptr(), &bytes, &a, &opt, stream));
  if (c.check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(workspace.data_ptr(), stream, &recorded));
    check_status(recorded);
  }
  return grad;
}

class pref_loss_function : public torch::autograd::Function<pref_loss_function> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& labels,
                               const Tensor& offsets, const Tensor& pairs, const Tensor& soft,
                               const Tensor& ref, const Tensor& weights, const config& c) {
    const step_outputs o =
        train_step(logits, labels, offsets, pairs, soft, ref, weights, c, Tensor(), nullptr);
    ctx->save_for_backward(
        {logits, labels, offsets, pairs, soft, ref, weights, o.lse, o.grad_seq});
    ctx->saved_data["loss"] = c.loss;
    ctx->saved_data["reduction"] = c.reduction;
    ctx->saved_data["params"] = std::vector<double>{c.beta, c.alpha, c.gamma, c.epsilon, c.tau};
    ctx->saved_data["average_logps"] = c.average_logps;
    ctx->saved_data["ignore_index"] = c.ignore_index;
    ctx->saved_data["check"] = c.check;
    ctx->mark_non_differentiable({o.seq_logps, o.metrics});
    return {o.loss, o.seq_logps, o.metrics};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list s = ctx->get_saved_variables();
    const auto p = ctx->saved_data["params"].toDoubleVector();
    const config c{ctx->saved_data["loss"].toStringRef(),
                   ctx->saved_data["reduction"].toStringRef(),
                   p[0], p[1], p[2], p[3], p[4],
                   ctx->saved_data["average_logps"].toBool(),
                   ctx->saved_data["ignore_index"].toInt(),
                   ctx->saved_data["check"].toBool()};
    Tensor upstream = grad_outputs[0];
    if (!upstream.defined()) upstream = torch::ones_like(s[0].new_empty({}, at::kFloat));
    upstream = upstream.to(at::kFloat).contiguous().reshape({-1});
    Tensor grad;
    if (c.reduction != "none") {
      // g_s is linear in the upstream scalar: scale it (an [S] multiply on
      // the current stream) and run the backward pass alone.
      const Tensor grad_seq = (s[8] * upstream).contiguous();
      grad = logits_grad(s[0], s[1], s[2], s[7], grad_seq, c);
    } else {
      // Per-pair upstream: g_s would need the per-pair coefficients, which
      // the API does not return, so the fused step runs again with it.
      train_step(s[0], s[1], s[2], s[3], s[4], s[5], s[6], c, upstream, &grad);
    }
    // Gradients of: logits, labels, offsets, pairs, soft, ref, weights, config.
    return {grad, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> pref_loss(
    const Tensor& logits, const Tensor& labels, const Tensor& offsets,
    const c10::optional<Tensor>& pairs, const c10::optional<Tensor>& soft_labels,
    const c10::optional<Tensor>& ref_logps, const c10::optional<Tensor>& weights,
    c10::string_view loss, double beta, double alpha, double gamma, double epsilon, double tau,
    bool average_logps, c10::string_view reduction, int64_t ignore_index, bool check) {
  const config c{std::string(loss), std::string(reduction), beta, alpha, gamma, epsilon, tau,
                 average_logps, ignore_index, check};
  const int64_t S = offsets.size(0) - 1;
  Tensor pr;
  if (pairs.has_value() && pairs->defined()) {
    TORCH_CHECK(pairs->dim() == 2 && pairs->size(1) == 2, "geopref: pairs must be [P, 2]");
    pr = pairs->to(logits.device(), at::kLong).contiguous();
  }
  const int64_t P = pr.defined() ? pr.size(0) : S / 2;
  const variable_list r = pref_loss_function::apply(
      logits, labels, offsets, pr, as_f32(soft_labels, P, logits, "soft_labels"),
      as_f32(ref_logps, S, logits, "ref_logps"), as_f32(weights, P, logits, "weights"), c);
  return {r[0], r[1], r[2]};
}

Tensor sequence_logps(const Tensor& logits, const Tensor& labels, const Tensor& offsets,
                      bool average_logps, int64_t ignore_index, bool check) {
  const c10::cuda::CUDAGuard guard(logits.device());
  geopref_options opt;
  geopref_options_init(&opt);
  opt.average_logps = average_logps ? 1 : 0;
  opt.ignore_index = ignore_index;
  geopref_logps_args a;
  geopref_logps_args_init(&a);
  a.tokens = make_tokens(logits, labels, offsets);
  Tensor out = torch::empty({a.tokens.n_seqs}, logits.options().dtype(at::kFloat));
  a.seq_logps = out.data_ptr<float>();
  size_t bytes = 0;
  check_status(geopref_sequence_logps_workspace_size(&a, &opt, &bytes));
  Tensor workspace = torch::empty({static_cast<int64_t>(bytes)}, logits.options().dtype(at::kByte));
  const auto stream = reinterpret_cast<geopref_stream_t>(at::cuda::getCurrentCUDAStream().stream());
  check_status(geopref_sequence_logps(workspace.data_ptr(), &bytes, &a, &opt, stream));
  if (check) {
    geopref_status recorded = GEOPREF_SUCCESS;
    check_status(geopref_device_status(workspace.data_ptr(), stream, &recorded));
    check_status(recorded);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(geopref, m) {
  m.def(
      "pref_loss(Tensor logits, Tensor labels, Tensor offsets, Tensor? pairs, Tensor? soft_labels, "
      "Tensor? ref_logps, Tensor? weights, str loss, float beta, float alpha, float gamma, "
      "float epsilon, float tau, bool average_logps, str reduction, int ignore_index, bool check) "
      "-> (Tensor, Tensor, Tensor)",
      &pref_loss);
  m.def(
      "sequence_logps(Tensor logits, Tensor labels, Tensor offsets, bool average_logps, "
      "int ignore_index, bool check) -> Tensor",
      &sequence_logps);
}
