// tests/cuda/test_token.cu — the per-token primitive (geopref::cuda::token_logps,
// token_logps_grad) against the CPU reference (reference::token_logps,
// token_logps_grad), element by element on seeded random inputs: every
// dtype, V = 1, unaligned rows and strides, split rows, −∞ / ±1e4 / NaN
// logits, a custom ignore_index, in place, fp32 and 16-bit gradients,
// bitwise repeatability; that train_step's gradient is token_logps_grad's
// with g_t = g_s; device-side and host-side errors; and (emulator only)
// row strides above 2³² elements.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_harness.cuh"

#if defined(GEOPREF_HOST_EMULATION)
#include <sys/mman.h>
#endif

using namespace geopref::test;
using geopref::support::run_token_reference;
using geopref::support::token_ref_result;

namespace {

struct token_case {
  case_config base;             // logits, labels (make_problem); sequences are not used
  int64_t ignore = -100;        // the primitive's ignore_index (labels use base.opt.ignore_index)
  bool entropy = true;
  bool nan_rows = false;        // a NaN logit in every 5th row
  int64_t bad_label_row = -1;   // >= 0: that row's label set to V (out of range)
  int64_t bad_grad_row = -1;    // >= 0: that row's g_t set to NaN
};

struct token_problem {
  problem pr;
  std::vector<float> g;     // [N] upstream gradient g_t
  std::vector<double> g_d;  // the same values in double
};

token_problem make_token(const token_case& tc) {
  token_problem tp;
  case_config c = tc.base;
  c.opt.ignore_index = tc.ignore;
  make_problem(c, tp.pr);
  problem& pr = tp.pr;
  std::mt19937_64 rng(c.seed ^ 0x5bd1e995ull);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (tc.nan_rows) {
    const int es = dtype_bytes(c.dtype);
    for (int64_t t = 0; t < pr.n; t += 5) {
      const int64_t col = static_cast<int64_t>(rng() % static_cast<uint64_t>(pr.v));
      const size_t i = static_cast<size_t>(t * pr.ld + col);
      pr.z[i] = encode(c.dtype, NAN, &pr.logits[i * es]);
    }
  }
  if (tc.bad_label_row >= 0) pr.labels[tc.bad_label_row] = pr.v;
  for (int64_t t = 0; t < pr.n; ++t) {
    // Some exact zeros and some large values among ordinary ones.
    const uint64_t r = rng() % 8;
    tp.g.push_back(r == 0 ? 0.0f : (r == 1 ? 40.0f * normal(rng) : normal(rng)));
  }
  if (tc.bad_grad_row >= 0) tp.g[static_cast<size_t>(tc.bad_grad_row)] = NAN;
  tp.g_d.assign(tp.g.begin(), tp.g.end());
  return tp;
}

struct token_gpu_result {
  status fwd = status::internal_error, bwd = status::internal_error;
  status fwd_device = status::internal_error, bwd_device = status::internal_error;
  std::vector<float> token_logps, lse, entropy;
  std::vector<uint8_t> grad;  // [N, grad_ld] raw bytes
  int64_t grad_ld = 0;
};

gc::token_rows rows_of(const token_problem& tp, const void* logits, int64_t ld, const dmem& labels,
                       int64_t ignore) {
  const problem& pr = tp.pr;
  gc::token_rows r;
  set_logits(r, pr, logits, ld);
  r.labels = labels.get();
  r.label_type = pr.cfg.label_type;
  r.ignore_index = ignore;
  return r;
}

/// token_logps, then token_logps_grad with the problem's g, over logits and
/// a gradient placed as the case config says (device_logits, device_grad).
token_gpu_result run_token_gpu(const token_case& tc, const token_problem& tp) {
  const problem& pr = tp.pr;
  const case_config& c = pr.cfg;
  token_gpu_result r;
  const device_logits logits(pr);
  const device_grad grad(pr, logits);
  std::vector<int32_t> labels32(pr.labels.begin(), pr.labels.end());
  const dmem labels = c.label_type == gc::index_type::int32 ? upload(labels32) : upload(pr.labels);
  const dmem g = upload(tp.g);
  dmem logp(pr.n * sizeof(float)), lse(pr.n * sizeof(float)), ent(pr.n * sizeof(float));
  for (const dmem* d : {&logp, &lse, &ent}) poison(*d);

  gc::token_logps_args fa;
  fa.rows = rows_of(tp, logits.ptr, pr.ld, labels, tc.ignore);
  fa.token_logps = logp.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = tc.entropy ? ent.get<float>() : nullptr;
  r.fwd = run_poisoned([&](void* w, size_t& b) { return gc::token_logps(w, b, fa); }, &r.fwd_device);
  if (r.fwd != status::success) return r;
  r.token_logps = download<float>(logp.get(), pr.n);
  r.lse = download<float>(lse.get(), pr.n);
  if (tc.entropy) r.entropy = download<float>(ent.get(), pr.n);

  if (!c.grad) return r;
  gc::token_grad_args ba = grad_args_after(fa, g, grad.ptr, grad.api_ld);
  ba.grad_float32 = c.grad_fp32;
  r.bwd = run_poisoned([&](void* w, size_t& b) { return gc::token_logps_grad(w, b, ba); },
                       &r.bwd_device);
  if (r.bwd != status::success) return r;
  r.grad = grad.download_all(pr);
  r.grad_ld = grad.ld;
  return r;
}

/// Element by element against the reference. Tolerances: those of
/// gpu_harness.cuh's error model (lse, ℓ_t, gradient with an exact g_t), and
/// for the entropy H = Σ_v p_v d_v (d_v = lse − z_v ≥ 0): each term's p_v
/// carries the lse error e (relative) plus the FFMA's rounding u·d_v and
/// ex2's 2 ulp, and d_v itself carries e absolute and a rounding u·d_v, so
/// |ΔH| ≤ e (1 + H) + Σ_v p_v d_v (u d_v + 4u); the float sums per thread
/// add eps_sum(V)·H as in the lse's sum.
void compare_token(const token_case& tc, const token_problem& tp, const token_gpu_result& g) {
  const problem& pr = tp.pr;
  const case_config& c = pr.cfg;
  INFO(describe(c) << " ignore=" << tc.ignore << " nan_rows=" << tc.nan_rows);
  REQUIRE(g.fwd == status::success);
  CHECK(g.fwd_device == status::success);
  token_ref_result ref;
  REQUIRE(run_token_reference(pr.ref_in, tc.ignore, tp.g_d.data(), ref) == status::success);
  auto scored = [&](int64_t t) { return pr.labels[t] != tc.ignore; };

  std::vector<double> tol_lse(static_cast<size_t>(pr.n), 0.0);
  checker ck_lse("lse"), ck_tok("token_logps"), ck_ent("entropy");
  for (int64_t t = 0; t < pr.n; ++t) {
    if (!scored(t)) {
      ck_lse(t, g.lse[t], 0.0, 0.0);
      ck_tok(t, g.token_logps[t], 0.0, 0.0);
      if (tc.entropy) ck_ent(t, g.entropy[t], 0.0, 0.0);
      continue;
    }
    // With a logit transform, every z below is z' and the lse moves by at
    // most the row's largest |Δz'| (gpu_harness.cuh, transform_error_at).
    const double zy_raw = pr.z[static_cast<size_t>(t * pr.ld + pr.labels[t])];
    const double zy = geopref::apply(c.logit_transform, zy_raw);
    tol_lse[t] = eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]) + row_transform_error(pr, t);
    const double tol_tok = tol_lse[t] + 2 * U32 * (std::fabs(ref.token_logps[t]) + std::fabs(zy)) +
                           transform_error_at(c, zy_raw).value;
    if (std::isnan(ref.lse[t])) {  // NaN stays NaN (docs/math.md)
      CHECK(std::isnan(g.lse[t]));
      CHECK(std::isnan(g.token_logps[t]));
      if (tc.entropy) CHECK(std::isnan(g.entropy[t]));
      continue;
    }
    ck_lse(t, g.lse[t], ref.lse[t], tol_lse[t]);
    ck_tok(t, g.token_logps[t], ref.token_logps[t], tol_tok);
    if (tc.entropy) {
      double second = 0.0;
      for (int64_t v = 0; v < pr.v; ++v) {
        const double d =
            ref.lse[t] - geopref::apply(c.logit_transform, pr.z[static_cast<size_t>(t * pr.ld + v)]);
        const double p = std::exp(-d);
        if (p != 0.0) second += p * d * (U32 * d + 4 * U32);
      }
      const double h = ref.entropy[t];
      const double tol = tol_lse[t] * (1 + h) + second + eps_sum(pr.v) * h + 2 * U32 * h + 1e-30;
      ck_ent(t, g.entropy[t], h, tol);
    }
  }
  ck_lse.report();
  ck_tok.report();
  ck_ent.report();

  if (!c.grad) return;
  REQUIRE(g.bwd == status::success);
  CHECK(g.bwd_device == status::success);
  // The element is g_t·(𝟙 − p)·∂z'/∂z with the caller's exact g_t.
  check_logit_grad(pr, g, ref.grad_logits, scored,
                   [&](int64_t t, int64_t v, double got, double want, checker& ck) {
                     if (std::isnan(ref.lse[t])) {  // NaN everywhere (0·NaN too)
                       ck(t * pr.v + v, std::isnan(got) == std::isnan(want) ? 0.0 : 1.0, 0.0, 0.0);
                       return;
                     }
                     const double z = pr.z[static_cast<size_t>(t * pr.ld + v)];
                     ck(t * pr.v + v, got, want,
                        logit_grad_tol(c, z, ref.lse[t], tol_lse[t], v == pr.labels[t],
                                       tp.g_d[static_cast<size_t>(t)], 0.0, want));
                   });
}

