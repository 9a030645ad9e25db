// tests/cuda/test_linear_token.cu — geopref::cuda::linear_token_logps and
// linear_token_logps_grad (geopref/cuda/linear_token_logps.cuh) against the
// CPU reference (reference::linear_token_logps(_grad), in double) and
// against the unfused path (one GEMM for all logits, token_logps,
// token_logps_grad in place, then the two gradient GEMMs), on awkward shapes
// (V not a multiple of 8, Hd = 1, V = 1, a one-row budget, split rows,
// ignore_index rows, padded strides, accumulate vs overwrite); bitwise
// repeatability; bad input. Runs on a GPU and on the host emulator.
//
// Error model: test_fused_linear.cu's, with the pair step left out. Each
// logit carries e_z(t) = u_T·max_v|z_tv| + (Hd + 2)·u·max_v(Σ_k|h_tk w_vk| + |b_v|)
// (the rounding of Z to the input dtype, u_T = 2⁻⁸ bf16, 2⁻¹¹ half, 0 float;
// the fp32 GEMM's a priori bound). Then lse_t ≤ e_z + eps_sum + 4u|lse|,
// ℓ_t ≤ 2e_z + eps_sum + 4u(|ℓ| + |lse|); the entropy as test_token.cu's
// bound with err(lse) and a further e_z·Σ_v p_v|log p_v + H| (∂H/∂z_v =
// −p_v(log p_v + H)); G_tv = g_t(𝟙 − p_tv) with the caller's exact g_t:
// |g| p (e_z + err(lse))·1.01 + (u_T + 3u)|G| (G rounded to the input dtype
// before the GEMMs, as the unfused path's G); grad_H, grad_W, grad_b as
// test_fused_linear.cu (the GEMMs' γ bounds, one rounding per chunk for a
// grad_weight in the input dtype). The backward reads the GPU's own lse, so
// err(lse) enters G. Against the unfused path each side is within the bound
// of the exact value, so the two differ by at most twice it.
#include <catch2/catch.hpp>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <vector>

#include "geopref/cuda/linear_token_logps.cuh"
#include "gpu_harness.cuh"
#include "linear_bridge.hpp"
#include "linear_harness.cuh"

using namespace geopref::test;

