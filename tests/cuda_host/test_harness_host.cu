// tests/cuda_host/test_harness_host.cu — checks the GPU test harness itself on the
// CPU, so that a GPU run never fails because of the harness.
//
// A host model of the kernels' arithmetic (fp32 online softmax over 16-byte
// vectors, 256 per-thread states merged in order, double sequence and pair
// math, fp32 gradient rounded to the output dtype) produces a gpu_result, and
// compare() must accept it for every kind of problem the GPU tests use: the
// error bounds in gpu_harness.cuh are wide enough for fp32 kernels. A
// deliberately wrong gradient must be rejected (checked through the checker).
#include <catch2/catch.hpp>

#include "geopref/cuda/detail/arith.cuh"
#include "gpu_harness.cuh"

using namespace geopref::test;
namespace d = geopref::cuda::detail;
using geopref::loss_type;
using geopref::reduction;

namespace {

/// What the kernels compute, on the host, written independently of them.
gpu_result emulate(const problem& pr) {
  const case_config& c = pr.cfg;
  const int es = dtype_bytes(c.dtype), w = 16 / es;
  gpu_result r;
  r.host_status = status::success;
  r.device = status::success;
  const int64_t rows_end = pr.offsets.back();
  r.lse.assign(static_cast<size_t>(pr.n), 0.0f);
  r.token_logps.assign(static_cast<size_t>(pr.n), 0.0f);
  std::vector<int64_t> seq_of(static_cast<size_t>(pr.n), -1);
  for (int64_t s = 0; s < pr.s; ++s)
    for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t) seq_of[t] = s;
  auto scored = [&](int64_t t) { return t < rows_end && pr.labels[t] != c.opt.ignore_index; };
  for (int64_t t = 0; t < pr.n; ++t) {
    if (!scored(t)) continue;
    const float* z = pr.z.data() + t * pr.ld;
    const uint64_t addr = 4096 + static_cast<uint64_t>((t * pr.ld + c.misalign) * es);
    const d::row_span sp = d::partition_row(addr, pr.v, es);
    std::vector<d::lse_state> th(256, d::lse_empty());
    for (int64_t q = 0; q < sp.nvec; ++q) {
      float x[8];
      for (int e = 0; e < w; ++e) x[e] = z[sp.pro + q * w + e];
      th[q % 256] = w == 8 ? d::lse_update<8>(th[q % 256], x)
                           : d::lse_update<4>(th[q % 256], reinterpret_cast<const float(&)[4]>(x));
    }
    for (int64_t i = 0; i < sp.pro; ++i) th[i % 256] = d::lse_update1(th[i % 256], z[i]);
    for (int64_t i = sp.tail; i < pr.v; ++i) th[(i - sp.tail) % 256] = d::lse_update1(th[(i - sp.tail) % 256], z[i]);
    d::lse_state st = d::lse_empty();
    for (const auto& s : th) st = d::lse_merge(st, s);
    const float l = d::lse_finish(st);
    r.lse[t] = l;
    r.token_logps[t] = z[pr.labels[t]] - l;
  }
  const bool average = geopref::uses_average_logps(c.opt);
  std::vector<double> m(static_cast<size_t>(pr.s), 0.0), sums(static_cast<size_t>(pr.s), 0.0);
  r.seq_logps.assign(static_cast<size_t>(pr.s), 0.0f);
  r.seq_counts.assign(static_cast<size_t>(pr.s), 0);
  for (int64_t s = 0; s < pr.s; ++s) {
    double sum = 0;
    int64_t n = 0;
    for (int64_t t = pr.offsets[s]; t < pr.offsets[s + 1]; ++t)
      if (scored(t))
        sum += c.token_weights ? static_cast<double>(pr.tw[t]) * r.token_logps[t] : r.token_logps[t], ++n;
    sums[s] = sum;
    m[s] = average ? (n > 0 ? sum / static_cast<double>(n) : 0.0) : sum;
    r.seq_logps[s] = static_cast<float>(m[s]);
    r.seq_counts[s] = n;
  }
  if (extended_loss(c)) {
    // The pair kernel computes in double from these double sums: the
    // reference's pair step on the same sums is that computation (its
    // agreement with independent formulas is tests/cpu/test_family.cpp).
    ref_result ps;
    REQUIRE(run_pair_step(pr.ref_in, c.opt, sums, r.seq_counts, ps) == status::success);
    const bool none_ = c.opt.reduce == reduction::none;
    r.loss.assign(static_cast<size_t>(none_ ? std::max<int64_t>(pr.p, 1) : 1), 0.0f);
    if (none_)
      for (int64_t i = 0; i < pr.p; ++i) r.loss[i] = static_cast<float>(ps.pair_losses[i]);
    else
      r.loss[0] = static_cast<float>(ps.loss);
    r.stats = ps.stats;
    r.grad_seq.assign(static_cast<size_t>(pr.s), 0.0f);
    for (int64_t s = 0; s < pr.s; ++s) r.grad_seq[s] = static_cast<float>(ps.grad_seq_logps[s]);
  } else {
  const geopref::any_loss<double> f(c.opt.loss);
  const bool none = c.opt.reduce == reduction::none;
  const double div = geopref::reduction_divisor(c.opt, pr.p), beta = c.opt.loss.beta;
  std::vector<double> g(static_cast<size_t>(pr.s), 0.0);
  double total = 0;
  geopref::metrics st{};
  r.loss.assign(static_cast<size_t>(none ? std::max<int64_t>(pr.p, 1) : 1), 0.0f);
  for (int64_t i = 0; i < pr.p; ++i) {
    const int64_t a = c.explicit_pairs < 0 ? i : pr.pairs[2 * i];
    const int64_t b = c.explicit_pairs < 0 ? pr.p + i : pr.pairs[2 * i + 1];
    const double ra = c.ref ? static_cast<double>(pr.ref[a]) : 0.0, rb = c.ref ? static_cast<double>(pr.ref[b]) : 0.0;
    const double h = (m[a] - ra) - (m[b] - rb);
    const double p = c.soft ? static_cast<double>(pr.soft[i]) : 1.0;
    const double wt = c.weights ? static_cast<double>(pr.weights[i]) : 1.0;
    double up = c.grad_loss;
    if (c.grad_output) up *= static_cast<double>(pr.grad_out[none ? i : 0]);
    const double fv = wt != 0 ? wt * f.value(h, p) : 0.0;
    const double coef = wt != 0 ? up * (wt / div) * f.derivative(h, p) : 0.0;
    g[a] += coef;
    g[b] -= coef;
    total += fv;
    if (none) r.loss[i] = static_cast<float>(fv);
    st.rewards_chosen += beta * (m[a] - ra);
    st.rewards_rejected += beta * (m[b] - rb);
    st.rewards_accuracies += beta * (m[a] - ra) > beta * (m[b] - rb) ? 1.0 : 0.0;
    st.rewards_margins += beta * h;
    st.logps_chosen += m[a];
    st.logps_rejected += m[b];
    st.calibration_error += std::fabs(geopref::math::sigmoid(beta * h) - p);
  }
  if (!none) r.loss[0] = static_cast<float>(total / div);
  const double inv = pr.p > 0 ? 1.0 / static_cast<double>(pr.p) : 0.0;
  st.rewards_chosen *= inv, st.rewards_rejected *= inv, st.rewards_accuracies *= inv;
  st.rewards_margins *= inv, st.logps_chosen *= inv, st.logps_rejected *= inv;
  st.calibration_error *= inv;
  r.stats = st;
  r.grad_seq.assign(static_cast<size_t>(pr.s), 0.0f);
  for (int64_t s = 0; s < pr.s; ++s) {
    if (average) g[s] = r.seq_counts[s] > 0 ? g[s] / static_cast<double>(r.seq_counts[s]) : 0.0;
    r.grad_seq[s] = static_cast<float>(g[s]);
  }
  }