/// Reference check of the first run, then a second run bit for bit.
void check_token_case(const token_case& tc) {
  const token_problem tp = make_token(tc);
  const token_gpu_result a = run_token_gpu(tc, tp);
  compare_token(tc, tp, a);
  const token_gpu_result b = run_token_gpu(tc, tp);
  INFO(describe(tc.base) << " (second run, bitwise)");
  CHECK(same_bits(a.token_logps, b.token_logps));
  CHECK(same_bits(a.lse, b.lse));
  CHECK(same_bits(a.entropy, b.entropy));
  CHECK(same_bits(a.grad, b.grad));
}

token_case base_case(gc::dtype dt, int64_t vocab, uint64_t seed) {
  token_case tc;
  tc.base.dtype = dt;
  tc.base.vocab = vocab;
  tc.base.seq_lens = {9, 7, 5};
  tc.base.extra_rows = 2;
  tc.base.seed = seed;
  return tc;
}

}  // namespace

TEST_CASE("token_logps and its backward against the reference", "[gpu][small][token]") {
  uint64_t seed = 16000;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    // V = 1; a short row (prologue and tail only); ragged widths; 2 splits
    // (V·elem over 1024 vectors at N = 23); a stride and base that break
    // 16-byte alignment of every row.
    for (int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{257}, int64_t{8203}}) {
      for (int layout = 0; layout < 2; ++layout) {
        token_case tc = base_case(dt, vocab, ++seed);
        tc.base.pad = layout == 1 ? 3 : 0;
        tc.base.misalign = layout == 1 ? 1 : 0;
        tc.base.grad_pad = layout == 1 ? 5 : 0;
        tc.base.grad_misalign = layout == 1 ? 1 : 0;
        tc.base.label_type = layout == 1 ? gc::index_type::int32 : gc::index_type::int64;
        tc.base.grad_fp32 = layout == 1;
        check_token_case(tc);
      }
    }
  }
}