namespace {

struct lt_config {
  gc::dtype dtype = gc::dtype::float32;
  int64_t rows = 9, hidden = 8, vocab = 37;  // 37: not a multiple of any vector width
  int64_t chunk_rows = 4;                    // the budget, in rows
  bool bias = true, accumulate = false, gw_float32 = true;
  int64_t pad = 0;         // extra elements of each H / W / grad_hidden row
  int64_t ignore = -100;   // ignore_index (a fifth of the rows carry it)
  bool labels32 = false;   // int32 labels
  bool entropy_upstream = false;  // the backward also takes e_t = ∂Loss/∂H_t
  uint64_t seed = 1;
  geopref::logit_transform tr{};  // z' = c·tanh(s·z/c)/T on every Z (options.hpp)
};

std::string describe(const lt_config& c) {
  std::ostringstream o;
  o << dtype_name(c.dtype) << " N=" << c.rows << " Hd=" << c.hidden << " V=" << c.vocab
    << " chunk=" << c.chunk_rows << " bias=" << c.bias << " acc=" << c.accumulate
    << " gw32=" << c.gw_float32 << " pad=" << c.pad << " ignore=" << c.ignore
    << " l32=" << c.labels32 << " e_t=" << c.entropy_upstream << " seed=" << c.seed;
  describe_transform(o, c.tr);
  return o.str();
}

struct lt_problem {
  lt_config c;
  int64_t ldh = 0;
  std::vector<uint8_t> Hb, Wb, bb;  // device layout, with row padding
  std::vector<double> H, W, b;      // dense doubles of the rounded elements
  std::vector<int64_t> labels;
  std::vector<float> g, e;    // g_t, and e_t (entropy_upstream; else empty)
  std::vector<double> g_d, e_d;
};

lt_problem make_lt(const lt_config& c) {
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  lt_problem p;
  p.c = c;
  p.ldh = c.hidden + c.pad;
  const double scale = 1.5 / std::sqrt(static_cast<double>(c.hidden));  // logits O(2)
  fill(c.dtype, rng, scale, c.rows, c.hidden, p.ldh, p.Hb, p.H);
  fill(c.dtype, rng, scale * 3, c.vocab, c.hidden, p.ldh, p.Wb, p.W);
  if (c.bias) fill(c.dtype, rng, 0.5, 1, c.vocab, c.vocab, p.bb, p.b);
  for (int64_t t = 0; t < c.rows; ++t) {
    p.labels.push_back(unit(rng) < 0.2 ? c.ignore
                                       : static_cast<int64_t>(rng() % static_cast<uint64_t>(c.vocab)));
    const uint64_t r = rng() % 8;  // some exact zeros and some large values
    p.g.push_back(r == 0 ? 0.0f : (r == 1 ? 20.0f * normal(rng) : normal(rng)));
  }
  p.g_d.assign(p.g.begin(), p.g.end());
  if (c.entropy_upstream) {
    for (int64_t t = 0; t < c.rows; ++t) {
      const uint64_t r = rng() % 8;  // as g_t: some exact zeros and some large values
      p.e.push_back(r == 0 ? 0.0f : (r == 1 ? 10.0f * normal(rng) : normal(rng)));
    }
    p.e_d.assign(p.e.begin(), p.e.end());
  }
  return p;
}

int64_t ldc_of(const lt_config& c) {
  const int64_t per16 = 16 / dtype_bytes(c.dtype);
  return (c.vocab + per16 - 1) / per16 * per16;
}

struct lt_device {
  dmem H, W, b, labels, g, e;
  explicit lt_device(const lt_problem& p)
      : H(upload(p.Hb)), W(upload(p.Wb)), b(upload(p.bb)),
        labels(p.c.labels32 ? upload(std::vector<int32_t>(p.labels.begin(), p.labels.end()))
                            : upload(p.labels)),
        g(upload(p.g)), e(p.e.empty() ? dmem() : upload(p.e)) {}
};

gc::linear_token_rows rows_of(const lt_problem& p, const lt_device& d, cublasHandle_t h) {
  const lt_config& c = p.c;
  gc::linear_token_rows r;
  r.hidden = d.H.get();
  r.ld_hidden = p.ldh;
  r.weight = d.W.get();
  r.ld_weight = p.ldh;
  r.bias = c.bias ? d.b.get() : nullptr;
  r.type = c.dtype;
  r.n_rows = c.rows;
  r.hidden_size = c.hidden;
  r.vocab = c.vocab;
  r.logit_transform = c.tr;
  r.labels = d.labels.get();
  r.label_type = c.labels32 ? gc::index_type::int32 : gc::index_type::int64;
  r.ignore_index = c.ignore;
  r.chunk_bytes = static_cast<size_t>(c.chunk_rows * ldc_of(c) * dtype_bytes(c.dtype));
  r.cublas = h;
  return r;
}

struct lt_result : linear_grads {
  std::vector<double> token_logps, lse, entropy;
  std::vector<uint8_t> tlp_bits;
};

/// The fused path: forward, then the backward with the forward's lse. With
/// `accumulate`, grad_weight / grad_bias first hold 0.25, subtracted again.
lt_result run_fused(const lt_problem& p, cublasHandle_t h) {
  const lt_config& c = p.c;
  const int e = dtype_bytes(c.dtype), egw = c.gw_float32 ? 4 : e;
  lt_device d(p);
  const size_t n = static_cast<size_t>(c.rows);
  dmem tlp(n * 4), lse(n * 4), ent(n * 4), gh(static_cast<size_t>(c.rows * p.ldh * e)),
      gw(static_cast<size_t>(c.vocab * p.ldh * egw)), gb(static_cast<size_t>(c.vocab) * 4);
  for (const dmem* m : {&tlp, &lse, &ent, &gh, &gw, &gb}) poison(*m);
  const float prior = 0.25f;
  if (c.accumulate)
    preload_prior(gw, c.gw_float32 ? gc::dtype::float32 : c.dtype, gb, c.vocab, prior);
  gc::linear_token_logps_args fa;
  fa.rows = rows_of(p, d, h);
  fa.token_logps = tlp.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = ent.get<float>();
  GEOPREF_RUN_EXACT(gc::linear_token_logps, fa);
  gc::linear_token_grad_args ga;
  ga.rows = fa.rows;
  ga.lse = lse.get<float>();
  ga.grad_token_logps = d.g.get<float>();
  ga.grad_hidden = gh.get();
  ga.ld_grad_hidden = p.ldh;
  ga.grad_weight = gw.get();
  ga.ld_grad_weight = p.ldh;
  ga.grad_weight_float32 = c.gw_float32;
  ga.grad_bias = c.bias ? gb.get<float>() : nullptr;
  ga.accumulate = c.accumulate;
  if (c.entropy_upstream) {  // e_t with the forward's own H_t
    ga.grad_entropy = d.e.get<float>();
    ga.entropy = ent.get<float>();
  }
  GEOPREF_RUN_EXACT(gc::linear_token_logps_grad, ga);
  lt_result r;
  r.tlp_bits = download<uint8_t>(tlp.get(), tlp.bytes());
  r.token_logps = to_d(download<float>(tlp.get(), n));
  r.lse = to_d(download<float>(lse.get(), n));
  r.entropy = to_d(download<float>(ent.get(), n));
  r.read(gh, gw, gb, c.dtype, c.gw_float32, c.bias, c.rows, c.vocab, c.hidden, p.ldh);
  if (c.accumulate) {
    for (auto& x : r.gw) x -= prior;
    for (auto& x : r.gb) x -= prior;
  }
  return r;
}

/// The unfused path: Z = H·Wᵀ + b for all rows in one GEMM (dtype T),
/// token_logps, token_logps_grad in place (dtype T), then grad_H = G·W and
/// grad_W = Gᵀ·H (float) in one GEMM each, grad_b on the host.
lt_result run_unfused(const lt_problem& p, cublasHandle_t h) {
  const lt_config& c = p.c;
  lt_device d(p);
  const unfused_linear lin{h, c.dtype, d.H, d.W, p.ldh, c.rows, c.vocab, c.hidden};
  gc::token_rows rows;
  dmem Z = lin.logits(c.bias ? p.bb : std::vector<uint8_t>{}, rows);
  rows.logit_transform = c.tr;
  rows.labels = d.labels.get();
  rows.label_type = c.labels32 ? gc::index_type::int32 : gc::index_type::int64;
  rows.ignore_index = c.ignore;
  const size_t n = static_cast<size_t>(c.rows);
  dmem tlp(n * 4), lse(n * 4), ent(n * 4);
  gc::token_logps_args fa;
  fa.rows = rows;
  fa.token_logps = tlp.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = ent.get<float>();
  GEOPREF_RUN(gc::token_logps, fa);
  gc::token_grad_args ga;
  ga.rows = rows;
  ga.lse = lse.get<float>();
  ga.grad_token_logps = d.g.get<float>();
  ga.grad_logits = Z.get();  // in place
  if (c.entropy_upstream) {
    ga.grad_entropy = d.e.get<float>();
    ga.entropy = ent.get<float>();
  }
  GEOPREF_RUN(gc::token_logps_grad, ga);
  lt_result r;
  lin.backward(Z, c.bias, r.gh, r.gw, r.gb);
  r.token_logps = to_d(download<float>(tlp.get(), n));
  r.lse = to_d(download<float>(lse.get(), n));
  r.entropy = to_d(download<float>(ent.get(), n));
  return r;
}

geopref::support::linear_token_ref_result run_ref(const lt_problem& p) {
  geopref::support::linear_ref_problem in;
  in.hidden = p.H.data();
  in.weight = p.W.data();
  in.bias = p.c.bias ? p.b.data() : nullptr;
  in.n_rows = p.c.rows;
  in.hidden_size = p.c.hidden;
  in.vocab = p.c.vocab;
  in.logit_transform = p.c.tr;
  in.labels = p.labels.data();
  geopref::support::linear_token_ref_result r;
  REQUIRE(geopref::support::run_linear_token_reference(
              in, p.c.ignore, p.g_d.data(), r, p.e_d.empty() ? nullptr : p.e_d.data()) ==
          status::success);
  return r;
}

struct lt_bounds : linear_bounds {
  using linear_bounds::linear_bounds;
  std::vector<double> entropy;
};

lt_bounds bounds_of(const lt_problem& p, const geopref::support::linear_token_ref_result& ref) {
  const lt_config& c = p.c;
  const double u = U32, uT = unit_roundoff(c.dtype);
  const int64_t N = c.rows, V = c.vocab, Hd = c.hidden;
  // The logit transform (c.tr), as test_fused_linear.cu's bounds_of: e_z
  // becomes e'_z = max_v (s/T)·e_z + transform_error_at(z_v).value in lse,
  // ℓ and the entropy (whose sensitivities are to z'); G's factor ∂z'/∂z
  // adds transform_error_at's slope error and its change over [z ± e_z],
  // < 0.77 (s/T)(s/c)·e_z (row_logit_errors::slope, ::slope_error). The
  // identity leaves every bound as it was.
  const geopref::logit_transform& tr = c.tr;
  const bool ident = geopref::is_identity(tr);
  lt_bounds b(p, N, ref.logits, ref.lse, ref.token_logps);  // lse_t, ℓ_t
  const row_logit_errors& errs = b.errs;
  const std::vector<double>& ezp = errs.ezp;
  for (int64_t t = 0; t < N; ++t) {
    const double l = ref.lse[t], hh = ref.entropy[t];
    double second = 0, sens = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double dd = l - geopref::apply(tr, ref.logits[t * V + v]);
      const double pr = std::exp(-dd);
      if (pr == 0.0) continue;
      second += pr * dd * (u * dd + 4 * u);
      sens += pr * std::fabs(-dd + hh);
    }
    b.entropy.push_back(b.lse[t] * (1 + hh) + ezp[t] * sens * 1.01 + second + eps_sum(V) * hh +
                        2 * u * hh + 1e-30);
  }
  std::vector<double> eG(static_cast<size_t>(N * V), 0.0);
  for (int64_t t = 0; t < N; ++t) {
    if (p.labels[t] == c.ignore) continue;
    const double cg = std::fabs(p.g_d[t]);
    for (int64_t v = 0; v < V; ++v) {
      const double z = ref.logits[t * V + v];
      const double pr = std::exp(geopref::apply(tr, z) - ref.lse[t]);
      const double G = std::fabs(ref.grad_logits[t * V + v]);
      eG[t * V + v] = cg * pr * (ezp[t] + b.lse[t]) * 1.01 + (uT + 3 * u) * G;
      if (!ident) {
        const double one_minus = std::fabs((v == p.labels[t] ? 1.0 : 0.0) - pr);
        eG[t * V + v] = cg * pr * (ezp[t] + b.lse[t]) * 1.01 * errs.slope(t, z) +
                        cg * one_minus * errs.slope_error(t, z) + (uT + 3 * u) * G;
      }
      if (!c.entropy_upstream || pr == 0.0) continue;
      // The entropy's term of G (with respect to z'): −e_t p_v (ln p_v + H_t).
      // A shift δ of z'_v − lse_t (δ ≤ e'_z + err(lse)) moves it by at most
      // |e_t| p_v (|ln p_v + H_t| + 1) δ; the backward reads the forward's
      // H_t (error ≤ b.entropy) and forms ln p_v = (z'_v − lse_t) in float
      // (2u(|z'_v| + |lse_t|)); its three products and the FFMA that joins
      // g_t's term round at most 4u of the term's parts. Through the
      // transform, as g_t's term: times (|∂z'/∂z| + curv·e_z), plus the
      // slope's own error times the term.
      const double ce = std::fabs(p.e_d[t]);
      const double zp = geopref::apply(tr, z), lnp = zp - ref.lse[t];
      const double term = pr * std::fabs(lnp + ref.entropy[t]);
      const double shift = ce * pr * (std::fabs(lnp + ref.entropy[t]) + 1) *
                           (ezp[t] + b.lse[t]) * 1.01;
      const double arith = ce * pr *
                           (b.entropy[t] + 2 * u * (std::fabs(zp) + std::fabs(ref.lse[t])) +
                            4 * u * (std::fabs(lnp) + ref.entropy[t] + 1));
      eG[t * V + v] += ident ? shift + arith
                             : (shift + arith) * errs.slope(t, z) +
                                   ce * term * errs.slope_error(t, z);
    }
  }
  const int64_t chunks = (N + c.chunk_rows - 1) / c.chunk_rows;
  b.products(eG, ref.grad_logits, ref.grad_hidden, p.H, p.W, N, V, Hd, chunks, uT, c.gw_float32);
  return b;
}

