// bindings/torch/csrc/ops_linear.cpp — the fused-linear geopref torch
// operators: the loss from hidden states and the output projection (an
// lm_head's weight and bias) instead of the logits. Their schemas and CPU
// kernels, which call the CPU reference (geopref/reference/fused_linear.hpp,
// double); the CUDA kernels are in ops_linear_cuda.cpp (the chunked path of
// geopref/cuda/fused_linear.cuh through the C ABI, never holding the
// logits), fake kernels and autograd in geopref_torch/_ops.py. A file of its
// own so that the CPU build compiles it beside ops.cpp (in parallel, and
// again only when it changes).
//
//   linear_pref_loss(hidden, weight, bias?, labels, offsets, pairs?, soft_labels?,
//                    ref_logps?, weights?, options, chunk_bytes,
//                    grad_mask, check, logit_transform, host_offsets?, host_pairs?)
//       -> (loss, seq_logps, metrics, grad_hidden, grad_weight, grad_bias)
//     pref_loss's forward on Z = hidden·weightᵀ + bias, and, for the inputs
//     grad_mask = (hidden, weight, bias) names, the gradients of the loss at
//     an upstream gradient of 1 (of the sum of the per-pair losses for
//     reduction "none"), computed in the same call as the loss: on CUDA one
//     fused_linear_step, so the backward is a multiply by the upstream
//     gradient (Liger-Kernel's scheme). Gradients not asked for are [0].
//     grad_hidden [N, H] and grad_weight [V, H] in the input dtype,
//     grad_bias [V] in the bias's.
//   linear_pref_loss_grad(grad_output, <linear_pref_loss's arguments>)
//       -> (grad_hidden, grad_weight, grad_bias)
//     The gradients for any upstream gradient ([] or, for reduction "none",
//     [P] per pair): the forward runs again (the backward of reduction "none").
//   host_offsets [S + 1], host_pairs [P, 2]: optional CPU int64 copies of
//     offsets and pairs (host_pairs only with pairs). On CUDA they opt in to
//     fused_linear_step's one pass (three GEMMs per chunk instead of four,
//     geopref/cuda/fused_linear.cuh) and are compared with the device arrays
//     there (a difference: host_layout_mismatch, reported with `check`); on
//     CPU they are compared here, at once. Wrong shape, dtype or device: an error.
//   linear_one_pass(<linear_pref_loss's arguments>) -> bool
//     Whether linear_pref_loss with these arguments runs that one pass (a
//     host-side query, geopref_fused_linear_one_pass; always false on CPU).
//   linear_sequence_logps(hidden, weight, bias?, labels, offsets, average_logps,
//                         ignore_index, chunk_bytes, check, logit_transform)
//       -> (seq_logps, lse, counts)
//     sequence_logps on Z (the reference model's pass), differentiable.
//   linear_sequence_logps_grad(hidden, weight, bias?, labels, offsets, lse, grad_seq,
//                              ignore_index, chunk_bytes, grad_mask, check, logit_transform)
//       -> (grad_hidden, grad_weight, grad_bias)
//     Its backward: G[t, v] = grad_seq[s] (1[v = y_t] - exp(Z[t, v] - lse_t))
//     for the scored rows t of sequence s, then G·W, Gᵀ·H, Σ_t G[t, ·]; the
//     per-token backward from hidden states (linear_token_logps_grad) with
//     g_t = grad_seq of the row's sequence.
//
//   linear_token_logps(hidden, weight, bias?, labels, ignore_index, entropy, chunk_bytes,
//                      check, logit_transform, log_sum_sq_probs=False,
//                      mean_logits=False, is_top1=False)
//       -> (logps, lse, entropy, log_sum_sq_probs, mean_logits, is_top1)
//   linear_token_logps_grad(hidden, weight, bias?, labels, lse, grad, ignore_index,
//                           chunk_bytes, grad_mask, check, logit_transform,
//                           grad_entropy?, entropy?) -> (grad_hidden, grad_weight, grad_bias)
//     token_logps and token_logps_grad (ops.cpp) on Z, then G·W, Gᵀ·H, Σ_t G[t, ·].
//   linear_token_logps_accumulate(<linear_token_logps_grad's arguments>,
//                                 grad_weight_acc?, grad_bias_acc?) -> grad_hidden
//     The same with grad_weight and grad_bias added to the caller's buffers
//     (the library's `accumulate`; a float32 grad_weight_acc for a 16-bit
//     weight is its grad_weight_float32): what linear_token_logps' backward
//     runs for 16-bit weights, so that the weight gradient sums every chunk
//     in float32 before one rounding (as TRL 1.16.0's fused head does).
//
// logit_transform is ops.cpp's: applied to every logit of Z.
//
// chunk_bytes is the CUDA path's budget for one chunk of logits (rows of V
// rounded up to 16 bytes); the CPU reference forms the logits whole but
// rejects a budget below one row all the same. linear_token_logps(_grad) and
// linear_sequence_logps_grad on float32 / 16-bit inputs take the fast CPU
// path instead (cpu_linear.h: float32 tiles of at most chunk_bytes, ATen's
// GEMM); float64 stays on the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "common.h"
#include "cpu.h"
#include "cpu_linear.h"
#include "geopref/reference/fused_linear.hpp"
#include "linear.h"

