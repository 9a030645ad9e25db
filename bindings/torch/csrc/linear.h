// bindings/torch/csrc/linear.h — what the CPU and CUDA kernels of the
// fused-linear operators (ops_linear.cpp, ops_linear_cuda.cpp) share: the
// checks of hidden states, projection and bias, the chunk budget, the
// gradient mask, and the per-row upstream gradient of the log-probs'
// backward. Device-agnostic (ATen only).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "common.h"

namespace geopref_torch {

/// The fused-linear inputs after the checks: hidden [N, Hd] and weight
/// [V, Hd] with unit-stride rows (a copy only when not already so), bias [V]
/// contiguous or undefined.
struct linear_tensors {
  Tensor hidden, weight, bias;
  int64_t n_rows() const { return hidden.size(0); }
  int64_t hidden_size() const { return hidden.size(1); }
  int64_t vocab() const { return weight.size(0); }
};

/// Shapes, dtypes and devices of hidden, weight, bias, labels and offsets,
/// and the chunk budget: the same errors on every device. The per-token
/// operators (linear_token_logps) have no offsets: check_linear_rows.
inline linear_tensors check_linear_impl(const Tensor& hidden, const Tensor& weight,
                                        const c10::optional<Tensor>& bias, const Tensor& labels,
                                        const Tensor& offsets_or_labels, int64_t chunk_bytes,
                                        const char* op) {
  const Tensor& offsets = offsets_or_labels;
  TORCH_CHECK_VALUE(hidden.dim() == 2, "geopref.", op, ": hidden must be 2-D [N, H], got ",
                    hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(1), "geopref.", op,
                    ": weight must be [V, H] with H = ", hidden.size(1), ", got ", weight.sizes());
  check_labels(labels, hidden.size(0), op);
  check_offsets(offsets, op);
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), "geopref.", op,
                   ": hidden and weight must have one dtype, got ", hidden.scalar_type(), " and ",
                   weight.scalar_type());
  const at::Device dev = hidden.device();
  TORCH_CHECK_VALUE(weight.device() == dev && labels.device() == dev && offsets.device() == dev,
                    "geopref.", op, ": hidden, weight, labels and offsets must be on one device");
  linear_tensors t{unit_rows(hidden), unit_rows(weight), Tensor()};
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "geopref.", op,
                      ": bias must be [V] = [", weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == hidden.scalar_type(), "geopref.", op,
                     ": bias must have the dtype of hidden and weight (", hidden.scalar_type(),
                     "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device() == dev, "geopref.", op,
                      ": bias must be on the device of hidden and weight");
    t.bias = bias->contiguous();
  }
  // The CUDA path's chunk holds whole rows of logits, V rounded up to 16
  // bytes (geopref/cuda/fused_linear.cuh). The CPU reference forms the
  // logits whole, but rejects the same budgets so that an error does not
  // depend on the device.
  const int64_t elem = static_cast<int64_t>(hidden.element_size());
  const int64_t per16 = elem < 16 ? 16 / elem : 1;
  const int64_t row = (weight.size(0) + per16 - 1) / per16 * per16 * elem;
  TORCH_CHECK_VALUE(chunk_bytes > 0 && (hidden.size(0) == 0 || chunk_bytes >= row), "geopref.",
                    op, ": chunk_bytes = ", chunk_bytes,
                    " holds less than one row of logits (", row, " bytes for V = ",
                    weight.size(0), ")");
  return t;
}
inline linear_tensors check_linear(const Tensor& hidden, const Tensor& weight,
                                   const c10::optional<Tensor>& bias, const Tensor& labels,
                                   const Tensor& offsets, int64_t chunk_bytes, const char* op) {
  return check_linear_impl(hidden, weight, bias, labels, offsets, chunk_bytes, op);
}
/// check_linear without offsets (the labels stand in for them: [N] >= 1 row
/// is not required, so an empty batch passes as with offsets [1]).
inline linear_tensors check_linear_rows(const Tensor& hidden, const Tensor& weight,
                                        const c10::optional<Tensor>& bias, const Tensor& labels,
                                        int64_t chunk_bytes, const char* op) {
  const Tensor no_offsets = at::zeros({1}, labels.options().dtype(at::kLong));
  return check_linear_impl(hidden, weight, bias, labels, no_offsets, chunk_bytes, op);
}

