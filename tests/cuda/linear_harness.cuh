// tests/cuda/linear_harness.cuh — what the tests of the entries from hidden
// states share (test_fused_linear.cu, test_fused_linear_one_pass.cu,
// test_linear_token.cu): rounded random matrices with padded rows, reading
// them back, a cuBLAS handle, an exact workspace, and the unfused path's two
// GEMM stages (the logits materialised, then the weight gradients from the
// logits' gradient) that the fused entries are checked against.
#pragma once

#include <catch2/catch.hpp>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <vector>

#include "geopref/cuda/fused_linear.cuh"
#include "gpu_harness.cuh"

namespace geopref::test {

/// A [rows, cols] matrix of uniform(−scale, scale) values rounded to `d`:
/// `bytes` in the device layout [rows, ld] (padding 0xff: NaN, never read),
/// `vals` the rounded values, dense [rows, cols].
inline void fill(gc::dtype d, std::mt19937_64& rng, double scale, int64_t rows, int64_t cols,
                 int64_t ld, std::vector<uint8_t>& bytes, std::vector<double>& vals) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int e = dtype_bytes(d);
  bytes.assign(static_cast<size_t>(rows * ld * e), 0xff);  // padding: NaN, never read
  vals.assign(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      vals[r * cols + k] =
          encode(d, static_cast<float>(scale) * u(rng), bytes.data() + (r * ld + k) * e);
}

/// Reads back a [rows, cols] matrix of `d` with row stride ld.
inline std::vector<double> read_matrix(gc::dtype d, const std::vector<uint8_t>& bytes, int64_t rows,
                                       int64_t cols, int64_t ld) {
  std::vector<double> v(static_cast<size_t>(rows * cols));
  const int e = dtype_bytes(d);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) v[r * cols + k] = decode(d, bytes.data() + (r * ld + k) * e);
  return v;
}

inline std::vector<double> to_d(const std::vector<float>& f) {
  return std::vector<double>(f.begin(), f.end());
}

/// The weight-side outputs of an entry from hidden states: grad_hidden,
/// grad_weight and grad_bias, dense as doubles and as the bytes written.
struct linear_grads {
  std::vector<double> gh, gw, gb;  // [N, Hd], [V, Hd], [V]
  std::vector<uint8_t> gh_bits, gw_bits, gb_bits;

  /// Reads grad_hidden [N, ldh] in `dt`, grad_weight [V, ldh] in float
  /// (gw_float32) or `dt`, and grad_bias [V] (float) when `bias`.
  void read(const dmem& dgh, const dmem& dgw, const dmem& dgb, gc::dtype dt, bool gw_float32,
            bool bias, int64_t N, int64_t V, int64_t Hd, int64_t ldh) {
    gh_bits = download<uint8_t>(dgh.get(), dgh.bytes());
    gw_bits = download<uint8_t>(dgw.get(), dgw.bytes());
    gh = read_matrix(dt, gh_bits, N, Hd, ldh);
    gw = read_matrix(gw_float32 ? gc::dtype::float32 : dt, gw_bits, V, Hd, ldh);
    if (bias) {
      gb_bits = download<uint8_t>(dgb.get(), dgb.bytes());
      gb = to_d(download<float>(dgb.get(), static_cast<size_t>(V)));
    }
  }
  /// The three outputs bit for bit those of `o` (another run).
  void check_same_bits(const linear_grads& o) const {
    CHECK(gh_bits == o.gh_bits);
    CHECK(gw_bits == o.gw_bits);
    CHECK(gb_bits == o.gb_bits);
  }
};

