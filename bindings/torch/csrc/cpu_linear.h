// bindings/torch/csrc/cpu_linear.h — the fast CPU path of the per-token
// operators from hidden states (linear_token_logps and its backward, which
// linear_sequence_logps_grad shares), for float32, float16 and bfloat16
// inputs; float64 stays on the CPU reference (the exact path, double
// throughout). Called from ops_linear.cpp's CPU kernels.
//
// The logits Z = H·Wᵀ + b are never whole: they are formed one tile of
// [rows, cols] (at most `chunk_bytes` and MAX_TILE_BYTES of float32) at a
// time by ATen's GEMM (float32 accumulation; 16-bit inputs are widened to
// float32 first, so the logits are float32, never rounded to the input
// dtype), and each tile is folded, one row per task (at::parallel_for), into
// the row's online statistics: the running maximum m of z′ and, shifted by
// it, s = Σ exp(z′ − m), t = Σ exp(z′ − m)(z′ − m), q = Σ exp(2(z′ − m)),
// Σ z′, the first arg-max of z, z′ at the label (z′ = the logit transform
// of z, options.hpp). From them, in double:
//   lse = m + log s,  ℓ = z′_y − lse,  H = log s − t/s,
//   log Σ p² = log q − 2 log s,  mean z′ = Σ z′ / V,
//   is_top1 = (the first arg-max of z is y, and no NaN in the row).
// The backward forms each tile again and overwrites it with
//   G = [g (1[v = y] − p) + e p (E − z′)] · ∂z′/∂z,   E = Σ p z′ = lse − H
// (the label column as −g·expm1(z′_y − lse), as the reference writes it),
// then grad_hidden += G·W_c, grad_weight[c] (+)= Gᵀ·H (float32, one chunk of
// vocabulary rows at a time: no sum across threads), grad_bias[c] += Σ_rows G
// (double, each column summed over the rows in order). The fold's sums have
// a fixed order whatever the thread count, and the GEMMs are ATen's (MKL's
// on x86 builds), whose sums are fixed for a given thread count: the results
// are bitwise repeatable at a given torch.get_num_threads(), but MKL may
// split a GEMM's inner dimension differently at another thread count: with
// H = 40, 3 and 4 threads gave grad_hidden and grad_weight differing in the
// last bit from 1 and 2 threads; with H = 256 and 512 (V = 4096, 8192) all of
// 1 to 4 threads agreed bitwise. Fixed single-threaded GEMM tasks inside
// at::parallel_for would make them independent of it, but MKL called inside
// ATen's OpenMP region ran 3-20x slower there (PyTorch 2.15, 2-core VM).
//
// Rows whose label is ignore_index are dropped before the GEMMs (their
// outputs and gradient rows are 0). The same checks and statuses as the
// reference: label_out_of_range, invalid_upstream_grad, invalid_shape.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "geopref/options.hpp"
#include "geopref/reference/reference.hpp"
#include "geopref/status.hpp"
#include "linear.h"

