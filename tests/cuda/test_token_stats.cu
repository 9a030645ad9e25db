// tests/cuda/test_token_stats.cu — the per-token statistics of TRL 1.x's
// fused head on the GPU path (token_logps' log_sum_sq_probs, mean_logits and
// is_top1 from stats_kernel; token_logps_grad with the entropy's upstream,
// with_entropy) against the CPU reference, element by element: every dtype,
// with and without a soft-cap, V = 1, ignored rows, a NaN row, constructed
// ties; the entropy-only and no-statistics paths unchanged; bitwise repeats;
// and from hidden states (linear_token_logps) the same statistics as the
// reference on the rounded chunk.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "gpu_harness.cuh"

using namespace geopref::test;
using geopref::support::run_token_reference;
using geopref::support::token_ref_result;

namespace {

struct stats_gpu {
  std::vector<float> logp, lse, ent, lssp, mean;
  std::vector<uint8_t> top1;
  std::vector<uint8_t> grad;  // [N, V] raw bytes of the gradient (logits dtype)
  status fwd_device = status::internal_error, bwd_device = status::internal_error;
};

gc::token_rows rows_of(const problem& pr, const void* logits, const dmem& labels) {
  gc::token_rows r;
  r.logits = logits;
  r.logits_dtype = pr.cfg.dtype;
  r.n_rows = pr.n;
  r.vocab = pr.v;
  r.ld = pr.ld;
  r.logit_transform = pr.cfg.logit_transform;
  r.labels = labels.get();
  r.label_type = gc::index_type::int64;
  r.ignore_index = pr.cfg.opt.ignore_index;
  return r;
}

/// token_logps with every statistic, then (g, e given) token_logps_grad with
/// both upstreams into a [N, V] gradient of the logits' dtype.
stats_gpu run_gpu(const problem& pr, const std::vector<float>* g, const std::vector<float>* e) {
  stats_gpu r;
  const device_logits logits(pr);
  const dmem labels = upload(pr.labels);
  const size_t nf = static_cast<size_t>(pr.n) * sizeof(float);
  dmem logp(nf), lse(nf), ent(nf);
  for (const dmem* d : {&logp, &lse, &ent}) poison(*d);
  const token_stats_outputs stats(pr.n);
  gc::token_logps_args fa;
  fa.rows = rows_of(pr, logits.ptr, labels);
  fa.token_logps = logp.get<float>();
  fa.lse = lse.get<float>();
  fa.entropy = ent.get<float>();
  stats.attach(fa);
  REQUIRE(run_poisoned([&](void* w, size_t& b) { return gc::token_logps(w, b, fa); },
                       &r.fwd_device) == status::success);
  r.logp = download<float>(logp.get(), pr.n);
  r.lse = download<float>(lse.get(), pr.n);
  r.ent = download<float>(ent.get(), pr.n);
  stats.read(r.lssp, r.mean, r.top1);
  if (g == nullptr) return r;
  const dmem gd = upload(*g), ed = upload(*e);
  const int es = dtype_bytes(pr.cfg.dtype);
  dmem grad(static_cast<size_t>(pr.n * pr.v * es) + 16);
  poison(grad);
  gc::token_grad_args ba = grad_args_after(fa, gd, grad.get(), pr.v);
  ba.grad_entropy = ed.get<float>();
  ba.entropy = ent.get<float>();
  REQUIRE(run_poisoned([&](void* w, size_t& b) { return gc::token_logps_grad(w, b, ba); },
                       &r.bwd_device) == status::success);
  r.grad = download<uint8_t>(grad.get(), pr.n * pr.v * es);
  return r;
}

case_config stats_case(gc::dtype dt, int64_t vocab, uint64_t seed,
                       geopref::logit_transform tr = {}) {
  case_config c;
  c.dtype = dt;
  c.vocab = vocab;
  c.seq_lens = {9, 7, 5};
  c.extra_rows = 2;
  c.seed = seed;
  c.logit_transform = tr;
  return c;
}

geopref::logit_transform softcap(double s, double cap, double t) {
  geopref::logit_transform tr;
  tr.scale = s;
  tr.softcap = cap;
  tr.temperature = t;
  return tr;
}

/// The statistics and the two-upstream gradient against the reference.
void check_case(const case_config& c, bool nan_row) {
  problem pr;
  make_problem(c, pr);
  if (nan_row) {  // row 1 gets a NaN logit (its label is not ignored below)
    const int es = dtype_bytes(c.dtype);
    const size_t i = static_cast<size_t>(1 * pr.ld + (pr.v > 1 ? 1 : 0));
    pr.z[i] = encode(c.dtype, NAN, &pr.logits[i * es]);
    pr.labels[1] = 0;
  }
  std::mt19937_64 rng(c.seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(static_cast<size_t>(pr.n)), e(g.size());
  for (size_t t = 0; t < g.size(); ++t) g[t] = normal(rng), e[t] = normal(rng);
  const std::vector<double> g_d(g.begin(), g.end()), e_d(e.begin(), e.end());
  const stats_gpu a = run_gpu(pr, &g, &e);
  INFO(describe(c) << " nan_row=" << nan_row);
  CHECK(a.fwd_device == status::success);
  CHECK(a.bwd_device == status::success);
  token_ref_result ref;
  REQUIRE(run_token_reference(pr.ref_in, c.opt.ignore_index, g_d.data(), ref, e_d.data()) ==
          status::success);

  checker ck_lssp("log_sum_sq_probs"), ck_mean("mean_logits"), ck_top1("is_top1"),
      ck_grad("grad_logits with the entropy's upstream");
  const int es = dtype_bytes(c.dtype);
  for (int64_t t = 0; t < pr.n; ++t) {
    const bool scored = pr.labels[t] != c.opt.ignore_index;
    if (!scored) {
      ck_lssp(t, a.lssp[t], 0.0, 0.0);
      ck_mean(t, a.mean[t], 0.0, 0.0);
      ck_top1(t, a.top1[t], 0.0, 0.0);
      for (int64_t v = 0; v < pr.v; ++v)
        ck_grad(t * pr.v + v, decode(c.dtype, a.grad.data() + (t * pr.v + v) * es), 0.0, 0.0);
      continue;
    }
    // is_top1 compares the logits as given: exact, NaN rows included (0).
    ck_top1(t, a.top1[t], ref.is_top1[static_cast<size_t>(t)], 0.0);
    if (std::isnan(ref.lse[t])) {
      CHECK(std::isnan(a.lssp[t]));
      CHECK(std::isnan(a.mean[t]));
      continue;
    }
    // Error bounds. p_v = 2^(a_v) carries the lse's error (as test_token.cu's
    // tol_lse: the float sum over V, its rounding, the transform's error) plus
    // a few roundings of a_v; Σ p² doubles that, its float sum adds
    // eps_sum(V), the log makes the relative error absolute.
    const double row_te = row_transform_error(pr, t);
    const double tol_lse = eps_sum(pr.v) + 2 * U32 * std::fabs(ref.lse[t]) + row_te;
    double mean_abs_d = 0.0, max_d = 0.0;
    for (int64_t v = 0; v < pr.v; ++v) {
      const double d = std::fabs(
          geopref::apply(c.logit_transform, pr.z[static_cast<size_t>(t * pr.ld + v)]) - ref.lse[t]);
      mean_abs_d += std::isfinite(d) ? d / static_cast<double>(pr.v) : 0.0;
      // the largest |d| among the terms that matter (p ≥ 2^-24)
      if (d < 17.0) max_d = std::fmax(max_d, d);
    }
    const double eps_p = tol_lse + row_te + (2 * max_d + 6) * U32;
    ck_lssp(t, a.lssp[t], ref.log_sum_sq_probs[t], 2 * eps_p + eps_sum(pr.v));
    // mean = ln 2 · Σ a_v / V + lse: the float sum of the a_v (each rounded
    // once, |a_v| = |d_v| log₂e) and the transform's error of each z′.
    ck_mean(t, a.mean[t], ref.mean_logits[t],
            (eps_sum(pr.v) + 4 * U32) * mean_abs_d * 1.5 + 4 * U32 * std::fabs(ref.lse[t]) +
                row_te + 1e-30);
    // The gradient of g ℓ + e H: −p (g + e (H + d)) + g 𝟙, through the slope.
    // H carries the entropy's error (test_token.cu's bound, ≈ tol_lse (1 + H)).
    const double h = ref.entropy[t];
    const double tol_h = tol_lse * (1 + h) + eps_sum(pr.v) * h + 2 * U32 * h + 8 * U32 * max_d;
    for (int64_t v = 0; v < pr.v; ++v) {
      const double z = pr.z[static_cast<size_t>(t * pr.ld + v)];
      const double d = geopref::apply(c.logit_transform, z) - ref.lse[t];
      const double p = std::exp(d);
      const double want = ref.grad_logits[static_cast<size_t>(t * pr.v + v)];
      const double got = decode(c.dtype, a.grad.data() + (t * pr.v + v) * es);
      const transform_error te = transform_error_at(c, z);
      const double gt = g_d[static_cast<size_t>(t)], et = e_d[static_cast<size_t>(t)];
      const double ind = v == pr.labels[t] ? 1.0 : 0.0;
      const double slope = std::fabs(geopref::slope(c.logit_transform, z));
      const double inner = std::fabs(gt + et * (h + d));
      const double tol =
          (p > 0 ? p * ((inner + std::fabs(et)) * (eps_p + te.value) + std::fabs(et) * tol_h) *
                       slope
                 : 0.0) +
          std::fabs(gt * (ind - p) - et * p * (h + d)) * te.slope +
          (3 * U32 + out_roundoff(c)) * std::fabs(want) +
          (c.dtype == gc::dtype::float16 ? 0x1p-25 : 1e-40);
      ck_grad(t * pr.v + v, got, want, tol);
    }
  }
  ck_lssp.report();
  ck_mean.report();
  ck_top1.report();
  ck_grad.report();

  // Bitwise repeatable.
  const stats_gpu b = run_gpu(pr, &g, &e);
  CHECK(same_bits(a.lssp, b.lssp));
  CHECK(same_bits(a.mean, b.mean));
  CHECK(a.top1 == b.top1);
  CHECK(a.grad == b.grad);
}

}  // namespace

TEST_CASE("token statistics and the entropy's upstream against the reference",
          "[gpu][small][token][stats]") {
  uint64_t seed = 17000;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    for (const int64_t vocab : {int64_t{1}, int64_t{37}, int64_t{1100}}) {
      check_case(stats_case(dt, vocab, ++seed), false);
      check_case(stats_case(dt, vocab, ++seed, softcap(1.3, 5.0, 0.7)), vocab == 37);
    }
  }
}