struct blas_handle {
  cublasHandle_t h = nullptr;
  blas_handle() { REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~blas_handle() { cublasDestroy(h); }
  blas_handle(const blas_handle&) = delete;
  blas_handle& operator=(const blas_handle&) = delete;
};

/// A workspace of exactly `bytes`, its base one byte past a 256-byte
/// boundary and its end where the allocation ends: the library's rounding of
/// the base uses all 255 spare bytes, so a layout one piece short writes
/// into the guard band (AddressSanitizer in the sanitizer build). Poisoned.
struct exact_ws {
  dmem mem;
  void* p;
  explicit exact_ws(size_t bytes) : mem(bytes + 1) {
    poison(mem);
    p = static_cast<uint8_t*>(mem.get()) + 1;
  }
};

/// A two-phase entry on an exact_ws: the size query (`asked` gets its bytes
/// when not null), the call, and the device's status, all REQUIREd to be
/// success. GEOPREF_RUN_EXACT(gc::entry, args...) calls
/// gc::entry(workspace, bytes, args...).
template <class Call>
void run_exact(Call&& call, size_t* asked = nullptr) {
  size_t bytes = 0;
  REQUIRE(call(nullptr, bytes) == status::success);
  if (asked != nullptr) *asked = bytes;
  const exact_ws ws(bytes);
  REQUIRE(call(ws.p, bytes) == status::success);
  REQUIRE(device_status_of(ws.p) == status::success);
}
#define GEOPREF_RUN_EXACT(entry, ...) \
  ::geopref::test::run_exact(     \
      [&](void* ws_, size_t& bytes_) { return entry(ws_, bytes_, __VA_ARGS__); })

/// grad_weight (in `gw_type`) and grad_bias (float, [V]) filled with `prior`
/// before an accumulating call; the caller subtracts it again.
inline void preload_prior(const dmem& gw, gc::dtype gw_type, const dmem& gb, int64_t vocab,
                          float prior) {
  const int e = dtype_bytes(gw_type);
  std::vector<uint8_t> w(gw.bytes());
  for (size_t i = 0; i + e <= w.size(); i += static_cast<size_t>(e))
    encode(gw_type, prior, w.data() + i);
  CUDA_REQUIRE(cudaMemcpy(gw.get(), w.data(), w.size(), cudaMemcpyHostToDevice));
  std::vector<float> bb(static_cast<size_t>(vocab), prior);
  CUDA_REQUIRE(cudaMemcpy(gb.get(), bb.data(), bb.size() * 4, cudaMemcpyHostToDevice));
}

/// 2⁻⁸ (bfloat16), 2⁻¹¹ (half), 0 (float): the rounding of a logit to `d`.
inline double unit_roundoff(gc::dtype d) {
  return d == gc::dtype::bfloat16 ? 1.0 / 256 : (d == gc::dtype::float16 ? 1.0 / 2048 : 0.0);
}

/// The error of each row's logits from hidden states (test_fused_linear.cu's
/// error model): e_z(t) = u_T·max_v|z_tv| + (Hd + 2)·u·max_v(Σ_k|h_tk w_vk| +
/// |b_v|) (the rounding of Z to `dt`; the fp32 GEMM's a priori bound), and
/// e'_z(t) = max_v (s/T)·e_z(t) + transform_error_at(z_tv).value, what the
/// softmax sees through the transform (e_z itself for the identity).
/// `logits` [N, V], H [N, Hd], W [V, Hd] dense; `b` [V] or null.
///
/// G's factor ∂z'/∂z: slope(t, z) bounds it at a logit z of row t whose
/// error is e_z(t), slope_error(t, z) its error there: transform_error_at's
/// slope term plus its change over [z ± e_z], |∂²z'/∂z²|·e_z with
/// |∂²z'/∂z²| = (s/T)(s/c)·|2 tanh (1 − tanh²)| ≤ (s/T)(s/c)·4/(3√3) <
/// 0.77 (s/T)(s/c) (0 without a cap).
struct row_logit_errors {
  std::vector<double> ez, ezp;
  geopref::logit_transform tr;
  case_config tc;  // transform_error_at's inputs: the dtype and the transform
  double curv = 0;
  row_logit_errors(gc::dtype dt, const geopref::logit_transform& tr_,
                   const std::vector<double>& logits, const std::vector<double>& H,
                   const std::vector<double>& W, const double* b, int64_t N, int64_t V, int64_t Hd)
      : ez(static_cast<size_t>(N)), ezp(static_cast<size_t>(N)), tr(tr_) {
    const double u = U32, uT = unit_roundoff(dt);
    const double s_T = tr.scale / tr.temperature;
    curv = tr.softcap > 0 ? 0.77 * s_T * tr.scale / tr.softcap : 0.0;
    tc.dtype = dt;
    tc.logit_transform = tr;
    for (int64_t t = 0; t < N; ++t) {
      double zmax = 0, amax = 0;
      for (int64_t v = 0; v < V; ++v) {
        zmax = std::max(zmax, std::fabs(logits[t * V + v]));
        double a = b != nullptr ? std::fabs(b[v]) : 0.0;
        for (int64_t k = 0; k < Hd; ++k) a += std::fabs(H[t * Hd + k] * W[v * Hd + k]);
        amax = std::max(amax, a);
      }
      ez[t] = uT * zmax + static_cast<double>(Hd + 2) * u * amax;
      ezp[t] = ez[t];
      if (!geopref::is_identity(tr)) {
        double m = 0;
        for (int64_t v = 0; v < V; ++v)
          m = std::max(m, s_T * ez[t] + transform_error_at(tc, logits[t * V + v]).value);
        ezp[t] = m;
      }
    }
  }
  double slope(int64_t t, double z) const {
    return std::fabs(geopref::slope(tr, z)) + curv * ez[static_cast<size_t>(t)];
  }
  double slope_error(int64_t t, double z) const {
    return transform_error_at(tc, z).slope + curv * ez[static_cast<size_t>(t)];
  }
};

/// The unfused path's dense problem: H [N, ldh] and W [V, ldh] on the
/// device in `dt`, the bias as raw `dt` bytes [V] (empty: none).
struct unfused_linear {
  cublasHandle_t h;
  gc::dtype dt;
  const dmem& H;
  const dmem& W;
  int64_t ldh, N, V, Hd;

