// geopref/reference/fused_linear.hpp — the CPU reference of
// geopref::cuda::fused_linear_step / fused_linear_logps: the loss and its
// gradients from hidden states H [N, Hd] and a projection W [V, Hd] (bias
// b [V]), in double.
//
// Deliberately the plain formulation, with nothing chunked: the logits
// Z = H·Wᵀ + b are formed whole in double from the (rounded) inputs as given,
// compute() runs on them, and the gradients are the two products
//   grad_H = G·W,  grad_W (+)= Gᵀ·H,  grad_b (+)= Σ_t G[t, ·],  G = ∂Loss/∂Z.
// The GPU path rounds each chunk of Z to the input dtype before its forward
// (as a framework's linear layer would); the reference does not, so tests
// bound that rounding separately (tests/cuda/test_fused_linear.cu).
//
// linear_token_logps / linear_token_logps_grad: the per-token primitive
// (token_logps / token_logps_grad of reference.hpp) on the same Z, the CPU
// mirror of geopref::cuda::linear_token_logps(_grad).
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/reference.hpp"
#include "geopref/status.hpp"

namespace geopref::reference {

/// Inputs: the hidden states and projection, then the fields of inputs<>
/// other than the logits.
template <class Elem, class Label, class Offset>
struct linear_inputs {
  const Elem* hidden = nullptr;  // [N, ld_hidden] row-major
  int64_t ld_hidden = 0;         // >= Hd; 0 means Hd
  const Elem* weight = nullptr;  // [V, ld_weight] row-major
  int64_t ld_weight = 0;         // >= Hd; 0 means Hd
  const Elem* bias = nullptr;    // [V] or null
  int64_t n_rows = 0, hidden_size = 0, vocab = 0;
  const Label* labels = nullptr;
  const Offset* offsets = nullptr;
  int64_t n_seqs = 0, n_pairs = 0;
  const int64_t* pairs = nullptr;
  const double* soft_labels = nullptr;
  const double* ref_logps = nullptr;
  const double* weights = nullptr;
  const double* token_weights = nullptr;
  double grad_loss = 1.0;
  const double* grad_pair_losses = nullptr;
};

/// compute()'s outputs (its grad_logits is ignored) and the three gradients,
/// each optional; grad_weight and grad_bias are added to with `accumulate`.
struct linear_outputs {
  outputs base;
  double* grad_hidden = nullptr;  // [N, ld_grad_hidden]
  int64_t ld_grad_hidden = 0;     // 0 means Hd
  double* grad_weight = nullptr;  // [V, ld_grad_weight]
  int64_t ld_grad_weight = 0;     // 0 means Hd
  double* grad_bias = nullptr;    // [V], needs a bias
  bool accumulate = false;
};

namespace detail {
/// fused_linear with `run(x, o)` in place of compute(x, opt, o).
template <class Elem, class Label, class Offset, class Run>
status fused_linear_via(const linear_inputs<Elem, Label, Offset>& in, linear_outputs& out,
                        const Run& run) {
  using mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldh = in.ld_hidden == 0 ? Hd : in.ld_hidden;
  const int64_t ldw = in.ld_weight == 0 ? Hd : in.ld_weight;
  const int64_t ldgh = out.ld_grad_hidden == 0 ? Hd : out.ld_grad_hidden;
  const int64_t ldgw = out.ld_grad_weight == 0 ? Hd : out.ld_grad_weight;
  if (N < 0 || Hd < 0 || V < 0 || (N > 0 && (Hd == 0 || V == 0))) return status::invalid_shape;
  if (ldh < Hd || ldw < Hd || ldgh < Hd || ldgw < Hd) return status::invalid_stride;
  if (N > 0 && (in.hidden == nullptr || in.weight == nullptr)) return status::null_pointer;
  if (out.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;

  auto widen = [](Elem x) {
    if constexpr (std::is_same_v<Elem, double>) return x;
    else return static_cast<double>(static_cast<float>(x));
  };
  mat H(N, Hd), W(V, Hd);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < Hd; ++k) H(t, k) = widen(in.hidden[t * ldh + k]);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < Hd; ++k) W(v, k) = widen(in.weight[v * ldw + k]);
  mat Z = H * W.transpose();
  if (in.bias != nullptr)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t v = 0; v < V; ++v) Z(t, v) += widen(in.bias[v]);