void compare(const lt_problem& p, const lt_result& g, const std::vector<double>& lse,
             const std::vector<double>& logp, const std::vector<double>& ent,
             const std::vector<double>& gh, const std::vector<double>& gw,
             const std::vector<double>& gb, const lt_bounds& b, double factor) {
  check_all("lse", g.lse, lse, b.lse, factor);
  check_all("token_logps", g.token_logps, logp, b.logp, factor);
  check_all("entropy", g.entropy, ent, b.entropy, factor);
  b.check_grads(g, gh, gw, gb, p.c.bias, factor);
}

void check_lt_case(const lt_config& c) {
  INFO(describe(c));
  const lt_problem p = make_lt(c);
  blas_handle h;
  const lt_result g = run_fused(p, h.h);
  const auto ref = run_ref(p);
  const lt_bounds b = bounds_of(p, ref);
  {
    INFO("fused vs the CPU reference");
    compare(p, g, ref.lse, ref.token_logps, ref.entropy, ref.grad_hidden, ref.grad_weight,
            ref.grad_bias, b, 1.0);
  }
  {
    INFO("fused vs the unfused path (each within the bound of the exact value)");
    const lt_result u = run_unfused(p, h.h);
    compare(p, g, u.lse, u.token_logps, u.entropy, u.gh, u.gw, u.gb, b, 2.0);
  }
  {
    INFO("unscored rows: exact zeros");
    for (int64_t t = 0; t < c.rows; ++t)
      if (p.labels[t] == c.ignore) {
        CHECK(g.token_logps[t] == 0.0);
        CHECK(g.lse[t] == 0.0);
        CHECK(g.entropy[t] == 0.0);
        for (int64_t k = 0; k < c.hidden; ++k) CHECK(g.gh[t * c.hidden + k] == 0.0);
      }
  }
  {
    INFO("bitwise repeatable");
    const lt_result g2 = run_fused(p, h.h);
    CHECK(g2.tlp_bits == g.tlp_bits);
    g2.check_same_bits(g);
  }
}

}  // namespace

