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
struct row_logit_errors {
  std::vector<double> ez, ezp;
  row_logit_errors(gc::dtype dt, const geopref::logit_transform& tr,
                   const std::vector<double>& logits, const std::vector<double>& H,
                   const std::vector<double>& W, const double* b, int64_t N, int64_t V, int64_t Hd)
      : ez(static_cast<size_t>(N)), ezp(static_cast<size_t>(N)) {
    const double u = U32, uT = unit_roundoff(dt);
    const double s_T = tr.scale / tr.temperature;
    case_config tc;  // transform_error_at's inputs: the dtype and the transform
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

}  // namespace geopref::test