TEST_CASE("token_logps: extreme and NaN logits, ignore_index, in place", "[gpu][small][token]") {
  uint64_t seed = 16100;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    for (bool in_place : {false, true}) {
      token_case tc = base_case(dt, 263, ++seed);
      tc.base.extreme = true;  // ±1e4, −∞ entries, shifted rows, all-but-label −1e4
      tc.nan_rows = !in_place;
      tc.base.in_place = in_place;
      tc.base.pad = in_place ? 2 : 0;
      tc.ignore = in_place ? -100 : 3;  // a custom ignore_index that is also a valid column
      tc.base.mask_prob = 0.3;
      check_token_case(tc);
    }
  }
  // Without the entropy output and without a gradient.
  token_case tc = base_case(gc::dtype::bfloat16, 100, ++seed);
  tc.entropy = false;
  tc.base.grad = false;
  check_token_case(tc);
}

TEST_CASE("token_logps with a logit transform: scale, soft-cap, temperature", "[gpu][small][token]") {
  // Every map the kernels have (scale_map; softcap_map with the MUFU's tanh
  // for 16-bit logits, tanhf for float), every dtype, with the entropy, the
  // prologue/body/tail layout, split rows (V = 8203) and in place.
  uint64_t seed = 16700;
  const geopref::logit_transform maps[] = {{0.5, 0.0, 0.8}, {1.0, 4.0, 1.0}, {1.6, 2.5, 1.3}};
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    for (const auto& tr : maps) {
      for (int64_t vocab : {int64_t{7}, int64_t{8203}}) {
        // Long (split) rows once per dtype, with a soft-cap (whose tanh is the
        // MUFU's for 16-bit logits, tanhf for float): Gemma's for float, the
        // hard one for the 16-bit types.
        if (vocab == 8203 && tr.softcap != (dt == gc::dtype::float32 ? 4.0 : 2.5)) continue;
        token_case tc = base_case(dt, vocab, ++seed);
        tc.base.logit_transform = tr;
        tc.base.pad = vocab == 7 ? 3 : 0;
        tc.base.misalign = vocab == 7 ? 1 : 0;
        tc.base.in_place = vocab == 8203 && dt != gc::dtype::float32;
        tc.base.grad_fp32 = dt == gc::dtype::bfloat16 && !tc.base.in_place;
        check_token_case(tc);
      }
    }
  }
  // ±1e4 and −∞ logits under a cap: bounded to ±c/T, finite everywhere.
  token_case tc = base_case(gc::dtype::float32, 263, ++seed);
  tc.base.extreme = true;
  tc.base.logit_transform = {1.0, 30.0, 1.0};
  check_token_case(tc);
}