namespace geopref_torch {
namespace {

namespace ref = geopref::reference;
using c10::optional;

/// The three gradients in double, as the reference writes them, and their
/// conversion to the inputs' dtypes ([0] for those not asked for).
struct cpu_grads {
  std::array<bool, 3> mask;
  Tensor hidden, weight, bias;  // double, or undefined
  cpu_grads(const linear_tensors& t, std::array<bool, 3> m) : mask(effective_mask(m, t)) {
    const auto f64 = t.hidden.options().dtype(at::kDouble);
    if (mask[0]) hidden = at::empty({t.n_rows(), t.hidden_size()}, f64);
    if (mask[1]) weight = at::empty({t.vocab(), t.hidden_size()}, f64);
    if (mask[2]) bias = at::empty({t.vocab()}, f64);
  }
  bool any() const { return mask[0] || mask[1] || mask[2]; }
  template <class Out>
  void fill(Out& out) const {
    out.grad_hidden = mask[0] ? hidden.data_ptr<double>() : nullptr;
    out.grad_weight = mask[1] ? weight.data_ptr<double>() : nullptr;
    out.grad_bias = mask[2] ? bias.data_ptr<double>() : nullptr;
    out.accumulate = false;  // autograd accumulates .grad itself
  }
  grads3 result(const linear_tensors& t) const {
    return {mask[0] ? hidden.to(t.hidden.scalar_type()) : empty_grad(t.hidden),
            mask[1] ? weight.to(t.weight.scalar_type()) : empty_grad(t.weight),
            mask[2] ? bias.to(t.bias.scalar_type()) : empty_grad(t.hidden)};
  }
};

/// The caller's accumulators as the reference's `accumulate` takes them: in
/// double (their values copied in before the call, the sums copied back after).
struct cpu_accumulators {
  accumulators acc;
  Tensor weight, bias;  // double copies, or undefined
  explicit cpu_accumulators(const accumulators& a) : acc(a) {
    if (a.weight.defined()) weight = a.weight.to(at::kDouble).contiguous();
    if (a.bias.defined()) bias = a.bias.to(at::kDouble).contiguous();
  }
  template <class Out>
  void fill(Out& out) const {
    out.grad_weight = weight.defined() ? weight.data_ptr<double>() : nullptr;
    out.grad_bias = bias.defined() ? bias.data_ptr<double>() : nullptr;
    out.accumulate = true;
  }
  void write_back() const {
    if (weight.defined()) acc.weight.copy_(weight);
    if (bias.defined()) acc.bias.copy_(bias);
  }
};

/// What the reference's linear_inputs and linear_token_rows share: the
/// hidden states, the projection, the labels and the logit transform.
template <class Elem, class In>
In linear_view(const linear_tensors& t, const Tensor& labels, const geopref::logit_transform& tr) {
  In in;
  in.hidden = static_cast<const Elem*>(t.hidden.data_ptr());
  in.ld_hidden = row_stride(t.hidden);
  in.weight = static_cast<const Elem*>(t.weight.data_ptr());
  in.ld_weight = row_stride(t.weight);
  in.bias = t.bias.defined() ? static_cast<const Elem*>(t.bias.data_ptr()) : nullptr;
  in.n_rows = t.n_rows();
  in.hidden_size = t.hidden_size();
  in.vocab = t.vocab();
  in.logit_transform = tr;
  in.labels = labels.data_ptr<int64_t>();
  return in;
}

template <class Elem>
ref::linear_inputs<Elem, int64_t, int64_t> make_linear_inputs(const linear_tensors& t,
                                                              const Tensor& labels,
                                                              const Tensor& offsets,
                                                              const geopref::logit_transform& tr) {
  auto in = linear_view<Elem, ref::linear_inputs<Elem, int64_t, int64_t>>(t, labels, tr);
  in.offsets = offsets.data_ptr<int64_t>();
  in.n_seqs = offsets.size(0) - 1;
  return in;
}

template <class Elem>
ref::linear_token_rows<Elem, int64_t> make_linear_rows(const linear_tensors& t,
                                                       const Tensor& labels, int64_t ignore_index,
                                                       const geopref::logit_transform& tr) {
  auto rows = linear_view<Elem, ref::linear_token_rows<Elem, int64_t>>(t, labels, tr);
  rows.ignore_index = ignore_index;
  return rows;
}

/// linear_pref_loss (upstream undefined: gradients at upstream 1),
/// linear_pref_loss_grad (upstream given) and, with accumulators,
/// linear_pref_loss_accumulate (grad_weight and grad_bias added to the
/// caller's buffers instead of returned) on the CPU reference.
step_result linear_step_cpu(const Tensor* upstream, GEOPREF_LINEAR_PARAMS, const char* op,
                            const optional<Tensor>& grad_weight_acc,
                            const optional<Tensor>& grad_bias_acc) {
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  // The reference has no one-pass path to feed; the host copies are checked
  // against offsets and pairs all the same, so that a wrong copy fails on
  // CPU as it does on CUDA (host_layout_mismatch there).
  check_host_layout(host_offsets, host_pairs, offsets, pairs, /*values=*/true, op);
  const Tensor y = labels.to(at::kLong).contiguous(), off = offsets.to(at::kLong).contiguous();
  const int64_t S = offsets.size(0) - 1;
  const pair_tensors pr(t.hidden, S, pairs, soft_labels, ref_logps, weights, token_weights,
                        at::kDouble, op);
  const accumulators acc = check_accumulators(grad_weight_acc, grad_bias_acc, t, op);
  if (acc.any()) grad_mask[1] = grad_mask[2] = false;  // into the accumulators instead
  const bool per_pair = opt.reduce == geopref::reduction::none;
  const Tensor up = upstream_of(upstream, opt, pr.n_pairs, t.hidden, at::kDouble,
                                "the device of hidden", op);
  const auto f64 = t.hidden.options().dtype(at::kDouble);
  Tensor seq = at::empty({S}, f64), pair_losses = at::empty({pr.n_pairs}, f64);
  Tensor counts = at::empty({S}, t.hidden.options().dtype(at::kLong));
  const cpu_grads g(t, grad_mask);
  const cpu_accumulators cacc(acc);
  ref::linear_outputs out;
  out.base.seq_logps = seq.data_ptr<double>();
  out.base.seq_counts = counts.data_ptr<int64_t>();
  out.base.pair_losses = pair_losses.data_ptr<double>();
  g.fill(out);
  if (acc.any()) cacc.fill(out);
  const geopref::status st = visit_float(t.hidden, "hidden", op, [&](auto tag) {
    auto in = make_linear_inputs<typename decltype(tag)::type>(t, y, off, tr);
    pr.fill(in, in.token_weights);
    if (up.defined()) {
      if (per_pair) in.grad_pair_losses = up.data_ptr<double>();
      else in.grad_loss = up.data_ptr<double>()[0];
    }
    return ref::fused_linear(in, opt, out);
  });
  check_status(static_cast<int>(st), op);
  cacc.write_back();
  const auto od = out_dtype(t.hidden);
  const Tensor value = per_pair ? pair_losses : at::scalar_tensor(out.base.loss, f64);
  const auto [gh, gw, gb] = g.result(t);
  return {value.to(od), seq.to(od), metrics_tensor(out.base.stats, t.hidden), gh, gw, gb,
          metric_sums_tensor(out.base.sums, t.hidden)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_sequence_logps_cpu(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias, const Tensor& labels,
    const Tensor& offsets, const optional<Tensor>& token_weights, c10::ArrayRef<double> options,
    int64_t chunk_bytes, bool /*check*/, c10::ArrayRef<double> logit_transform) {
  const char* op = "linear_sequence_logps";
  const geopref::options opt = to_options(options, op);
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const Tensor tw = cpu_token_weights(token_weights, t.hidden, t.n_rows(), op);
  const Tensor y = labels.to(at::kLong).contiguous(), off = offsets.to(at::kLong).contiguous();
  const int64_t N = t.n_rows(), S = offsets.size(0) - 1;
  const auto f64 = t.hidden.options().dtype(at::kDouble);
  Tensor lse = at::empty({N}, f64), seq = at::empty({S}, f64);
  Tensor counts = at::empty({S}, t.hidden.options().dtype(at::kLong));
  ref::linear_outputs out;
  out.base.lse = lse.data_ptr<double>();
  out.base.seq_logps = seq.data_ptr<double>();
  out.base.seq_counts = counts.data_ptr<int64_t>();
  const int64_t no_pair = 0;  // explicit pairing with P = 0: no pair terms at all
  const geopref::status st = visit_float(t.hidden, "hidden", op, [&](auto tag) {
    auto in = make_linear_inputs<typename decltype(tag)::type>(t, y, off, tr);
    in.n_pairs = 0;
    in.pairs = &no_pair;
    in.token_weights = data_or_null<double>(tw);
    return ref::fused_linear(in, opt, out);
  });
  check_status(static_cast<int>(st), op);
  const auto od = out_dtype(t.hidden);
  return {seq.to(od), lse.to(od), counts, seq_scale(counts, opt, od)};
}

/// The per-token backward from hidden states: labels y (int64, contiguous),
/// lse and g [N]; shared by linear_token_logps_grad and
/// linear_sequence_logps_grad. Optionally e [N] and the forward's H [N] (the
/// entropy's upstream, double) and the caller's accumulators
/// (linear_token_logps_accumulate: grad_weight and grad_bias added to them
/// instead of returned). float32 / 16-bit inputs: the fast CPU path
/// (cpu_linear.h: grad_weight summed in float32 and rounded once, or added
/// to the accumulator in float32); float64: the reference.
grads3 linear_rows_grad_cpu(const linear_tensors& t, const Tensor& y, const Tensor& lse,
                            const Tensor& g_rows, int64_t ignore_index,
                            std::array<bool, 3> grad_mask, const geopref::logit_transform& tr,
                            int64_t chunk_bytes, const char* op, const Tensor& grad_entropy = {},
                            const Tensor& entropy = {}, const accumulators* acc = nullptr) {
  const Tensor l = lse.to(at::kDouble).contiguous(), g = g_rows.to(at::kDouble).contiguous();
  const bool accumulating = acc != nullptr && acc->any();
  if (cpu_linear::takes(t)) {
    std::array<bool, 3> mask = grad_mask;
    if (accumulating) {
      mask[1] = acc->weight.defined();
      mask[2] = acc->bias.defined();
    }
    // A float32 accumulator takes the weight gradient in place, tile by tile.
    const bool into = accumulating && mask[1] && acc->weight.scalar_type() == at::kFloat &&
                      acc->weight.is_contiguous();
    grads3 r;
    check_status(static_cast<int>(cpu_linear::token_logps_grad(
                     t, y, ignore_index, tr, chunk_bytes, l.data_ptr<double>(),
                     g.data_ptr<double>(), mask, r,
                     grad_entropy.defined() ? grad_entropy.data_ptr<double>() : nullptr,
                     entropy.defined() ? entropy.data_ptr<double>() : nullptr,
                     /*unrounded=*/accumulating, into ? acc->weight : Tensor())),
                 op);
    if (!accumulating) return r;
    if (mask[1] && !into) acc->weight.add_(std::get<1>(r));  // float32 sum into a 16-bit one
    if (mask[2]) acc->bias.add_(std::get<2>(r));
    return {std::get<0>(r), empty_grad(t.weight), empty_grad(t.hidden)};
  }
  if (accumulating) grad_mask[1] = grad_mask[2] = false;
  const cpu_grads grads(t, grad_mask);
  if (!grads.any() && !accumulating) return grads.result(t);
  ref::linear_token_grads out;
  grads.fill(out);
  const cpu_accumulators cacc(accumulating ? *acc : accumulators{});
  if (accumulating) cacc.fill(out);
  const geopref::status st = visit_float(t.hidden, "hidden", op, [&](auto tag) {
    using Elem = typename decltype(tag)::type;
    const auto rows = make_linear_rows<Elem>(t, y, ignore_index, tr);
    return ref::linear_token_logps_grad(rows, l.data_ptr<double>(), g.data_ptr<double>(), out,
                                        grad_entropy.defined() ? grad_entropy.data_ptr<double>()
                                                               : nullptr);
  });
  check_status(static_cast<int>(st), op);
  if (accumulating) cacc.write_back();
  return grads.result(t);
}

grads3 linear_sequence_logps_grad_cpu(GEOPREF_LINEAR_SEQUENCE_GRAD_PARAMS) {
  const char* op = "linear_sequence_logps_grad";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const linear_tensors t = check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  const int64_t N = t.n_rows(), S = offsets.size(0) - 1;
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad_seq.dim() == 1 &&
                        grad_seq.size(0) == S,
                    "geopref.", op, ": lse must be [N] = [", N, "] and grad_seq [S] = [", S,
                    "], got ", lse.sizes(), " and ", grad_seq.sizes());
  const Tensor tw = cpu_token_weights(token_weights, t.hidden, N, op);
  const auto [g_rows, y] = rows_of_sequences(labels, offsets, grad_seq.to(at::kDouble),
                                             ignore_index, tw);
  return linear_rows_grad_cpu(t, y.contiguous(), lse, g_rows, ignore_index, grad_mask, tr,
                              chunk_bytes, op);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> linear_token_logps_cpu(
    const Tensor& hidden, const Tensor& weight, const optional<Tensor>& bias, const Tensor& labels,
    int64_t ignore_index, bool entropy, int64_t chunk_bytes, bool /*check*/,
    c10::ArrayRef<double> logit_transform, bool log_sum_sq_probs, bool mean_logits,
    bool is_top1) {
  const char* op = "linear_token_logps";
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const linear_tensors t = check_linear_rows(hidden, weight, bias, labels, chunk_bytes, op);
  const Tensor y = labels.to(at::kLong).contiguous();
  const int64_t N = t.n_rows();
  const auto f64 = t.hidden.options().dtype(at::kDouble);
  Tensor logp = at::empty({N}, f64), lse = at::empty({N}, f64);
  const token_stats stats(N, t.hidden, at::kDouble, entropy, log_sum_sq_probs, mean_logits,
                          is_top1);
  ref::token_outputs out;
  out.token_logps = logp.data_ptr<double>();
  out.lse = lse.data_ptr<double>();
  stats.fill(out);
  // float32 / 16-bit: the fast CPU path (cpu_linear.h); float64: the reference.
  const geopref::status st =
      cpu_linear::takes(t)
          ? cpu_linear::token_logps(t, y, ignore_index, tr, chunk_bytes, out)
          : visit_float(t.hidden, "hidden", op, [&](auto tag) {
              using Elem = typename decltype(tag)::type;
              return ref::linear_token_logps(make_linear_rows<Elem>(t, y, ignore_index, tr), out);
            });
  check_status(static_cast<int>(st), op);
  const auto od = out_dtype(t.hidden);
  const auto [h, lssp, mean, top1] = stats.result(od);
  return {logp.to(od), lse.to(od), h, lssp, mean, top1};
}

/// linear_token_logps_grad and, with accumulators, linear_token_logps_accumulate.
grads3 linear_token_grad_cpu(GEOPREF_LINEAR_TOKEN_GRAD_PARAMS,
                             const optional<Tensor>& grad_weight_acc,
                             const optional<Tensor>& grad_bias_acc, const char* op) {
  const geopref::logit_transform tr = to_logit_transform(logit_transform, op);
  const linear_tensors t = check_linear_rows(hidden, weight, bias, labels, chunk_bytes, op);
  const int64_t N = t.n_rows();
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == N && grad.dim() == 1 && grad.size(0) == N,
                    "geopref.", op, ": lse and grad must be [N] = [", N, "], got ", lse.sizes(),
                    " and ", grad.sizes());
  const auto [e, h] = entropy_upstream(grad_entropy, entropy, N, t.hidden, at::kDouble, op);
  const accumulators acc = check_accumulators(grad_weight_acc, grad_bias_acc, t, op);
  return linear_rows_grad_cpu(t, labels.to(at::kLong).contiguous(), lse, grad, ignore_index,
                              grad_mask, tr, chunk_bytes, op, e, h, &acc);
}

GEOPREF_LINEAR_KERNELS(cpu, linear_step_cpu, linear_token_grad_cpu)

/// linear_one_pass on CPU: the reference forms the logits whole, there is no
/// one-pass path; the arguments are checked as linear_pref_loss checks them.
bool linear_one_pass_cpu(GEOPREF_LINEAR_PARAMS) {
  const char* op = "linear_one_pass";
  to_options(options, op);
  to_logit_transform(logit_transform, op);
  check_linear(hidden, weight, bias, labels, offsets, chunk_bytes, op);
  check_host_layout(host_offsets, host_pairs, offsets, pairs, /*values=*/true, op);
  return false;
}

}  // namespace
}  // namespace geopref_torch

#define GEOPREF_LINEAR_PREF_LOSS_ARGS                                                            \
  "Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor offsets, Tensor? pairs, " \
  "Tensor? soft_labels, Tensor? ref_logps, Tensor? weights, Tensor? token_weights, "         \
  "float[] options, "                                                                         \
  "int chunk_bytes, bool[3] grad_mask, bool check, "                                          \
  "float[] logit_transform, Tensor? host_offsets=None, Tensor? host_pairs=None"

TORCH_LIBRARY_FRAGMENT(geopref, m) {
  m.def("linear_pref_loss(" GEOPREF_LINEAR_PREF_LOSS_ARGS
        ") -> (Tensor loss, Tensor seq_logps, Tensor metrics, Tensor grad_hidden, "
        "Tensor grad_weight, Tensor grad_bias, Tensor metric_sums)");
  m.def("linear_pref_loss_grad(Tensor grad_output, " GEOPREF_LINEAR_PREF_LOSS_ARGS
        ") -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def("linear_pref_loss_accumulate(Tensor grad_output, " GEOPREF_LINEAR_PREF_LOSS_ARGS
        ", Tensor(a!)? grad_weight_acc=None, Tensor(b!)? grad_bias_acc=None) "
        "-> Tensor grad_hidden");
  m.def("linear_one_pass(" GEOPREF_LINEAR_PREF_LOSS_ARGS ") -> bool");
  m.def(
      "linear_sequence_logps(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
      "Tensor offsets, Tensor? token_weights, float[] options, int chunk_bytes, bool check, "
      "float[] logit_transform) -> (Tensor seq_logps, Tensor lse, Tensor counts, "
      "Tensor seq_scale)");
  m.def(
      "linear_sequence_logps_grad(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
      "Tensor offsets, Tensor? token_weights, Tensor lse, Tensor grad_seq, int ignore_index, "
      "int chunk_bytes, bool[3] grad_mask, bool check, float[] logit_transform) -> "
      "(Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_token_logps(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
      "int ignore_index, bool entropy, int chunk_bytes, bool check, float[] logit_transform, "
      "bool log_sum_sq_probs=False, bool mean_logits=False, bool is_top1=False) "
      "-> (Tensor logps, Tensor lse, Tensor entropy, Tensor log_sum_sq_probs, "
      "Tensor mean_logits, Tensor is_top1)");
  m.def(
      "linear_token_logps_grad(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, "
      "Tensor lse, Tensor grad, int ignore_index, int chunk_bytes, bool[3] grad_mask, "
      "bool check, float[] logit_transform, Tensor? grad_entropy=None, Tensor? entropy=None) "
      "-> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_token_logps_accumulate(Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor labels, Tensor lse, Tensor grad, int ignore_index, int chunk_bytes, "
      "bool[3] grad_mask, bool check, float[] logit_transform, Tensor? grad_entropy=None, "
      "Tensor? entropy=None, Tensor(a!)? grad_weight_acc=None, Tensor(b!)? grad_bias_acc=None) "
      "-> Tensor grad_hidden");
}

TORCH_LIBRARY_IMPL(geopref, CPU, m) { GEOPREF_TORCH_LINEAR_OPS(GEOPREF_TORCH_CPU_IMPL) }