namespace geopref_torch::cpu_linear {

/// The largest tile of float32 logits this path forms, whatever chunk_bytes
/// allows (the API's default budget is 1 GiB, meant for a GPU): large GEMMs
/// and few parallel regions (8 MiB tiles ran about 20% slower at N = 2048,
/// V = 32000 on a loaded 2-core VM), memory still O(N·cols), not O(N·V).
inline constexpr int64_t MAX_TILE_BYTES = int64_t{64} << 20;
/// The narrowest tile (vocabulary columns) when the budget is smaller than
/// all rows times all columns; rows are then blocked instead.
inline constexpr int64_t MIN_TILE_COLS = 256;

/// Whether the fast path takes these inputs (float64 stays on the reference).
inline bool takes(const linear_tensors& t) {
  const auto d = t.hidden.scalar_type();
  return d == at::kFloat || d == at::kHalf || d == at::kBFloat16;
}

/// The tile [rows, cols] for n scored rows and V columns within chunk_bytes
/// (and MAX_TILE_BYTES): all rows when cols >= MIN_TILE_COLS fit, else blocks of rows.
struct tiling {
  int64_t rows, cols;
};
inline tiling tile_for(int64_t n, int64_t V, int64_t chunk_bytes) {
  const int64_t elems = std::max<int64_t>(std::min(chunk_bytes, MAX_TILE_BYTES) / 4, 1);
  n = std::max<int64_t>(n, 1);
  if (elems / n >= V) return {n, V};
  const int64_t cols = std::min(V, std::max(MIN_TILE_COLS, elems / n));
  return {std::clamp<int64_t>(elems / cols, 1, n), cols};
}

/// z′ = c·tanh(s·z/c)/T (c > 0) or s·z/T, in float32, formed as the
/// reference forms it (options.hpp: apply, slope); the identity gives z.
struct transform {
  float s, c, T;
  bool cap;
  explicit transform(const geopref::logit_transform& tr)
      : s(static_cast<float>(tr.scale)),
        c(static_cast<float>(tr.softcap)),
        T(static_cast<float>(tr.temperature)),
        cap(tr.softcap > 0.0) {}
  template <bool Cap>
  float apply(float z, float& th) const {
    if constexpr (Cap) {
      th = std::tanh(s * z / c);
      return c * th / T;
    } else {
      return s * z / T;
    }
  }
  /// ∂z′/∂z given th = tanh(s·z/c) (unused without a cap).
  template <bool Cap>
  float slope(float th) const {
    if constexpr (Cap) return s / T * (1.0f - th * th);
    else return s / T;
  }
};

/// One row's running statistics over the vocabulary chunks seen so far.
struct row_state {
  float m = -std::numeric_limits<float>::infinity();  // max z′ (NaN ignored)
  double s = 0.0, t = 0.0, q = 0.0, zsum = 0.0;
  float best = -std::numeric_limits<float>::infinity();  // max z (raw), for is_top1
  int64_t best_at = -1;
  bool nan = false;
  float zy = 0.0f;  // z′ at the label
};

/// Which of the optional statistics to fold.
struct wants {
  bool entropy = false, sq = false, mean = false, top1 = false;
};

/// Folds one row's tile segment z[0, n) (columns c0 + v, bias added here) into
/// st; z′ is written back into z.
template <bool Cap>
inline void fold_row(float* z, const float* bias, int64_t c0, int64_t n, int64_t y,
                     const transform& tr, const wants& w, row_state& st) {
  float cm = -std::numeric_limits<float>::infinity();
  double zsum = 0.0;
  bool nan = false;
  for (int64_t v = 0; v < n; ++v) {
    const float x = bias != nullptr ? z[v] + bias[v] : z[v];
    if (w.top1) {
      // The first arg-max of z over the columns in order: strictly greater only.
      if (x > st.best) st.best = x, st.best_at = c0 + v;
    }
    nan |= std::isnan(x);
    float th;
    const float zp = tr.apply<Cap>(x, th);
    z[v] = zp;
    cm = std::fmax(cm, zp);
    if (w.mean) zsum += zp;
  }
  st.nan |= nan;
  st.zsum += zsum;
  if (y >= c0 && y < c0 + n) st.zy = z[y - c0];
  if (!(cm > st.m)) cm = st.m;  // the new maximum (NaN-free)
  if (cm == -std::numeric_limits<float>::infinity()) return;  // nothing finite yet
  if (cm != st.m && st.m != -std::numeric_limits<float>::infinity()) {
    // Shift the sums from st.m to cm: exp(z′ − cm) = r·exp(z′ − m).
    const double d = static_cast<double>(st.m) - cm, r = std::exp(d);
    st.t = r * (st.t + d * st.s);
    st.s *= r;
    st.q *= r * r;
  }
  st.m = cm;
  double s = 0.0, t = 0.0, q = 0.0;
  for (int64_t v = 0; v < n; ++v) {
    const float d = z[v] - cm;
    const float e = std::exp(d);
    s += e;
    if (w.entropy) t += static_cast<double>(e) * d;
    if (w.sq) q += static_cast<double>(e) * e;
  }
  st.s += s;
  st.t += t;
  st.q += q;
}

/// The checks the reference makes before writing anything: the sizes and
/// every row's label (ignore_index or in [0, V)).
inline geopref::status check_rows(const linear_tensors& t, const at::Tensor& y,
                                  int64_t ignore_index) {
  const int64_t N = t.n_rows(), Hd = t.hidden_size(), V = t.vocab();
  if (N > 0 && (Hd == 0 || V == 0)) return geopref::status::invalid_shape;
  const int64_t* lab = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    if (lab[i] != ignore_index && (lab[i] < 0 || lab[i] >= V))
      return geopref::status::label_out_of_range;
  return geopref::status::success;
}

/// The scored rows' indices [Ns] (int64) and whether that is every row.
inline at::Tensor scored_rows(const at::Tensor& y, int64_t ignore_index) {
  return at::nonzero(y != ignore_index).reshape({-1});
}

/// The inputs as the GEMMs read them: the scored rows of hidden in float32
/// (a view when nothing is dropped and hidden is float32 already), the bias in
/// float32 (or undefined).
struct gemm_inputs {
  at::Tensor rows, hidden, bias;
  int64_t n = 0;
  gemm_inputs(const linear_tensors& t, const at::Tensor& y, int64_t ignore_index) {
    rows = scored_rows(y, ignore_index);
    n = rows.size(0);
    const bool all = n == t.n_rows();
    at::Tensor h = all ? t.hidden : t.hidden.index_select(0, rows);
    hidden = h.scalar_type() == at::kFloat ? h : h.to(at::kFloat);
    if (t.bias.defined()) bias = t.bias.to(at::kFloat).contiguous();
  }
  const float* bias_at(int64_t c0) const {
    return bias.defined() ? bias.data_ptr<float>() + c0 : nullptr;
  }
};

/// Columns [c0, c0 + vc) of the weight in float32: a view of a float32
/// weight, else widened into `buf`.
inline at::Tensor weight_chunk(const at::Tensor& weight, int64_t c0, int64_t vc, at::Tensor& buf) {
  const at::Tensor w = weight.narrow(0, c0, vc);
  if (w.scalar_type() == at::kFloat) return w;
  at::Tensor out = buf.narrow(0, 0, vc * weight.size(1)).view({vc, weight.size(1)});
  out.copy_(w);
  return out;
}

/// A contiguous [r, c] float32 view of the flat buffer `buf`.
inline at::Tensor tile_view(at::Tensor& buf, int64_t r, int64_t c) {
  return buf.narrow(0, 0, r * c).view({r, c});
}

/// linear_token_logps's outputs for the rows of t (each of out's pointers
/// optional, [N] double; is_top1 uint8), the reference's token_logps on Z.
/// Every tile of the scored rows' logits, in order (vocabulary chunks outer,
/// row blocks inner): fill(r0, nr, c0, vc, z, hr, wc, bias) with z = the
/// [nr, vc] float32 tile H[r0, r0 + nr)·W[c0, c0 + vc)ᵀ (no bias, no
/// transform), hr those rows of the hidden states and wc that chunk of the
/// weight, both float32.
template <class Fn>
inline void for_each_tile(const linear_tensors& t, const gemm_inputs& in, const tiling& tl,
                          Fn&& fn) {
  const int64_t n = in.n, V = t.vocab();
  if (n == 0) return;
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  at::Tensor buf = at::empty({tl.rows * tl.cols}, f32);
  at::Tensor wbuf = t.weight.scalar_type() == at::kFloat
                        ? at::Tensor()
                        : at::empty({tl.cols * t.hidden_size()}, f32);
  for (int64_t c0 = 0; c0 < V; c0 += tl.cols) {
    const int64_t vc = std::min(tl.cols, V - c0);
    const at::Tensor wc = weight_chunk(t.weight, c0, vc, wbuf);
    const float* b = in.bias_at(c0);
    for (int64_t r0 = 0; r0 < n; r0 += tl.rows) {
      const int64_t nr = std::min(tl.rows, n - r0);
      at::Tensor z = tile_view(buf, nr, vc);
      const at::Tensor hr = in.hidden.narrow(0, r0, nr);
      at::mm_out(z, hr, wc.t());
      fn(r0, nr, c0, vc, z, hr, wc, b);
    }
  }
}

inline geopref::status token_logps(const linear_tensors& t, const at::Tensor& y,
                                   int64_t ignore_index, const geopref::logit_transform& ltr,
                                   int64_t chunk_bytes,
                                   const geopref::reference::token_outputs& out) {
  if (const auto s = geopref::validate(ltr); s != geopref::status::success) return s;
  if (const auto s = check_rows(t, y, ignore_index); s != geopref::status::success) return s;
  const int64_t N = t.n_rows(), V = t.vocab();
  const auto zero = [&](auto* p) {
    if (p != nullptr) std::fill(p, p + N, 0);
  };
  zero(out.token_logps), zero(out.lse), zero(out.entropy), zero(out.log_sum_sq_probs),
      zero(out.mean_logits), zero(out.is_top1);
  const gemm_inputs in(t, y, ignore_index);
  const int64_t n = in.n;
  if (n == 0) return geopref::status::success;
  const int64_t* rows = in.rows.data_ptr<int64_t>();
  const int64_t* lab = y.data_ptr<int64_t>();
  const wants w{out.entropy != nullptr, out.log_sum_sq_probs != nullptr,
                out.mean_logits != nullptr, out.is_top1 != nullptr};
  const transform tr(ltr);
  const tiling tl = tile_for(n, V, chunk_bytes);
  std::vector<row_state> st(static_cast<size_t>(n));
  for_each_tile(t, in, tl,
                [&](int64_t r0, int64_t nr, int64_t c0, int64_t vc, at::Tensor& z,
                    const at::Tensor&, const at::Tensor&, const float* b) {
                  float* zp = z.data_ptr<float>();
                  at::parallel_for(0, nr, 8, [&](int64_t lo, int64_t hi) {
                    for (int64_t i = lo; i < hi; ++i) {
                      const int64_t r = r0 + i, yl = lab[rows[r]];
                      if (tr.cap) fold_row<true>(zp + i * vc, b, c0, vc, yl, tr, w, st[r]);
                      else fold_row<false>(zp + i * vc, b, c0, vc, yl, tr, w, st[r]);
                    }
                  });
                });
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const row_state& a = st[r];
      const int64_t i = rows[r];
      const bool bad = a.nan || !std::isfinite(a.m);
      const double ls = std::log(a.s), lse = bad ? nan : a.m + ls;
      if (out.lse) out.lse[i] = lse;
      if (out.token_logps) out.token_logps[i] = bad ? nan : a.zy - lse;
      if (out.entropy) out.entropy[i] = bad ? nan : ls - a.t / a.s;
      if (out.log_sum_sq_probs) out.log_sum_sq_probs[i] = bad ? nan : std::log(a.q) - 2.0 * ls;
      if (out.mean_logits) out.mean_logits[i] = a.zsum / static_cast<double>(V);
      if (out.is_top1) out.is_top1[i] = !a.nan && a.best_at == lab[i] ? 1 : 0;
    }
  });
  return geopref::status::success;
}