TEST_CASE("token_logps: an invalid logit transform is refused before anything runs",
          "[gpu][small][token]") {
  token_case tc = base_case(gc::dtype::bfloat16, 33, 16790);
  const token_problem tp = make_token(tc);
  const problem& pr = tp.pr;
  const device_logits logits(pr);
  const dmem labels = upload(pr.labels);
  dmem logp(pr.n * sizeof(float)), g = upload(tp.g), grad(pr.n * pr.v * 2);
  for (const geopref::logit_transform& bad :
       {geopref::logit_transform{0.0, 0.0, 1.0}, geopref::logit_transform{1.0, -1.0, 1.0},
        geopref::logit_transform{1.0, 0.0, 0.0}, geopref::logit_transform{NAN, 0.0, 1.0},
        geopref::logit_transform{1.0, INFINITY, 1.0}, geopref::logit_transform{1.0, 0.0, -2.0}}) {
    gc::token_logps_args fa;
    fa.rows = rows_of(tp, logits.ptr, pr.ld, labels, tc.ignore);
    fa.rows.logit_transform = bad;
    fa.token_logps = logp.get<float>();
    size_t bytes = 0;
    CHECK(gc::token_logps(nullptr, bytes, fa) == status::invalid_logit_transform);
    gc::token_grad_args ga;
    ga.rows = fa.rows;
    ga.lse = logp.get<float>();
    ga.grad_token_logps = g.get<float>();
    ga.grad_logits = grad.get();
    CHECK(gc::token_logps_grad(nullptr, bytes, ga) == status::invalid_logit_transform);
  }
}