// The arguments every fused-linear pref-loss operator takes, in the schema's
// order (ops_linear.cpp, GEOPREF_LINEAR_PREF_LOSS_ARGS), for the CPU and
// CUDA kernels, and the call that passes them on.
#define GEOPREF_LINEAR_PARAMS                                                                 \
  const Tensor &hidden, const Tensor &weight, const c10::optional<Tensor> &bias,              \
      const Tensor &labels, const Tensor &offsets, const c10::optional<Tensor> &pairs,        \
      const c10::optional<Tensor> &soft_labels, const c10::optional<Tensor> &ref_logps,       \
      const c10::optional<Tensor> &weights, const c10::optional<Tensor> &token_weights,       \
      c10::ArrayRef<double> options, int64_t chunk_bytes, std::array<bool, 3> grad_mask,      \
      bool check, c10::ArrayRef<double> logit_transform,                                      \
      const c10::optional<Tensor> &host_offsets, const c10::optional<Tensor> &host_pairs
#define GEOPREF_LINEAR_ARGS                                                                    \
  hidden, weight, bias, labels, offsets, pairs, soft_labels, ref_logps, weights, token_weights, \
      options, chunk_bytes, grad_mask, check, logit_transform, host_offsets, host_pairs

// The arguments of linear_token_logps_grad, and of
// linear_token_logps_accumulate before its accumulators, in the schemas' order.
#define GEOPREF_LINEAR_TOKEN_GRAD_PARAMS                                                       \
  const Tensor &hidden, const Tensor &weight, const c10::optional<Tensor> &bias,               \
      const Tensor &labels, const Tensor &lse, const Tensor &grad, int64_t ignore_index,       \
      int64_t chunk_bytes, std::array<bool, 3> grad_mask, bool check,                          \
      c10::ArrayRef<double> logit_transform, const c10::optional<Tensor> &grad_entropy,        \
      const c10::optional<Tensor> &entropy
#define GEOPREF_LINEAR_TOKEN_GRAD_ARGS                                                         \
  hidden, weight, bias, labels, lse, grad, ignore_index, chunk_bytes, grad_mask, check,        \
      logit_transform, grad_entropy, entropy

// The arguments of linear_sequence_logps_grad, in the schema's order.
#define GEOPREF_LINEAR_SEQUENCE_GRAD_PARAMS                                                    \
  const Tensor &hidden, const Tensor &weight, const c10::optional<Tensor> &bias,               \
      const Tensor &labels, const Tensor &offsets, const c10::optional<Tensor> &token_weights, \
      const Tensor &lse, const Tensor &grad_seq, int64_t ignore_index, int64_t chunk_bytes,    \
      std::array<bool, 3> grad_mask, bool check, c10::ArrayRef<double> logit_transform

// The kernels of a device (suffix cpu or cuda) that differ only in what they
// return, from the device's one function:
//   linear_pref_loss, _grad and _accumulate from step(upstream or null,
//     GEOPREF_LINEAR_ARGS, op, grad_weight_acc, grad_bias_acc) -> step_result;
//   linear_token_logps_grad and _accumulate from grad(GEOPREF_LINEAR_TOKEN_GRAD_ARGS,
//     grad_weight_acc, grad_bias_acc, op) -> grads3.
#define GEOPREF_LINEAR_KERNELS(device, step, grad)                                             \
  step_result linear_pref_loss_##device(GEOPREF_LINEAR_PARAMS) {                               \
    return step(nullptr, GEOPREF_LINEAR_ARGS, "linear_pref_loss", {}, {});                     \
  }                                                                                            \
  grads3 linear_pref_loss_grad_##device(const Tensor& grad_output, GEOPREF_LINEAR_PARAMS) {    \
    const auto r = step(&grad_output, GEOPREF_LINEAR_ARGS, "linear_pref_loss_grad", {}, {});   \
    return {std::get<3>(r), std::get<4>(r), std::get<5>(r)};                                   \
  }                                                                                            \
  Tensor linear_pref_loss_accumulate_##device(const Tensor& grad_output, GEOPREF_LINEAR_PARAMS, \
                                              const c10::optional<Tensor>& grad_weight_acc,    \
                                              const c10::optional<Tensor>& grad_bias_acc) {    \
    return std::get<3>(step(&grad_output, GEOPREF_LINEAR_ARGS, "linear_pref_loss_accumulate",  \
                            grad_weight_acc, grad_bias_acc));                                  \
  }                                                                                            \
  grads3 linear_token_logps_grad_##device(GEOPREF_LINEAR_TOKEN_GRAD_PARAMS) {                  \
    return grad(GEOPREF_LINEAR_TOKEN_GRAD_ARGS, {}, {}, "linear_token_logps_grad");            \
  }                                                                                            \
  Tensor linear_token_logps_accumulate_##device(GEOPREF_LINEAR_TOKEN_GRAD_PARAMS,              \
                                                const c10::optional<Tensor>& grad_weight_acc,  \
                                                const c10::optional<Tensor>& grad_bias_acc) {  \
    return std::get<0>(grad(GEOPREF_LINEAR_TOKEN_GRAD_ARGS, grad_weight_acc, grad_bias_acc,    \
                            "linear_token_logps_accumulate"));                                 \
  }