TEST_CASE("linear_token_logps(_grad) equal the reference and the unfused path: awkward shapes",
          "[linear_token][small]") {
  for_each_dtype<lt_config>(3, [](const lt_config& c) {
    check_lt_case(c);  // V = 37, N = 9 in chunks of 4 (a short last chunk)
    lt_config one = c;
    one.chunk_rows = 1;  // a budget of one row
    one.accumulate = true;
    one.seed = 4;
    check_lt_case(one);
    lt_config narrow = c;
    narrow.hidden = 1;  // Hd = 1
    narrow.gw_float32 = false;  // grad_weight in the input dtype, rounded per chunk
    narrow.accumulate = true;
    narrow.pad = 3;
    narrow.bias = false;
    narrow.seed = 5;
    check_lt_case(narrow);
  });
  lt_config v1;
  v1.vocab = 1;  // ℓ_t = 0: every gradient 0
  v1.hidden = 3;
  v1.rows = 4;
  check_lt_case(v1);
  lt_config ign;
  ign.ignore = 5;  // a label in [0, V) as ignore_index
  ign.labels32 = true;
  ign.vocab = 9;
  ign.rows = 12;
  ign.chunk_rows = 5;
  ign.seed = 7;
  check_lt_case(ign);
  lt_config big;  // one row per chunk and V = 4100 (fp32): split rows
  big.rows = 3;
  big.hidden = 2;
  big.vocab = 4100;
  big.chunk_rows = 1;
  big.seed = 8;
  {
    gc::linear_inputs in;
    in.type = big.dtype;
    in.n_rows = big.rows;
    in.hidden_size = big.hidden;
    in.vocab = big.vocab;
    in.chunk_bytes = static_cast<size_t>(big.chunk_rows * ldc_of(big) * 4);
    REQUIRE(gc::detail::make_linear_layout(in, 0, false).base.splits > 1);
  }
  check_lt_case(big);
}