TEST_CASE("train_step's gradient is token_logps_grad with g_t = g_s", "[gpu][small][token]") {
  uint64_t seed = 16200;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    for (bool token_weights : {false, true}) {
      case_config c;
      c.dtype = dt;
      c.vocab = 301;
      c.seq_lens = {6, 4, 7, 5};
      c.token_weights = token_weights;
      c.seed = ++seed;
      INFO(describe(c));
      problem pr;
      make_problem(c, pr);
      set_reference(pr);
      const gpu_result fused = run_gpu(pr);
      REQUIRE(fused.host_status == status::success);
      REQUIRE(fused.device == status::success);
      // g_t = g_{s(t)} · w_t, rounded to float as row_coef_kernel does; rows in
      // no sequence or ignored get the primitive's ignore_index.
      token_problem tp;
      tp.pr = pr;
      for (int64_t s = 0; s < pr.s; ++s)
        for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t) {
          const double w = token_weights ? static_cast<double>(pr.tw[t]) : 1.0;
          tp.g.push_back(static_cast<float>(static_cast<double>(fused.grad_seq[s]) * w));
        }
      tp.g.resize(static_cast<size_t>(pr.n), 0.0f);
      tp.g_d.assign(tp.g.begin(), tp.g.end());
      token_case tc;
      tc.base = c;
      tc.ignore = c.opt.ignore_index;
      const token_gpu_result tok = run_token_gpu(tc, tp);
      REQUIRE(tok.bwd == status::success);
      CHECK(same_bits(tok.lse, fused.lse));
      CHECK(same_bits(tok.token_logps, fused.token_logps));
      CHECK(same_bits(tok.grad, fused.grad));
    }
  }
}

TEST_CASE("token_logps: device-side errors are recorded, nothing else breaks", "[gpu][small][token]") {
  token_case tc = base_case(gc::dtype::float32, 50, 16300);
  tc.bad_label_row = 4;
  {
    const token_problem tp = make_token(tc);
    const token_gpu_result g = run_token_gpu(tc, tp);
    REQUIRE(g.fwd == status::success);
    CHECK(g.fwd_device == status::label_out_of_range);
    CHECK(g.bwd_device == status::label_out_of_range);
    CHECK(g.token_logps[4] == 0.0f);  // treated as unscored
    CHECK(g.lse[4] == 0.0f);
  }
  tc.bad_label_row = -1;
  tc.bad_grad_row = 6;
  tc.base.mask_prob = 0.0;
  {
    const token_problem tp = make_token(tc);
    const token_gpu_result g = run_token_gpu(tc, tp);
    REQUIRE(g.bwd == status::success);
    CHECK(g.fwd_device == status::success);
    CHECK(g.bwd_device == status::invalid_upstream_grad);
    for (int64_t v = 0; v < tp.pr.v; ++v) {  // the row counts with g = 0
      float x;
      std::memcpy(&x, g.grad.data() + (6 * g.grad_ld + v) * 4, 4);
      CHECK(x == 0.0f);
    }
  }
  // A NaN g_t on an ignored row is never read.
  tc.bad_grad_row = 6;
  tc.ignore = 12345;
  {
    token_problem tp = make_token(tc);
    tp.pr.labels[6] = tc.ignore;
    const token_gpu_result g = run_token_gpu(tc, tp);
    CHECK(g.bwd_device == status::success);
  }
}