  const gc::dtype out_dt = c.grad_fp32 ? gc::dtype::float32 : c.dtype;
  const int out_es = dtype_bytes(out_dt);
  r.grad_ld = c.in_place ? pr.ld : pr.v + c.grad_pad;
  if (c.in_place) r.grad = pr.logits;
  else r.grad.assign(static_cast<size_t>(pr.n * r.grad_ld * out_es), 0xff);
  for (int64_t t = 0; t < pr.n; ++t)
    for (int64_t v = 0; v < pr.v; ++v) {
      float x = 0.0f;
      if (scored(t)) {
        // With token weights the kernel's row coefficient is g_s · w_t in
        // double, rounded to float (row_coef_kernel).
        const float gs = c.token_weights ? static_cast<float>(static_cast<double>(r.grad_seq[seq_of[t]]) *
                                                               static_cast<double>(pr.tw[t]))
                                         : r.grad_seq[seq_of[t]];
        const float z = pr.z[static_cast<size_t>(t * pr.ld + v)];
        x = gs * ((v == pr.labels[t] ? 1.0f : 0.0f) - d::exp_fast(z - r.lse[t]));
      }
      encode(out_dt, x, r.grad.data() + (t * r.grad_ld + v) * out_es);
    }
  if (!c.in_place) r.logits = pr.logits;
  return r;
}