TEST_CASE("linear_token_logps_grad with the entropy's upstream equals the reference and the "
          "unfused path",
          "[linear_token][small][stats]") {
  for (gc::dtype d : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    lt_config c;
    c.dtype = d;
    c.entropy_upstream = true;
    c.seed = 11;
    check_lt_case(c);  // V = 37, N = 9 in chunks of 4: e_t and H_t offset per chunk
    lt_config one = c;
    one.chunk_rows = 1;
    one.accumulate = true;
    one.seed = 12;
    check_lt_case(one);
    lt_config capped = c;  // through the soft-cap's slope, with a scale and a temperature
    capped.tr.scale = 1.25;
    capped.tr.softcap = 3.0;
    capped.tr.temperature = 0.8;
    capped.seed = 13;
    check_lt_case(capped);
  }
  lt_config v1;  // V = 1: H_t = 0 and p = 1, every gradient 0
  v1.vocab = 1;
  v1.hidden = 3;
  v1.rows = 4;
  v1.entropy_upstream = true;
  check_lt_case(v1);
}

TEST_CASE("linear_token_logps_grad: the entropy's upstream needs the forward's entropy",
          "[linear_token][small][stats]") {
  lt_config c;
  c.entropy_upstream = true;
  lt_problem p = make_lt(c);
  p.labels[0] = c.ignore;  // an ignored row, for the NaN below
  p.labels[1] = 2;         // and a scored one
  blas_handle h;
  lt_device d(p);
  dmem lse(static_cast<size_t>(c.rows) * 4), gh(static_cast<size_t>(c.rows * c.hidden * 4));
  gc::linear_token_grad_args ga;
  ga.rows = rows_of(p, d, h.h);
  ga.lse = lse.get<float>();
  ga.grad_token_logps = d.g.get<float>();
  ga.grad_hidden = gh.get();
  ga.grad_entropy = d.e.get<float>();
  size_t bytes = 0;
  REQUIRE(gc::linear_token_logps_grad(nullptr, bytes, ga) == status::success);
  dmem ws(bytes);
  CHECK(gc::linear_token_logps_grad(ws.get(), bytes, ga) == status::null_pointer);
  ga.entropy = reinterpret_cast<const float*>(d.e.get<char>() + 2);
  CHECK(gc::linear_token_logps_grad(ws.get(), bytes, ga) == status::misaligned_pointer);
  ga.entropy = reinterpret_cast<const float*>(gh.get());  // H_t inside grad_hidden
  CHECK(gc::linear_token_logps_grad(ws.get(), bytes, ga) == status::overlapping_buffers);
  // A NaN e_t on a scored row is device-side invalid_upstream_grad; on an
  // ignored row it is never read.
  dmem ent(static_cast<size_t>(c.rows) * 4);
  ga.entropy = ent.get<float>();
  for (const auto& [row, want] : {std::pair<int64_t, status>{0, status::success},
                                  std::pair<int64_t, status>{1, status::invalid_upstream_grad}}) {
    std::vector<float> e = p.e;
    e[static_cast<size_t>(row)] = NAN;
    dmem bad = upload(e);
    ga.grad_entropy = bad.get<float>();
    REQUIRE(gc::linear_token_logps_grad(ws.get(), bytes, ga) == status::success);
    CHECK(device_status_of(ws) == want);
  }
}