TEST_CASE("token_logps: host-side argument errors", "[gpu][small][token]") {
  dmem z(64 * 10 * sizeof(float)), labels(64 * sizeof(int64_t)), out(3 * 64 * sizeof(float));
  dmem ws(1 << 16);
  gc::token_logps_args a;
  a.rows.logits = z.get();
  a.rows.n_rows = 10;
  a.rows.vocab = 60;
  a.rows.ld = 64;
  a.rows.labels = labels.get();
  a.token_logps = out.get<float>();
  size_t bytes = 0;
  REQUIRE(gc::token_logps(nullptr, bytes, a) == status::success);
  REQUIRE(bytes <= ws.bytes());
  size_t have = ws.bytes();
  auto call = [&](gc::token_logps_args x) {
    size_t b = have;
    return gc::token_logps(ws.get(), b, x);
  };
  { auto x = a; x.rows.ld = 59; CHECK(call(x) == status::invalid_stride); }
  { auto x = a; x.rows.vocab = 0; CHECK(call(x) == status::invalid_shape); }
  { auto x = a; x.rows.n_rows = -1; CHECK(call(x) == status::invalid_shape); }
  { auto x = a; x.token_logps = nullptr; CHECK(call(x) == status::null_pointer); }
  { auto x = a; x.rows.labels = nullptr; CHECK(call(x) == status::null_pointer); }
  { auto x = a; x.rows.logits_dtype = static_cast<gc::dtype>(7); CHECK(call(x) == status::unsupported_dtype); }
  { auto x = a; x.lse = out.get<float>() + 5; CHECK(call(x) == status::overlapping_buffers); }
  { auto x = a; x.entropy = z.get<float>(); CHECK(call(x) == status::overlapping_buffers); }
  { auto x = a; x.token_logps = ws.get<float>() + 64; CHECK(call(x) == status::overlapping_buffers); }
  { auto x = a; x.lse = reinterpret_cast<float*>(out.get<char>() + 2); CHECK(call(x) == status::misaligned_pointer); }
  {
    size_t b = bytes - 1;
    CHECK(gc::token_logps(ws.get(), b, a) == status::workspace_too_small);
  }
  // The backward.
  gc::token_grad_args g;
  g.rows = a.rows;
  g.lse = out.get<float>();
  g.grad_token_logps = out.get<float>() + 64;
  dmem grad(64 * 10 * sizeof(float));
  g.grad_logits = grad.get();
  auto gcall = [&](gc::token_grad_args x) {
    size_t b = have;
    return gc::token_logps_grad(ws.get(), b, x);
  };
  CHECK(gcall(g) == status::success);
  { auto x = g; x.grad_token_logps = nullptr; CHECK(gcall(x) == status::null_pointer); }
  { auto x = g; x.lse = nullptr; CHECK(gcall(x) == status::null_pointer); }
  { auto x = g; x.grad_logits = nullptr; CHECK(gcall(x) == status::null_pointer); }
  { auto x = g; x.grad_ld = 30; CHECK(gcall(x) == status::invalid_stride); }
  { auto x = g; x.grad_logits = z.get<float>() + 1; CHECK(gcall(x) == status::overlapping_buffers); }
  { auto x = g; x.lse = grad.get<float>() + 3; CHECK(gcall(x) == status::overlapping_buffers); }
  { auto x = g; x.grad_token_logps = grad.get<float>(); CHECK(gcall(x) == status::overlapping_buffers); }
  { auto x = g; x.grad_logits = ws.get(); CHECK(gcall(x) == status::overlapping_buffers); }
  { auto x = g; x.grad_logits = z.get(); CHECK(gcall(x) == status::success); }  // in place
  { auto x = g; x.grad_logits = z.get(); x.grad_float32 = true; x.rows.logits_dtype = gc::dtype::bfloat16;
    CHECK(gcall(x) == status::overlapping_buffers); }
  CUDA_REQUIRE(cudaDeviceSynchronize());
  // N = 0: nothing to read, nothing written, success.
  { auto x = a; x.rows.n_rows = 0; x.token_logps = nullptr; CHECK(call(x) == status::success); }
}