  inputs<double, Label, Offset> x = make_inputs<double, Label, Offset>(
      Z.data(), N, V, in.labels, in.offsets, in.n_seqs, in.n_pairs);
  x.pairs = in.pairs;
  x.soft_labels = in.soft_labels;
  x.ref_logps = in.ref_logps;
  x.weights = in.weights;
  x.token_weights = in.token_weights;
  x.grad_loss = in.grad_loss;
  x.grad_pair_losses = in.grad_pair_losses;
  const bool backward =
      out.grad_hidden != nullptr || out.grad_weight != nullptr || out.grad_bias != nullptr;
  mat G;
  outputs o = out.base;
  if (backward) {
    G.resize(N, V);
    o.grad_logits = G.data();
    o.grad_ld = V;
  } else {
    o.grad_logits = nullptr;
  }
  const status s = run(x, o);
  if (s != status::success) return s;
  o.grad_logits = out.base.grad_logits;  // the caller's, untouched
  o.grad_ld = out.base.grad_ld;
  out.base = o;
  if (!backward) return status::success;

  if (out.grad_hidden != nullptr) {
    const mat gh = G * W;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < Hd; ++k) out.grad_hidden[t * ldgh + k] = gh(t, k);
  }
  if (out.grad_weight != nullptr) {
    const mat gw = G.transpose() * H;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < Hd; ++k) {
        double& d = out.grad_weight[v * ldgw + k];
        d = out.accumulate ? d + gw(v, k) : gw(v, k);
      }
  }
  if (out.grad_bias != nullptr)
    for (int64_t v = 0; v < V; ++v) {
      const double g = N > 0 ? G.col(v).sum() : 0.0;
      out.grad_bias[v] = out.accumulate ? out.grad_bias[v] + g : g;
    }
  return status::success;
}
}  // namespace detail

/// Validates the shapes, then compute() on Z = H·Wᵀ + b and the gradient
/// products. On error nothing is written.
template <class Elem, class Label, class Offset>
status fused_linear(const linear_inputs<Elem, Label, Offset>& in, const options& opt,
                    linear_outputs& out) {
  return detail::fused_linear_via(in, out, [&](const auto& x, outputs& o) {
    return compute(x, opt, o);
  });
}

/// The same with a caller's margin loss: compute_with_loss() on Z, the CPU
/// mirror of geopref::cuda::fused_linear_step<Loss>.
template <class Elem, class Label, class Offset, class Loss>
status fused_linear_with_loss(const linear_inputs<Elem, Label, Offset>& in, const options& opt,
                              const Loss& loss, linear_outputs& out) {
  return detail::fused_linear_via(in, out, [&](const auto& x, outputs& o) {
    return compute_with_loss(x, opt, loss, o);
  });
}

// ---------------------------------------------------------------------------
// The per-token primitive from hidden states.

/// The rows of linear_token_logps: hidden states, projection, labels; no
/// sequences (every row whose label is not ignore_index is scored).
template <class Elem, class Label>
struct linear_token_rows {
  const Elem* hidden = nullptr;  // [N, ld_hidden] row-major
  int64_t ld_hidden = 0;         // >= Hd; 0 means Hd
  const Elem* weight = nullptr;  // [V, ld_weight] row-major
  int64_t ld_weight = 0;         // >= Hd; 0 means Hd
  const Elem* bias = nullptr;    // [V] or null
  int64_t n_rows = 0, hidden_size = 0, vocab = 0;
  const Label* labels = nullptr;  // [N]
  int64_t ignore_index = -100;
};

/// The gradients of linear_token_logps_grad, each optional; grad_weight and
/// grad_bias are added to with `accumulate`, grad_hidden always overwritten.
struct linear_token_grads {
  double* grad_hidden = nullptr;  // [N, ld_grad_hidden]
  int64_t ld_grad_hidden = 0;     // 0 means Hd
  double* grad_weight = nullptr;  // [V, ld_grad_weight]
  int64_t ld_grad_weight = 0;     // 0 means Hd
  double* grad_bias = nullptr;    // [V], needs a bias
  bool accumulate = false;
};