TEST_CASE("is_top1 on constructed ties: the first arg-max, as TRL", "[gpu][small][token][stats]") {
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
    case_config c = stats_case(dt, 300, 17100);
    c.mask_prob = 0.0;
    c.extra_rows = 0;
    problem pr;
    make_problem(c, pr);
    const int es = dtype_bytes(dt);
    // Row t: a maximum 40 (no normal logit reaches it) at columns
    // (t mod 4) + {0, 150}, 299, the label on one of them or next to them;
    // the reference decides (first arg-max).
    for (int64_t t = 0; t < pr.n; ++t) {
      const int64_t c0 = t % 4;
      for (const int64_t col : {c0, c0 + 150, int64_t{299}}) {
        const size_t i = static_cast<size_t>(t * pr.ld + col);
        pr.z[i] = encode(dt, 40.0f, &pr.logits[i * es]);
      }
      const int64_t choice[4] = {c0, c0 + 150, 299, c0 + 1};
      pr.labels[t] = choice[t % 4];
    }
    const stats_gpu a = run_gpu(pr, nullptr, nullptr);
    token_ref_result ref;
    REQUIRE(run_token_reference(pr.ref_in, c.opt.ignore_index, nullptr, ref) == status::success);
    int ones = 0;
    for (int64_t t = 0; t < pr.n; ++t) {
      INFO("row " << t << " label " << pr.labels[t]);
      CHECK(a.top1[t] == ref.is_top1[static_cast<size_t>(t)]);
      CHECK(a.top1[t] == (t % 4 == 0 ? 1 : 0));  // only the first of the three ties counts
      ones += a.top1[t];
    }
    CHECK(ones > 0);
  }
}