// ---------------------------------------------------------------------------
// N·V > 2³¹: two rows at a stride of 2³² + V + 5 elements in a reserved
// mapping (as test_gaps.cu does for train_step); a 32-bit row offset in
// forward_kernel, entropy_kernel or backward_kernel reads or writes row 0's
// neighbourhood instead of row 1.
#if defined(GEOPREF_HOST_EMULATION)
TEST_CASE("token_logps: row strides above 2^32 elements (emulator only)", "[gpu][token][gaps]") {
  for (bool in_place : {true, false}) {
    token_case tc = base_case(gc::dtype::bfloat16, 8203, in_place ? 16401 : 16402);
    tc.base.seq_lens = {2};
    tc.base.extra_rows = 0;
    tc.base.mask_prob = 0.0;
    tc.base.misalign = 1;
    tc.base.grad_fp32 = !in_place;
    tc.base.in_place = in_place;
    INFO(describe(tc.base));
    REQUIRE(geopref::cuda::detail::choose_splits(2, tc.base.vocab, 2) == 2);
    const token_problem tp = make_token(tc);
    const problem& pr = tp.pr;
    const int64_t big_ld = (int64_t{1} << 32) + pr.v + 5;
    const int64_t grad_ld = in_place ? big_ld : (int64_t{1} << 32) + pr.v + 9;
    const int es = 2, out_es = in_place ? 2 : 4;
    sparse_mapping zmap(static_cast<size_t>((big_ld + pr.v + 1) * es));
    if (zmap.ptr == nullptr) FAIL("cannot reserve 8 GB of address space with mmap(MAP_NORESERVE)");
    uint8_t* logits = zmap.ptr + es;  // misaligned by one element
    for (int64_t t = 0; t < pr.n; ++t)
      std::memcpy(logits + t * big_ld * es, pr.logits.data() + t * pr.v * es, static_cast<size_t>(pr.v * es));
    sparse_mapping gmap(in_place ? 0 : static_cast<size_t>((grad_ld + pr.v + 16) * out_es));
    uint8_t* grad = logits;
    if (!in_place) {
      if (gmap.ptr == nullptr) FAIL("cannot reserve 16 GB of address space with mmap(MAP_NORESERVE)");
      grad = gmap.ptr;
    }

    const dmem labels = upload(pr.labels);
    const dmem g = upload(tp.g);
    dmem logp(pr.n * sizeof(float)), lse(pr.n * sizeof(float)), ent(pr.n * sizeof(float));
    gc::token_logps_args fa;
    fa.rows = rows_of(tp, logits, big_ld, labels, tc.ignore);
    fa.token_logps = logp.get<float>();
    fa.lse = lse.get<float>();
    fa.entropy = ent.get<float>();
    dmem ws = GEOPREF_RUN(gc::token_logps, fa);
    token_gpu_result r;
    REQUIRE(gc::device_status(ws.get(), nullptr, &r.fwd_device) == status::success);
    r.fwd = status::success;
    r.token_logps = download<float>(logp.get(), pr.n);
    r.lse = download<float>(lse.get(), pr.n);
    r.entropy = download<float>(ent.get(), pr.n);
    gc::token_grad_args ba;
    ba.rows = fa.rows;
    ba.lse = lse.get<float>();
    ba.grad_token_logps = g.get<float>();
    ba.grad_logits = grad;
    ba.grad_ld = in_place ? 0 : grad_ld;
    ba.grad_float32 = !in_place;
    size_t gbytes = 0;
    REQUIRE(gc::token_logps_grad(nullptr, gbytes, ba) == status::success);
    dmem gws(gbytes);
    r.bwd = gc::token_logps_grad(gws.get(), gbytes, ba);
    REQUIRE(r.bwd == status::success);
    REQUIRE(gc::device_status(gws.get(), nullptr, &r.bwd_device) == status::success);
    // Gathered into the compact layout compare_token expects.
    r.grad_ld = pr.v;
    r.grad.resize(static_cast<size_t>(pr.n * pr.v * out_es));
    for (int64_t t = 0; t < pr.n; ++t)
      std::memcpy(r.grad.data() + t * pr.v * out_es, grad + t * grad_ld * out_es,
                  static_cast<size_t>(pr.v * out_es));
    compare_token(tc, tp, r);
  }
}
#endif