void check_model(const case_config& c) {
  problem pr;
  make_problem(c, pr);
  set_reference(pr);
  compare(pr, emulate(pr));
}

}  // namespace

TEST_CASE("harness: the error bounds accept fp32 kernel arithmetic", "[cuda][harness]") {
  uint64_t seed = 1;
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    for (int layout = 0; layout < 3; ++layout) {
      case_config c = small_case(dt, ++seed);
      c.in_place = layout == 1;
      c.grad_fp32 = layout == 2;
      c.grad_pad = layout == 2 ? 5 : 0;
      c.explicit_pairs = layout == 2 ? 5 : -1;
      check_model(c);
      c.extreme = true;
      c.vocab = 513;
      c.seed = ++seed;
      check_model(c);
    }
    case_config big;  // a real vocabulary: the eps_sum(V) bound at its largest
    big.dtype = dt;
    big.vocab = 128256;
    big.seq_lens = {3, 2, 2, 3};
    big.seed = ++seed;
    check_model(big);
  }
  for (int li = 0; li < geopref::LOSS_TYPE_COUNT; ++li)
    for (reduction r : {reduction::mean, reduction::none, reduction::normalizer})
      for (bool avg : {false, true}) {
        case_config c;
        c.vocab = 300;
        c.seq_lens = {9, 3, 12, 7, 1, 10, 6, 8};
        c.opt.loss.type = static_cast<loss_type>(li);
        c.opt.loss.beta = c.opt.loss.type == loss_type::simpo ? 2.0 : 0.1;
        c.opt.loss.epsilon = c.opt.loss.type == loss_type::exo_pair ? 1e-3 : 0.2;
        c.opt.loss.gamma = 0.3;
        c.opt.reduce = r;
        c.opt.normalizer = 3.5;
        c.opt.average_logps = avg;
        c.opt.loss.bco_delta = 0.05;
        c.ref = !geopref::is_reference_free(c.opt.loss.type);
        c.weights = true;
        c.grad_output = true;
        c.seed = ++seed;
        check_model(c);
      }
  // The rest of the family's options: transforms, the geometric flag,
  // combinations and token weights (the harness's perturbation bounds).
  for (int v = 0; v < 4; ++v)
    for (gc::dtype dt : {gc::dtype::float32, gc::dtype::bfloat16}) {
      case_config c;
      c.dtype = dt;
      c.vocab = 300;
      c.seq_lens = {9, 3, 12, 7, 1, 10, 6, 8};
      c.weights = true;
      c.grad_output = true;
      c.token_weights = v >= 2;
      c.opt.loss.type = loss_type::ipo;
      c.opt.loss.transform = v % 2 == 0 ? geopref::margin_transform::js : geopref::margin_transform::alpha;
      c.opt.loss.geometric = v == 1;
      if (v == 3) {
        c.opt.loss.n_terms = 3;
        c.opt.loss.terms[0] = loss_type::dpo, c.opt.loss.terms[1] = loss_type::aot;
        c.opt.loss.terms[2] = loss_type::sft;
        c.opt.loss.term_weights[0] = 1.0, c.opt.loss.term_weights[1] = 0.5, c.opt.loss.term_weights[2] = 0.25;
      }
      c.seed = ++seed;
      check_model(c);
    }
  for (int64_t pairs : {-1, 0, 11}) {
    check_model(packed_case(pairs, ++seed));
  }
}

TEST_CASE("harness: a wrong value is rejected", "[cuda][harness]") {
  checker ck("self-test");
  ck(0, 1.0, 1.0, 0.0);
  ck(1, 1.0 + 1e-7, 1.0, 1e-6);
  CHECK(ck.fails == 0);
  ck(2, 1.1, 1.0, 1e-6);
  ck(3, NAN, 1.0, 1e-6);
  ck(4, 0.0, -0.0, 0.0);  // equal values pass even with zero tolerance
  CHECK(ck.fails == 2);
  CHECK(ck.worst_i == 3);  // NaN is the worst
}