  /// Z = H·Wᵀ + b for all rows in one GEMM ([N, V], dtype dt, the bias as C
  /// with beta = 1).
  dmem logits(const std::vector<uint8_t>& bias) const {
    const int e = dtype_bytes(dt);
    std::vector<uint8_t> zb(static_cast<size_t>(N * V * e), 0);
    if (!bias.empty())
      for (int64_t r = 0; r < N; ++r)
        std::memcpy(zb.data() + r * V * e, bias.data(), static_cast<size_t>(V * e));
    dmem Z = upload(zb);
    const cudaDataType_t t = gc::detail::blas_type(dt);
    const float one = 1.0f, beta = bias.empty() ? 0.0f : 1.0f;
    REQUIRE(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(V), static_cast<int>(N),
                         static_cast<int>(Hd), &one, W.get(), t, static_cast<int>(ldh), H.get(), t,
                         static_cast<int>(ldh), &beta, Z.get(), t, static_cast<int>(V),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    return Z;
  }
  /// logits(bias), with `rows` (gc::token_rows) reading them: dtype dt, N
  /// rows of V, dense.
  template <class Rows>
  dmem logits(const std::vector<uint8_t>& bias, Rows& rows) const {
    dmem Z = logits(bias);
    rows.logits = Z.get();
    rows.logits_dtype = dt;
    rows.n_rows = N;
    rows.vocab = V;
    rows.ld = V;
    return Z;
  }

  /// From G [N, V] (dtype dt, in the logits' place): grad_H = G·W [N, Hd] and
  /// grad_W = Gᵀ·H [V, Hd] in float, one GEMM each; grad_b = Σ_t G[t, ·] on
  /// the host when `bias`.
  void backward(const dmem& G, bool bias, std::vector<double>& gh, std::vector<double>& gw,
                std::vector<double>& gb) const {
    const cudaDataType_t t = gc::detail::blas_type(dt);
    const float one = 1.0f, zero = 0.0f;
    dmem dgh(static_cast<size_t>(N * Hd * 4)), dgw(static_cast<size_t>(V * Hd * 4));
    REQUIRE(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(Hd), static_cast<int>(N),
                         static_cast<int>(V), &one, W.get(), t, static_cast<int>(ldh), G.get(), t,
                         static_cast<int>(V), &zero, dgh.get(), CUDA_R_32F, static_cast<int>(Hd),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(Hd), static_cast<int>(V),
                         static_cast<int>(N), &one, H.get(), t, static_cast<int>(ldh), G.get(), t,
                         static_cast<int>(V), &zero, dgw.get(), CUDA_R_32F, static_cast<int>(Hd),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    gh = to_d(download<float>(dgh.get(), static_cast<size_t>(N * Hd)));
    gw = to_d(download<float>(dgw.get(), static_cast<size_t>(V * Hd)));
    const std::vector<uint8_t> g = download<uint8_t>(G.get(), G.bytes());  // the copy REQUIREd
    if (bias) {
      const int e = dtype_bytes(dt);
      gb.assign(static_cast<size_t>(V), 0.0);
      for (int64_t row = 0; row < N; ++row)
        for (int64_t v = 0; v < V; ++v) gb[v] += decode(dt, g.data() + (row * V + v) * e);
    }
  }
};

/// Every element of `got` within factor·bound of `want` (the first five
/// misses reported with their values).
inline void check_all(const char* what, const std::vector<double>& got,
                      const std::vector<double>& want, const std::vector<double>& bound,
                      double factor) {
  REQUIRE(got.size() == want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    if (!(err <= factor * bound[i]) && bad++ < 5) {
      INFO(what << "[" << i << "]: got " << got[i] << " want " << want[i] << " err " << err
                << " bound " << factor * bound[i]);
      CHECK(false);
    }
  }
  CHECK(bad == 0);
}

/// A describe() line's logit transform (nothing for the identity).
inline void describe_transform(std::ostream& o, const geopref::logit_transform& tr) {
  if (!geopref::is_identity(tr))
    o << " logit_scale=" << tr.scale << " softcap=" << tr.softcap
      << " temperature=" << tr.temperature;
}

/// f(c) for a default Config (a test's case description: dtype, seed, ...)
/// in every dtype, each with `seed`.
template <class Config, class F>
void for_each_dtype(uint64_t seed, F&& f) {
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    Config c;
    c.dtype = d;
    c.seed = seed;
    f(c);
  }
}

/// The transform cases of the linear entries: a scale map and a soft-cap
/// with a scale and a temperature, in float32 and bfloat16 (the MUFU tanh
/// for 16-bit logits on a GPU). f(c, seed) for a default Config with the
/// dtype, the transform (its `tr`) and the seed ++seed; `seed` is the
/// counter, for a case that draws more.
template <class Config, class F>
void for_each_linear_transform(uint64_t seed, F&& f) {
  const geopref::logit_transform maps[] = {{0.6, 0.0, 0.8}, {1.7, 2.5, 1.3}};
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::bfloat16})
    for (const auto& tr : maps) {
      Config c;
      c.dtype = d;
      c.tr = tr;
      c.seed = ++seed;
      f(c, seed);
    }
}