TEST_CASE("linear_token_logps(_grad): bad input is a status, device problems in device_status",
          "[linear_token][small]") {
  lt_config c;
  const lt_problem p = make_lt(c);
  blas_handle h;
  lt_device d(p);
  dmem tlp(static_cast<size_t>(c.rows) * 4), lse(static_cast<size_t>(c.rows) * 4),
      gh(static_cast<size_t>(c.rows * c.hidden * 4)), gw(static_cast<size_t>(c.vocab * c.hidden * 4)),
      gb(static_cast<size_t>(c.vocab) * 4);
  gc::linear_token_logps_args fa;
  fa.rows = rows_of(p, d, h.h);
  fa.token_logps = tlp.get<float>();
  fa.lse = lse.get<float>();
  gc::linear_token_grad_args ga;
  ga.rows = fa.rows;
  ga.lse = lse.get<float>();
  ga.grad_token_logps = d.g.get<float>();
  ga.grad_hidden = gh.get();
  ga.grad_weight = gw.get();
  ga.grad_weight_float32 = true;
  ga.grad_bias = gb.get<float>();
  size_t bytes = 0;
  REQUIRE(gc::linear_token_logps_grad(nullptr, bytes, ga) == status::success);
  dmem ws(bytes);
  auto fwd = [&](const gc::linear_token_logps_args& a) {
    size_t b = bytes;
    return gc::linear_token_logps(ws.get(), b, a);
  };
  auto bwd = [&](const gc::linear_token_grad_args& a) {
    size_t b = bytes;
    return gc::linear_token_logps_grad(ws.get(), b, a);
  };
  REQUIRE(fwd(fa) == status::success);
  REQUIRE(bwd(ga) == status::success);
  { auto a = fa; a.rows.hidden = nullptr; CHECK(fwd(a) == status::null_pointer); }
  { auto a = fa; a.token_logps = nullptr; CHECK(fwd(a) == status::null_pointer); }
  { auto a = fa; a.rows.vocab = 0; CHECK(fwd(a) == status::invalid_shape); }
  { auto a = fa; a.rows.ld_hidden = c.hidden - 1; CHECK(fwd(a) == status::invalid_stride); }
  { auto a = fa; a.rows.chunk_bytes = 4; size_t b = 0;  // below one row of logits
    CHECK(gc::linear_token_logps(nullptr, b, a) == status::workspace_too_small); }
  { auto a = fa; a.lse = fa.token_logps; CHECK(fwd(a) == status::overlapping_buffers); }
  { auto a = fa; a.lse = static_cast<float*>(const_cast<void*>(a.rows.weight));
    CHECK(fwd(a) == status::overlapping_buffers); }
  { auto a = fa; size_t b = 16; CHECK(gc::linear_token_logps(ws.get(), b, a) == status::workspace_too_small); }
  { auto a = ga; a.lse = nullptr; CHECK(bwd(a) == status::null_pointer); }
  { auto a = ga; a.grad_token_logps = nullptr; CHECK(bwd(a) == status::null_pointer); }
  { auto a = ga; a.rows.bias = nullptr; CHECK(bwd(a) == status::null_pointer); }  // grad_bias without a bias
  { auto a = ga; a.ld_grad_hidden = c.hidden - 1; CHECK(bwd(a) == status::invalid_stride); }
  { auto a = ga; a.lse = static_cast<const float*>(gh.get()); CHECK(bwd(a) == status::overlapping_buffers); }
  { auto a = ga; a.grad_weight = gh.get(); CHECK(bwd(a) == status::overlapping_buffers); }
  { auto a = ga; a.grad_hidden = const_cast<void*>(a.rows.hidden); CHECK(bwd(a) == status::overlapping_buffers); }
  { auto a = ga; a.lse = static_cast<const float*>(ws.get()); CHECK(bwd(a) == status::overlapping_buffers); }
  // Device-side: a label out of range, a NaN g_t of a scored row.
  {
    std::vector<int64_t> labels = p.labels;
    int64_t scored = 0;
    while (labels[scored] == c.ignore) ++scored;
    labels[scored] = c.vocab;
    dmem bad = upload(labels);
    auto a = fa;
    a.rows.labels = bad.get();
    REQUIRE(fwd(a) == status::success);
    const status dev = device_status_of(ws);
    CHECK(dev == status::label_out_of_range);
  }
  {
    std::vector<float> g = p.g;
    int64_t scored = 0;
    while (p.labels[scored] == c.ignore) ++scored;
    g[scored] = NAN;
    dmem bad = upload(g);
    auto a = ga;
    a.grad_token_logps = bad.get<float>();
    REQUIRE(bwd(a) == status::success);
    const status dev = device_status_of(ws);
    CHECK(dev == status::invalid_upstream_grad);
  }
  // N = 0: success, nothing read; an overwrite of grad_weight / grad_bias is zeros.
  {
    auto a = ga;
    a.rows.n_rows = 0;
    std::vector<float> ones(static_cast<size_t>(c.vocab * c.hidden), 1.0f);
    CUDA_REQUIRE(cudaMemcpy(gw.get(), ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
    size_t b = 0;
    REQUIRE(gc::linear_token_logps_grad(nullptr, b, a) == status::success);
    dmem w0(b);
    REQUIRE(gc::linear_token_logps_grad(w0.get(), b, a) == status::success);
    for (float x : download<float>(gw.get(), ones.size())) CHECK(x == 0.0f);
  }
}

// A logit transform through both entries (issue 24's mutation pass on the
// transform: linear_token_logps / _grad ignored it without a failing fast
// test). Against the reference and the unfused token_logps path, with the
// error model above (bounds_of's transform terms); every dtype's map (the
// MUFU tanh is chosen for 16-bit logits), split-free rows of V = 37 with a
// tail, a one-row budget, the entropy and its tail, ignore_index rows.
TEST_CASE("linear_token_logps(_grad) with a logit transform equal the reference",
          "[linear_token][small][transform]") {
  for_each_linear_transform<lt_config>(24300, [](lt_config c, uint64_t& seed) {
    check_lt_case(c);
    c.chunk_rows = 1;
    c.gw_float32 = false;
    c.seed = ++seed;
    check_lt_case(c);
  });
}

TEST_CASE("linear_token_logps(_grad): an invalid logit transform is refused by the size query",
          "[linear_token][small][transform]") {
  lt_config c;
  const lt_problem p = make_lt(c);
  blas_handle h;
  lt_device d(p);
  for (const geopref::logit_transform& bad :
       {geopref::logit_transform{0.0, 0.0, 1.0}, geopref::logit_transform{1.0, -2.0, 1.0},
        geopref::logit_transform{1.0, 0.0, 0.0}, geopref::logit_transform{NAN, 0.0, 1.0}}) {
    INFO("s " << bad.scale << " c " << bad.softcap << " T " << bad.temperature);
    gc::linear_token_logps_args fa;
    fa.rows = rows_of(p, d, h.h);
    fa.rows.logit_transform = bad;
    size_t bytes = 0;
    CHECK(gc::linear_token_logps(nullptr, bytes, fa) == status::invalid_logit_transform);
    gc::linear_token_grad_args ga;
    ga.rows = fa.rows;
    CHECK(gc::linear_token_logps_grad(nullptr, bytes, ga) == status::invalid_logit_transform);
  }
}

namespace {

/// linear_token_logps with TRL 1.x's statistics (every chunk's stats_kernel
/// read): log Σp², the mean logit and top-1 against the softmax of the
/// reference's Z written out here, within the error of the device's Z
/// (row_logit_errors: e'_z per row); top-1 only where the row's largest
/// logit leads the others by more than twice e_z (else rounding decides).
void check_linear_stats(const lt_config& c) {
  const lt_problem p = make_lt(c);
  blas_handle h;
  lt_device d(p);
  const size_t n = static_cast<size_t>(c.rows);
  dmem tlp(n * 4), lse(n * 4);
  for (const dmem* m : {&tlp, &lse}) poison(*m);
  const token_stats_outputs stats(c.rows);
  gc::linear_token_logps_args fa;
  fa.rows = rows_of(p, d, h.h);
  fa.token_logps = tlp.get<float>();
  fa.lse = lse.get<float>();
  stats.attach(fa);
  GEOPREF_RUN_EXACT(gc::linear_token_logps, fa);
  std::vector<float> g_lssp, g_mean;
  std::vector<uint8_t> g_top1;
  stats.read(g_lssp, g_mean, g_top1);
  const geopref::support::linear_token_ref_result ref = run_ref(p);
  const int64_t V = c.vocab;
  const row_logit_errors errs(c.dtype, c.tr, ref.logits, p.H, p.W, c.bias ? p.b.data() : nullptr,
                              c.rows, V, c.hidden);
  INFO(describe(c));
  checker ck_lssp("log_sum_sq_probs"), ck_mean("mean_logits"), ck_top1("is_top1");
  int decided = 0;
  for (int64_t t = 0; t < c.rows; ++t) {
    if (p.labels[t] == c.ignore) {
      ck_lssp(t, g_lssp[t], 0.0, 0.0);
      ck_mean(t, g_mean[t], 0.0, 0.0);
      ck_top1(t, g_top1[t], 0.0, 0.0);
      continue;
    }
    std::vector<double> x(static_cast<size_t>(V));
    double m = -1e300, second = -1e300;
    int64_t arg = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double z = ref.logits[t * V + v];
      x[static_cast<size_t>(v)] = geopref::apply(c.tr, z);
      if (z > m) second = m, m = z, arg = v;
      else if (z > second) second = z;
    }
    const double xm = *std::max_element(x.begin(), x.end());
    double s = 0, sq = 0, mean_x = 0;
    for (const double xv : x) s += std::exp(xv - xm), mean_x += xv;
    for (const double xv : x) sq += std::exp(2 * (xv - xm));
    // Σp² moves by twice the relative change of the p's (2·e'_z, and the
    // lse's e'_z), plus its float sums; the mean by the largest e'_z.
    const double tol = 4 * errs.ezp[t] + 2 * eps_sum(V) + 16 * U32;
    ck_lssp(t, g_lssp[t], std::log(sq) - 2 * std::log(s), tol);
    ck_mean(t, g_mean[t], mean_x / static_cast<double>(V),
            errs.ezp[t] + (eps_sum(V) + 8 * U32) * (std::fabs(ref.lse[t]) + 10.0));
    if (m - second > 2 * errs.ez[t] || V == 1) {
      ck_top1(t, g_top1[t], arg == p.labels[t] ? 1.0 : 0.0, 0.0);
      ++decided;
    }
  }
  ck_lssp.report();
  ck_mean.report();
  ck_top1.report();
  CHECK(decided > 0);
}

}  // namespace

TEST_CASE("linear_token_logps: the per-token statistics from hidden states",
          "[gpu][small][linear_token][stats]") {
  uint64_t seed = 18000;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    for (const bool cap : {false, true}) {
      lt_config c;
      c.dtype = dt;
      c.seed = ++seed;
      if (cap) {
        c.tr.scale = 1.3;
        c.tr.softcap = 5.0;
        c.tr.temperature = 0.7;
      }
      check_linear_stats(c);
      c.vocab = 1;  // one column: top-1 always, Σp² = 1
      c.seed = ++seed;
      check_linear_stats(c);
    }
  }
}