/// Overwrites one row's tile segment z[0, n) (columns c0 + v) with the
/// gradient with respect to z: G = [g (1[v = y] − p) + e p (E − z′)]·∂z′/∂z.
template <bool Cap>
inline void grad_row(float* z, const float* bias, int64_t c0, int64_t n, int64_t y, float lse,
                     float g, float e, float E, const transform& tr) {
  for (int64_t v = 0; v < n; ++v) {
    const float x = bias != nullptr ? z[v] + bias[v] : z[v];
    float th;
    const float zp = tr.apply<Cap>(x, th);
    const float d = zp - lse;
    const float p = std::exp(d);
    float gv = c0 + v == y ? g * -std::expm1(d) : g * -p;
    if (e != 0.0f && p != 0.0f) gv += e * p * (E - zp);
    z[v] = gv * tr.slope<Cap>(th);
  }
}

/// The gradients of Σ_t g_t ℓ_t (+ e_t H_t) with respect to hidden, weight and
/// bias (mask: which), in their dtypes ([0] for those not asked for), given
/// the forward's lse [N] and g [N] (double; read for scored rows only), and
/// optionally grad_entropy e [N] with the forward's entropy [N] (required
/// with it). The reference's linear_token_logps_grad.
/// unrounded: grad_weight stays float32 and grad_bias double (for a caller
/// who adds them to its float32 accumulators: one rounding, there).
/// weight_acc: a contiguous float32 [V, Hd] accumulator the weight gradient
/// is added to in place, tile by tile (no [V, Hd] buffer of its own); it is
/// then result's grad_weight.
inline geopref::status token_logps_grad(const linear_tensors& t, const at::Tensor& y,
                                        int64_t ignore_index,
                                        const geopref::logit_transform& ltr, int64_t chunk_bytes,
                                        const double* lse, const double* grad,
                                        std::array<bool, 3> mask,
                                        std::tuple<at::Tensor, at::Tensor, at::Tensor>& result,
                                        const double* grad_entropy = nullptr,
                                        const double* entropy = nullptr,
                                        bool unrounded = false,
                                        const at::Tensor& weight_acc = {}) {
  if (const auto s = geopref::validate(ltr); s != geopref::status::success) return s;
  if (const auto s = check_rows(t, y, ignore_index); s != geopref::status::success) return s;
  const int64_t N = t.n_rows(), V = t.vocab(), Hd = t.hidden_size();
  const int64_t* lab = y.data_ptr<int64_t>();
  if (N > 0 && lse == nullptr) return geopref::status::null_pointer;
  if (grad_entropy != nullptr && entropy == nullptr) return geopref::status::null_pointer;
  for (int64_t i = 0; i < N; ++i)
    if (lab[i] != ignore_index && ((grad != nullptr && !std::isfinite(grad[i])) ||
                                   (grad_entropy != nullptr && !std::isfinite(grad_entropy[i]))))
      return geopref::status::invalid_upstream_grad;
  mask = effective_mask(mask, t);
  const gemm_inputs in(t, y, ignore_index);
  const int64_t n = in.n;
  const auto f32 = t.hidden.options().dtype(at::kFloat);
  const bool w32 = t.weight.scalar_type() == at::kFloat;
  at::Tensor gh = mask[0] ? at::zeros({n, Hd}, f32) : at::Tensor();
  // The weight's gradient: into the caller's accumulator, or a buffer whose
  // every block the first row tile overwrites (zeros only without rows).
  const bool adding = mask[1] && weight_acc.defined();
  TORCH_INTERNAL_ASSERT(!adding || (weight_acc.scalar_type() == at::kFloat &&
                                    weight_acc.is_contiguous() &&
                                    weight_acc.sizes() == at::IntArrayRef({V, Hd})));
  at::Tensor gw = !mask[1] ? at::Tensor()
                  : adding  ? weight_acc
                  : n > 0   ? at::empty({V, Hd}, f32)
                            : at::zeros({V, Hd}, f32);  // the weight's, if float32
  at::Tensor gb = mask[2] ? at::zeros({V}, f32.dtype(at::kDouble)) : at::Tensor();
  const int64_t* rows = n > 0 ? in.rows.data_ptr<int64_t>() : nullptr;
  std::vector<float> rl(n), rg(n), re(n), rE(n);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = rows[r];
    rl[r] = static_cast<float>(lse[i]);
    rg[r] = grad != nullptr ? static_cast<float>(grad[i]) : 0.0f;
    re[r] = grad_entropy != nullptr ? static_cast<float>(grad_entropy[i]) : 0.0f;
    rE[r] = grad_entropy != nullptr ? static_cast<float>(lse[i] - entropy[i]) : 0.0f;
  }
  const transform tr(ltr);
  const tiling tl = tile_for(n, V, chunk_bytes);
  if (mask[0] || mask[1] || mask[2])
    for_each_tile(t, in, tl,
                  [&](int64_t r0, int64_t nr, int64_t c0, int64_t vc, at::Tensor& z,
                      const at::Tensor& hr, const at::Tensor& wc, const float* b) {
                    float* zp = z.data_ptr<float>();
                    at::parallel_for(0, nr, 8, [&](int64_t lo, int64_t hi) {
                      for (int64_t i = lo; i < hi; ++i) {
                        const int64_t r = r0 + i, yl = lab[rows[r]];
                        if (tr.cap)
                          grad_row<true>(zp + i * vc, b, c0, vc, yl, rl[r], rg[r], re[r], rE[r],
                                         tr);
                        else
                          grad_row<false>(zp + i * vc, b, c0, vc, yl, rl[r], rg[r], re[r], rE[r],
                                          tr);
                      }
                    });
                    if (mask[0]) gh.narrow(0, r0, nr).addmm_(z, wc);
                    if (mask[1]) {
                      at::Tensor gwc = gw.narrow(0, c0, vc);
                      if (r0 == 0 && !adding) at::mm_out(gwc, z.t(), hr);
                      else gwc.addmm_(z.t(), hr);
                    }
                    if (mask[2]) {
                      // Each column summed over the tile's rows in order (no split of a sum).
                      double* gbp = gb.data_ptr<double>() + c0;
                      at::parallel_for(0, vc, 256, [&](int64_t lo, int64_t hi) {
                        for (int64_t i = 0; i < nr; ++i) {
                          const float* zr = zp + i * vc;
                          for (int64_t v = lo; v < hi; ++v) gbp[v] += zr[v];
                        }
                      });
                    }
                  });
  const auto dt = t.hidden.scalar_type();
  at::Tensor rh = empty_grad(t.hidden), rw = empty_grad(t.weight), rb = empty_grad(t.hidden);
  if (mask[0]) {
    if (n == N) {
      rh = dt == at::kFloat ? gh : gh.to(dt);
    } else {
      rh = at::zeros({N, Hd}, t.hidden.options());
      if (n > 0) rh.index_copy_(0, in.rows, gh.to(dt));
    }
  }
  if (mask[1]) rw = w32 || unrounded ? gw : gw.to(t.weight.scalar_type());
  if (mask[2]) rb = unrounded ? gb : gb.to(t.bias.scalar_type());
  result = {rh, rw, rb};
  return geopref::status::success;
}

}  // namespace geopref_torch::cpu_linear