/// The bounds that every entry from hidden states shares (test_fused_linear.cu's
/// error model), on a problem `p` of a test (c.dtype, c.tr, c.bias, c.vocab,
/// c.hidden; H, W, b dense) with N rows: the logits' errors per row (errs),
/// lse_t ≤ e'_z + eps_sum + 4u|lse| and ℓ_t ≤ 2e'_z + eps_sum + 4u(|ℓ| +
/// |lse|), each + `extra` (what a caller's merges add), from the exact
/// `logits`, `lse` and `logp`; products() the gradient products'.
struct linear_bounds {
  row_logit_errors errs;
  std::vector<double> lse, logp, gh, gw, gb;

  template <class Problem>
  linear_bounds(const Problem& p, int64_t N, const std::vector<double>& logits,
                const std::vector<double>& ref_lse, const std::vector<double>& ref_logp,
                double extra = 0.0)
      : errs(p.c.dtype, p.c.tr, logits, p.H, p.W, p.c.bias ? p.b.data() : nullptr, N, p.c.vocab,
             p.c.hidden) {
    const double u = U32;
    for (int64_t t = 0; t < N; ++t) {
      const double l = std::fabs(ref_lse[t]), lp = std::fabs(ref_logp[t]);
      lse.push_back(errs.ezp[t] + eps_sum(p.c.vocab) + 4 * u * l + extra);
      logp.push_back(2 * errs.ezp[t] + eps_sum(p.c.vocab) + 4 * u * (lp + l) + extra);
    }
  }