namespace detail {

using linear_mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// H, W and Z = H·Wᵀ + b in double from the (rounded) elements as given.
template <class Elem, class Label>
status linear_token_logits(const linear_token_rows<Elem, Label>& in, linear_mat& H, linear_mat& W,
                           linear_mat& Z) {
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldh = in.ld_hidden == 0 ? Hd : in.ld_hidden;
  const int64_t ldw = in.ld_weight == 0 ? Hd : in.ld_weight;
  if (N < 0 || Hd < 0 || V < 0 || (N > 0 && (Hd == 0 || V == 0))) return status::invalid_shape;
  if (ldh < Hd || ldw < Hd) return status::invalid_stride;
  if (N > 0 && (in.hidden == nullptr || in.weight == nullptr || in.labels == nullptr))
    return status::null_pointer;
  auto widen = [](Elem x) {
    if constexpr (std::is_same_v<Elem, double>) return x;
    else return static_cast<double>(static_cast<float>(x));
  };
  H.resize(N, Hd);
  W.resize(V, Hd);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < Hd; ++k) H(t, k) = widen(in.hidden[t * ldh + k]);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < Hd; ++k) W(v, k) = widen(in.weight[v * ldw + k]);
  Z = H * W.transpose();
  if (in.bias != nullptr)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t v = 0; v < V; ++v) Z(t, v) += widen(in.bias[v]);
  return status::success;
}

template <class Label>
token_rows<double, Label> linear_token_as_rows(const linear_mat& Z, const Label* labels,
                                               int64_t ignore_index) {
  token_rows<double, Label> r;
  r.logits = Z.data();
  r.n_rows = Z.rows();
  r.vocab = Z.cols();
  r.ld = Z.cols();
  r.labels = labels;
  r.ignore_index = ignore_index;
  return r;
}

}  // namespace detail

/// ℓ_t, lse_t (and H_t) of Z = H·Wᵀ + b: token_logps on the whole Z.
template <class Elem, class Label>
status linear_token_logps(const linear_token_rows<Elem, Label>& in, token_outputs& out) {
  detail::linear_mat H, W, Z;
  const status s = detail::linear_token_logits(in, H, W, Z);
  if (s != status::success) return s;
  return token_logps(detail::linear_token_as_rows(Z, in.labels, in.ignore_index), out);
}

/// Given g_t = ∂Loss/∂ℓ_t [N] and the forward's lse [N] (both read for scored
/// rows only): G = token_logps_grad on Z, then grad_H = G·W,
/// grad_W (+)= Gᵀ·H, grad_b (+)= Σ_t G[t, ·]. On error nothing is written.
template <class Elem, class Label>
status linear_token_logps_grad(const linear_token_rows<Elem, Label>& in, const double* lse,
                               const double* grad_token_logps, linear_token_grads& out) {
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldgh = out.ld_grad_hidden == 0 ? Hd : out.ld_grad_hidden;
  const int64_t ldgw = out.ld_grad_weight == 0 ? Hd : out.ld_grad_weight;
  if (ldgh < Hd || ldgw < Hd) return status::invalid_stride;
  if (out.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;
  detail::linear_mat H, W, Z;
  status s = detail::linear_token_logits(in, H, W, Z);
  if (s != status::success) return s;
  detail::linear_mat G(N, V);
  s = token_logps_grad(detail::linear_token_as_rows(Z, in.labels, in.ignore_index), lse,
                       grad_token_logps, G.data(), V);
  if (s != status::success) return s;
  if (out.grad_hidden != nullptr) {
    const detail::linear_mat gh = G * W;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < Hd; ++k) out.grad_hidden[t * ldgh + k] = gh(t, k);
  }
  if (out.grad_weight != nullptr) {
    const detail::linear_mat gw = G.transpose() * H;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < Hd; ++k) {
        double& d = out.grad_weight[v * ldgw + k];
        d = out.accumulate ? d + gw(v, k) : gw(v, k);
      }
  }
  if (out.grad_bias != nullptr)
    for (int64_t v = 0; v < V; ++v) {
      const double g = N > 0 ? G.col(v).sum() : 0.0;
      out.grad_bias[v] = out.accumulate ? out.grad_bias[v] + g : g;
    }
  return status::success;
}

}  // namespace geopref::reference