/// (loss, seq_logps, metrics, grad_hidden, grad_weight, grad_bias,
/// metric_sums): linear_pref_loss' outputs; (grad_hidden, grad_weight,
/// grad_bias): the backwards'.
using step_result = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using grads3 = std::tuple<Tensor, Tensor, Tensor>;

// The fused-linear operators (schemas: ops_linear.cpp), each with a CPU
// kernel <op>_cpu (ops_linear.cpp) and a CUDA kernel <op>_cuda (ops_linear_cuda.cpp).
#define GEOPREF_TORCH_LINEAR_OPS(X)                                                      \
  X(linear_pref_loss) X(linear_pref_loss_grad) X(linear_pref_loss_accumulate)          \
  X(linear_token_logps) X(linear_token_logps_grad) X(linear_token_logps_accumulate)    \
  X(linear_one_pass) X(linear_sequence_logps) X(linear_sequence_logps_grad)

/// The caller's gradient accumulators of the fused-linear step (the library's
/// `accumulate`): grad_weight [V, H] float32 (the library's
/// grad_weight_float32) or the weight's dtype, grad_bias [V] float32 (the
/// library's grad_bias), both contiguous on the weight's device; either may be
/// undefined. Returned as given (they are written in place).
struct accumulators {
  Tensor weight, bias;
  bool any() const { return weight.defined() || bias.defined(); }
  /// The library's grad_weight_float32: the accumulator is float32.
  bool weight_float32() const { return weight.defined() && weight.scalar_type() == at::kFloat; }
};
inline accumulators check_accumulators(const c10::optional<Tensor>& grad_weight,
                                       const c10::optional<Tensor>& grad_bias,
                                       const linear_tensors& t, const char* op) {
  accumulators a;
  if (grad_weight.has_value() && grad_weight->defined()) {
    const Tensor& g = *grad_weight;
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == t.vocab() && g.size(1) == t.hidden_size(),
                      "geopref.", op, ": grad_weight_acc must be [V, H] = [", t.vocab(), ", ",
                      t.hidden_size(), "], got ", g.sizes());
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat || g.scalar_type() == t.weight.scalar_type(),
                     "geopref.", op, ": grad_weight_acc must be float32 or the weight's dtype (",
                     t.weight.scalar_type(), "), got ", g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == t.weight.device() && g.is_contiguous(), "geopref.", op,
                      ": grad_weight_acc must be contiguous, on the weight's device");
    a.weight = g;
  }
  if (grad_bias.has_value() && grad_bias->defined()) {
    const Tensor& g = *grad_bias;
    TORCH_CHECK_VALUE(t.bias.defined(), "geopref.", op, ": grad_bias_acc is given without a bias");
    TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == t.vocab(), "geopref.", op,
                      ": grad_bias_acc must be [V] = [", t.vocab(), "], got ", g.sizes());
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat, "geopref.", op,
                     ": grad_bias_acc must be float32 (the library's grad_bias), got ",
                     g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == t.weight.device() && g.is_contiguous(), "geopref.", op,
                      ": grad_bias_acc must be contiguous, on the weight's device");
    a.bias = g;
  }
  return a;
}