  /// From eG [N, V], the bound of each element of G (whose exact values are
  /// `grad_logits`): grad_H = G·W: Σ_v eG|w| + (V + 2)u Σ_v|G w| + u_T|grad_H|;
  /// grad_W = Gᵀ·H over `chunks` chunks: Σ_t eG|h| + (N + 2)u Σ_t|G h| + one
  /// rounding per chunk (u_T for a grad_weight in the input dtype, at least
  /// 2u) of the sum and of an accumulated prior 0.25; grad_b: Σ_t eG +
  /// (N + 3)u (Σ_t|G| + 0.25).
  void products(const std::vector<double>& eG, const std::vector<double>& grad_logits,
                const std::vector<double>& grad_hidden, const std::vector<double>& H,
                const std::vector<double>& W, int64_t N, int64_t V, int64_t Hd, int64_t chunks,
                double uT, bool gw_float32) {
    const double u = U32, u_gw = gw_float32 ? 0.0 : uT;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < Hd; ++k) {
        double e = 0, a = 0;
        for (int64_t v = 0; v < V; ++v) {
          e += eG[t * V + v] * std::fabs(W[v * Hd + k]);
          a += std::fabs(grad_logits[t * V + v] * W[v * Hd + k]);
        }
        gh.push_back(e + static_cast<double>(V + 2) * u * a + uT * std::fabs(grad_hidden[t * Hd + k]));
      }
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t k = 0; k < Hd; ++k) {
        double e = 0, a = 0;
        for (int64_t t = 0; t < N; ++t) {
          e += eG[t * V + v] * std::fabs(H[t * Hd + k]);
          a += std::fabs(grad_logits[t * V + v] * H[t * Hd + k]);
        }
        // accumulate: the prior 0.25 joins each rounding (u_gw · 0.25 per chunk).
        gw.push_back(e + static_cast<double>(N + 2) * u * a +
                     static_cast<double>(chunks + 1) * std::max(u_gw, 2 * u) * (a + 0.25));
      }
      double e = 0, a = 0;
      for (int64_t t = 0; t < N; ++t) {
        e += eG[t * V + v];
        a += std::fabs(grad_logits[t * V + v]);
      }
      gb.push_back(e + static_cast<double>(N + 3) * u * (a + 0.25));
    }
  }

  /// g's grad_hidden, grad_weight and (with `bias`) grad_bias within
  /// factor × these bounds of gh, gw, gb.
  void check_grads(const linear_grads& g, const std::vector<double>& want_gh,
                   const std::vector<double>& want_gw, const std::vector<double>& want_gb,
                   bool bias, double factor) const {
    check_all("grad_hidden", g.gh, want_gh, gh, factor);
    check_all("grad_weight", g.gw, want_gw, gw, factor);
    if (bias) check_all("grad_bias", g.gb, want_gb, gb, factor);
  }
};

}  // namespace geopref::test
