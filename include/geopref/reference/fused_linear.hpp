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

/// Inputs: the hidden states and projection (linear_source), then the
/// blocks of inputs<> other than the logits.
template <class Elem, class Label, class Offset>
struct linear_inputs : linear_source<Elem>, sequence_rows<Label, Offset>, pair_set {};

/// compute()'s outputs (its grad_logits is ignored) and the three gradients
/// (linear_gradients), each optional; grad_weight and grad_bias are added to
/// with `accumulate`.
struct linear_outputs : linear_gradients {
  outputs base;
};

namespace detail {

using linear_mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An element as the kernels read it, in double (16-bit types through float).
template <class Elem>
double widen(Elem x) {
  if constexpr (std::is_same_v<Elem, double>) return x;
  else return static_cast<double>(static_cast<float>(x));
}

/// Rows [row0, row0 + rows) × columns [0, cols) of a row-major [*, ld]
/// array, in double (p is only read, so it may be null when nothing is).
template <class Elem>
linear_mat widen_rows(const Elem* p, int64_t rows, int64_t cols, int64_t ld, int64_t row0 = 0) {
  linear_mat m(rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) m(r, k) = widen(p[(row0 + r) * ld + k]);
  return m;
}

/// Z = H·Wᵀ + b, b [W.rows()] or null.
template <class Elem>
linear_mat project(const linear_mat& H, const linear_mat& W, const Elem* bias) {
  linear_mat Z = H * W.transpose();
  if (bias != nullptr)
    for (int64_t t = 0; t < Z.rows(); ++t)
      for (int64_t v = 0; v < Z.cols(); ++v) Z(t, v) += widen(bias[v]);
  return Z;
}

/// The shape, stride and pointer checks of fused_linear and
/// fused_linear_vocab_parallel; the strides with 0 resolved to Hd.
template <class Elem, class Label, class Offset>
status check_linear(const linear_inputs<Elem, Label, Offset>& in, const linear_outputs& out,
                    int64_t* ldh, int64_t* ldw, int64_t* ldgh, int64_t* ldgw) {
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  *ldh = in.ld_hidden == 0 ? Hd : in.ld_hidden;
  *ldw = in.ld_weight == 0 ? Hd : in.ld_weight;
  *ldgh = out.ld_grad_hidden == 0 ? Hd : out.ld_grad_hidden;
  *ldgw = out.ld_grad_weight == 0 ? Hd : out.ld_grad_weight;
  if (N < 0 || Hd < 0 || V < 0 || (N > 0 && (Hd == 0 || V == 0))) return status::invalid_shape;
  if (*ldh < Hd || *ldw < Hd || *ldgh < Hd || *ldgw < Hd) return status::invalid_stride;
  if (N > 0 && (in.hidden == nullptr || in.weight == nullptr)) return status::null_pointer;
  if (out.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;
  return status::success;
}

/// compute()'s inputs on the logits Z [N, V] of `in`: its rows, sequences,
/// token weights, pairs and upstream gradients, as they are.
template <class Elem, class Label, class Offset>
inputs<double, Label, Offset> logits_inputs(const linear_inputs<Elem, Label, Offset>& in,
                                            const linear_mat& Z) {
  inputs<double, Label, Offset> x;
  static_cast<sequence_rows<Label, Offset>&>(x) = in;
  static_cast<pair_set&>(x) = in;
  x.logits = Z.data();
  x.ld = in.vocab;
  return x;
}

/// From G [N, w], the logits gradient of projection rows [v0, v0 + w):
/// grad_weight rows (+)= Gᵀ·H and grad_bias (+)= Σ_t G[t, ·] (each when
/// given; `out` is linear_outputs or linear_token_grads).
template <class Out>
void write_weight_grads(const linear_mat& G, const linear_mat& H, int64_t v0, int64_t ldgw,
                        Out& out) {
  const int64_t N = G.rows(), w = G.cols(), Hd = H.cols();
  if (out.grad_weight != nullptr) {
    const linear_mat gw = G.transpose() * H;
    for (int64_t v = 0; v < w; ++v)
      for (int64_t k = 0; k < Hd; ++k) {
        double& d = out.grad_weight[(v0 + v) * ldgw + k];
        d = out.accumulate ? d + gw(v, k) : gw(v, k);
      }
  }
  if (out.grad_bias != nullptr)
    for (int64_t v = 0; v < w; ++v) {
      const double g = N > 0 ? G.col(v).sum() : 0.0;
      double& d = out.grad_bias[v0 + v];
      d = out.accumulate ? d + g : g;
    }
}

/// grad_hidden = gh [N, Hd] into the caller's [N, ldgh] array.
inline void write_hidden_grad(const linear_mat& gh, int64_t ldgh, double* grad_hidden) {
  for (int64_t t = 0; t < gh.rows(); ++t)
    for (int64_t k = 0; k < gh.cols(); ++k) grad_hidden[t * ldgh + k] = gh(t, k);
}

/// `run(x, o)` (compute() or a variant) on the logits inputs x [N, V] into
/// out.base, with the logits gradient, when backward, into G [N, V] (resized)
/// instead of the caller's grad_logits, which is left as it is.
template <class X, class Run>
status run_on_logits(const X& x, linear_outputs& out, bool backward, linear_mat& G,
                     const Run& run) {
  outputs o = out.base;
  if (backward) {
    G.resize(x.n_rows, x.vocab);
    o.grad_logits = G.data();
    o.grad_ld = x.vocab;
  } else {
    o.grad_logits = nullptr;
  }
  const status s = run(x, o);
  if (s != status::success) return s;
  o.grad_logits = out.base.grad_logits;  // the caller's, untouched
  o.grad_ld = out.base.grad_ld;
  out.base = o;
  return status::success;
}

/// fused_linear with `run(x, o)` in place of compute(x, opt, o).
template <class Elem, class Label, class Offset, class Run>
status fused_linear_via(const linear_inputs<Elem, Label, Offset>& in, linear_outputs& out,
                        const Run& run) {
  using mat = linear_mat;
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  int64_t ldh = 0, ldw = 0, ldgh = 0, ldgw = 0;
  const status c = check_linear(in, out, &ldh, &ldw, &ldgh, &ldgw);
  if (c != status::success) return c;

  const mat H = widen_rows(in.hidden, N, Hd, ldh);
  const mat W = widen_rows(in.weight, V, Hd, ldw);
  mat Z = project(H, W, in.bias);
  const bool backward =
      out.grad_hidden != nullptr || out.grad_weight != nullptr || out.grad_bias != nullptr;
  mat G;
  const status s = run_on_logits(logits_inputs(in, Z), out, backward, G, run);
  if (s != status::success || !backward) return s;

  if (out.grad_hidden != nullptr) write_hidden_grad(G * W, ldgh, out.grad_hidden);
  write_weight_grads(G, H, 0, ldgw, out);
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

/// The rows of linear_token_logps: hidden states, projection (linear_source)
/// and the rows; no sequences (every row whose label is not ignore_index is
/// scored).
template <class Elem, class Label>
struct linear_token_rows : linear_source<Elem>, vocab_rows<Label> {
  int64_t ignore_index = -100;
};

/// The gradients of linear_token_logps_grad (linear_gradients), each
/// optional; grad_weight and grad_bias are added to with `accumulate`,
/// grad_hidden always overwritten.
using linear_token_grads = linear_gradients;

namespace detail {

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
  H = widen_rows(in.hidden, N, Hd, ldh);
  W = widen_rows(in.weight, V, Hd, ldw);
  Z = project(H, W, in.bias);
  return status::success;
}

/// The per-token rows over Z [N, V]: the vocab_rows block of `in` as it is.
template <class Elem, class Label>
token_rows<double, Label> linear_token_as_rows(const linear_token_rows<Elem, Label>& in,
                                               const linear_mat& Z) {
  token_rows<double, Label> r;
  static_cast<vocab_rows<Label>&>(r) = in;
  r.logits = Z.data();
  r.ld = Z.cols();
  r.ignore_index = in.ignore_index;
  return r;
}

}  // namespace detail

/// ℓ_t, lse_t (and H_t) of Z = H·Wᵀ + b: token_logps on the whole Z.
template <class Elem, class Label>
status linear_token_logps(const linear_token_rows<Elem, Label>& in, token_outputs& out) {
  detail::linear_mat H, W, Z;
  const status s = detail::linear_token_logits(in, H, W, Z);
  if (s != status::success) return s;
  return token_logps(detail::linear_token_as_rows(in, Z), out);
}

/// Given g_t = ∂Loss/∂ℓ_t [N], optionally e_t = ∂Loss/∂H_t [N] (the entropy's
/// upstream; token_logps_grad's rules), and the forward's lse [N] (all read
/// for scored rows only): G = token_logps_grad on Z, then grad_H = G·W,
/// grad_W (+)= Gᵀ·H, grad_b (+)= Σ_t G[t, ·]. On error nothing is written.
template <class Elem, class Label>
status linear_token_logps_grad(const linear_token_rows<Elem, Label>& in, const double* lse,
                               const double* grad_token_logps, linear_token_grads& out,
                               const double* grad_entropy = nullptr) {
  const int64_t N = in.n_rows, Hd = in.hidden_size, V = in.vocab;
  const int64_t ldgh = out.ld_grad_hidden == 0 ? Hd : out.ld_grad_hidden;
  const int64_t ldgw = out.ld_grad_weight == 0 ? Hd : out.ld_grad_weight;
  if (ldgh < Hd || ldgw < Hd) return status::invalid_stride;
  if (out.grad_bias != nullptr && in.bias == nullptr) return status::null_pointer;
  detail::linear_mat H, W, Z;
  status s = detail::linear_token_logits(in, H, W, Z);
  if (s != status::success) return s;
  detail::linear_mat G(N, V);
  s = token_logps_grad(detail::linear_token_as_rows(in, Z), lse, grad_token_logps, G.data(), V,
                       grad_entropy);
  if (s != status::success) return s;
  if (out.grad_hidden != nullptr) detail::write_hidden_grad(G * W, ldgh, out.grad_hidden);
  detail::write_weight_grads(G, H, 0, ldgw, out);
  return status::success;
}

}  // namespace geopref::reference