/// The optional host copies of offsets [S + 1] and pairs [P, 2] (the CUDA
/// path's opt-in one pass, geopref/cuda/fused_linear.cuh): CPU int64, the
/// shapes of what they copy, host_pairs only beside pairs. Returns them
/// contiguous (undefined when not given). `values`: also compare them with
/// offsets and pairs element by element (the CPU kernels, where both are host
/// memory: the same verdict as the library's host_layout_mismatch, which the
/// CUDA path records on the device and reports with `check`).
inline std::tuple<Tensor, Tensor> check_host_layout(const c10::optional<Tensor>& host_offsets,
                                                    const c10::optional<Tensor>& host_pairs,
                                                    const Tensor& offsets,
                                                    const c10::optional<Tensor>& pairs,
                                                    bool values, const char* op) {
  Tensor ho, hp;
  const auto host_i64 = [&](const Tensor& h, const char* name) {
    TORCH_CHECK_VALUE(h.device().is_cpu(), "geopref.", op, ": ", name,
                      " must be a CPU tensor (a host copy), got one on ", h.device());
    TORCH_CHECK_TYPE(h.scalar_type() == at::kLong, "geopref.", op, ": ", name,
                     " must be int64, got ", h.scalar_type());
  };
  if (host_offsets.has_value() && host_offsets->defined()) {
    host_i64(*host_offsets, "host_offsets");
    TORCH_CHECK_VALUE(host_offsets->dim() == 1 && host_offsets->size(0) == offsets.size(0),
                      "geopref.", op, ": host_offsets must be [S + 1] = [", offsets.size(0),
                      "] like offsets, got ", host_offsets->sizes());
    ho = host_offsets->contiguous();
  }
  const bool has_pairs = pairs.has_value() && pairs->defined();
  if (host_pairs.has_value() && host_pairs->defined()) {
    host_i64(*host_pairs, "host_pairs");
    TORCH_CHECK_VALUE(has_pairs, "geopref.", op,
                      ": host_pairs is given without pairs (TRL's layout needs none)");
    TORCH_CHECK_VALUE(host_pairs->sizes() == pairs->sizes(), "geopref.", op,
                      ": host_pairs must have the shape of pairs ", pairs->sizes(), ", got ",
                      host_pairs->sizes());
    hp = host_pairs->contiguous();
  }
  if (values) {
    // The first differing element names the mismatch (a list can be long).
    const auto compare = [&](const Tensor& host, const Tensor& dev, const char* name,
                             const char* dev_name) {
      const Tensor a = host.reshape({-1}), b = dev.to(at::kLong).cpu().contiguous().reshape({-1});
      const Tensor diff = at::nonzero(a != b);
      if (diff.size(0) == 0) return;
      const int64_t i = diff[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, "geopref.", op, ": ",
                        geopref::status_string(geopref::status::host_layout_mismatch), " (",
                        name, " element ", i, " is ", a[i].item<int64_t>(), ", ", dev_name,
                        " has ", b[i].item<int64_t>(), ")");
    };
    if (ho.defined()) compare(ho, offsets, "host_offsets", "offsets");
    if (hp.defined()) compare(hp, *pairs, "host_pairs", "pairs");
  }
  return {ho, hp};
}

/// grad_mask = (hidden, weight, bias): which gradients to compute. The
/// bias's is false without a bias.
inline std::array<bool, 3> effective_mask(std::array<bool, 3> mask, const linear_tensors& t) {
  if (!t.bias.defined()) mask[2] = false;
  return mask;
}

/// Empty [0] tensors stand for gradients not asked for (the fake kernels
/// give the same shapes).
inline Tensor empty_grad(const Tensor& like) { return at::empty({0}, like.options()); }

/// The per-row upstream gradient of the per-sequence log-probs' backward:
/// g_t = grad_seq[s] for the rows t of sequence s, and the labels with every
/// row outside all sequences set to ignore_index (such a row's lse was never
/// computed, so the per-token backward must not score it). Runs on the
/// tensors' device without a host synchronisation (offsets are not read on
/// the host). Assumes offsets the forward accepted (non-decreasing, from 0).
/// With token weights [N] (defined), g_t is also multiplied by w_t.
inline std::tuple<Tensor, Tensor> rows_of_sequences(const Tensor& labels, const Tensor& offsets,
                                                    const Tensor& grad_seq, int64_t ignore_index,
                                                    const Tensor& token_weights = Tensor()) {
  const int64_t N = labels.size(0), S = offsets.size(0) - 1;
  const auto i64 = labels.options().dtype(at::kLong);
  if (S == 0 || N == 0)
    return {at::zeros({N}, grad_seq.options()), at::full({N}, ignore_index, i64)};
  const Tensor off = offsets.to(at::kLong).contiguous();
  const Tensor rows = at::arange(N, i64);
  // s(t) = #{s' >= 1 : offsets[s'] <= t}: the sequence whose range holds t,
  // or S for rows at or past offsets[S].
  const Tensor seq = at::searchsorted(off.slice(0, 1), rows, /*out_int32=*/false, /*right=*/true);
  const Tensor inside = seq < S;
  Tensor g = at::where(inside, grad_seq.index_select(0, seq.clamp_max(S - 1)),
                       at::zeros({}, grad_seq.options()));
  if (token_weights.defined()) g = g * token_weights.to(g.scalar_type());
  const Tensor y = at::where(inside, labels.to(at::kLong), at::full({}, ignore_index, i64));
  return {g, y};
}

}  // namespace geopref_torch