TEST_CASE("token_logps_grad's entropy upstream: host and device checks", "[gpu][small][token][stats]") {
  case_config c = stats_case(gc::dtype::float32, 19, 17200);
  problem pr;
  make_problem(c, pr);
  const device_logits logits(pr);
  const dmem labels = upload(pr.labels);
  std::vector<float> ones(static_cast<size_t>(pr.n), 1.0f);
  const dmem g = upload(ones), lse = upload(ones), ent = upload(ones);
  dmem grad(static_cast<size_t>(pr.n * pr.v) * sizeof(float));
  gc::token_grad_args a;
  a.rows = rows_of(pr, logits.ptr, labels);
  a.lse = lse.get<float>();
  a.grad_token_logps = g.get<float>();
  a.grad_logits = grad.get();
  a.grad_ld = pr.v;
  size_t bytes = 0;
  // e_t without the forward's H_t: null_pointer, before anything runs.
  std::vector<float> e = ones;
  const dmem e_ok = upload(e);
  a.grad_entropy = e_ok.get<float>();
  CHECK(gc::token_logps_grad(nullptr, bytes, a) == status::success);  // the size query
  dmem ws(bytes);
  CHECK(gc::token_logps_grad(ws.get(), bytes, a) == status::null_pointer);
  a.entropy = ent.get<float>();
  REQUIRE(gc::token_logps_grad(ws.get(), bytes, a) == status::success);
  status dev = status::internal_error;
  REQUIRE(gc::device_status(ws.get(), nullptr, &dev) == status::success);
  CHECK(dev == status::success);
  // A NaN e_t on a scored row is invalid_upstream_grad; on an ignored row it is never read.
  int64_t scored = -1, ignored = -1;
  for (int64_t t = 0; t < pr.n; ++t)
    (pr.labels[t] == c.opt.ignore_index ? ignored : scored) = t;
  REQUIRE(scored >= 0);
  REQUIRE(ignored >= 0);
  for (const auto& [row, want] : {std::pair<int64_t, status>{ignored, status::success},
                                  std::pair<int64_t, status>{scored, status::invalid_upstream_grad}}) {
    e = ones;
    e[static_cast<size_t>(row)] = NAN;
    const dmem e_bad = upload(e);
    a.grad_entropy = e_bad.get<float>();
    REQUIRE(gc::token_logps_grad(ws.get(), bytes, a) == status::success);
    REQUIRE(gc::device_status(ws.get(), nullptr, &dev) == status::success);
    INFO("NaN e_t on row " << row);
    CHECK(dev == want);
  }
}
