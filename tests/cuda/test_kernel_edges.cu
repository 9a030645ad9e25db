// tests/cuda/test_kernel_edges.cu — the logits kernels at their edges (issue
// 10): a NaN or +inf logit at every position a row is cut into (prologue,
// 16-byte body, tail, each split of a split row) gives a NaN lse; the label
// column's gradient keeps its precision when p → 1; a CUDA error the caller
// left pending is reported and stays retrievable. Runs on the GPU and under
// the host emulator (dev/emu, through test_kernel_edges_emu.cpp), like test_gpu.cu.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_harness.cuh"

using namespace geopref::test;
namespace d = geopref::cuda::detail;

namespace {

/// Where a bad value goes in a row, and how many elements from there.
struct spot {
  int64_t col, width;
  std::string where;
};

/// The positions of a row whose partition is `sp` and whose body is cut into
/// k splits: the prologue's ends, each split's first vector (one element, and
/// the whole vector: then it is the first thing thread 0 of that split sees),
/// its middle and its last element, the tail's ends.
std::vector<spot> spots_of(const d::row_span& sp, int64_t vocab, int w, int k) {
  std::vector<spot> out;
  if (sp.pro > 0) {
    out.push_back({0, 1, "prologue start"});
    out.push_back({sp.pro - 1, 1, "prologue end"});
    out.push_back({0, sp.pro, "whole prologue"});
  }
  for (int j = 0; j < k; ++j) {
    const d::vec_range r = d::split_range(sp.nvec, j, k);
    if (r.begin == r.end) continue;
    const std::string s = "split " + std::to_string(j) + "/" + std::to_string(k) + " ";
    out.push_back({sp.pro + r.begin * w, 1, s + "first vector"});
    out.push_back({sp.pro + r.begin * w, w, s + "whole first vector"});
    out.push_back({sp.pro + (r.begin + r.end) / 2 * w + w / 2, 1, s + "middle"});
    out.push_back({sp.pro + r.end * w - 1, 1, s + "last element"});
  }
  if (sp.tail < vocab) {
    out.push_back({sp.tail, 1, "tail start"});
    out.push_back({vocab - 1, 1, "tail end"});
    out.push_back({sp.tail, vocab - sp.tail, "whole tail"});
  }
  return out;
}

double lse_exact(const problem& pr, int64_t t) {
  double m = -INFINITY;
  for (int64_t v = 0; v < pr.v; ++v) m = std::max(m, static_cast<double>(pr.z[t * pr.ld + v]));
  double s = 0;
  for (int64_t v = 0; v < pr.v; ++v) s += std::exp(pr.z[t * pr.ld + v] - m);
  return m + std::log(s);
}

/// One row per (spot, bad value), plus clean rows; every row scored, one row a
/// sequence. ld·sizeof(T) is a multiple of 16, so every row is cut the same way.
void check_bad_logits(gc::dtype dt, int64_t vocab, int64_t misalign) {
  const int es = dtype_bytes(dt), w = 16 / es;
  int64_t ld = vocab;
  while ((ld * es) % 16 != 0) ++ld;
  const d::row_span sp = d::partition_row(static_cast<uint64_t>(misalign * es), vocab, es);
  // The split count depends on N: find the N the spots need (it converges at once).
  std::vector<spot> spots;
  int64_t n = 2;
  for (int it = 0; it < 4; ++it) {
    const int k = d::make_layout(n, vocab, es, n, n / 2, true).splits;
    spots = spots_of(sp, vocab, w, k);
    int64_t want = 2 * static_cast<int64_t>(spots.size()) + 2;
    want += want % 2;
    if (want == n) break;
    n = want;
  }
  const int k = d::make_layout(n, vocab, es, n, n / 2, true).splits;
  REQUIRE(2 * static_cast<int64_t>(spots.size()) + 2 <= n);

  case_config c;
  c.dtype = dt;
  c.vocab = vocab;
  c.pad = ld - vocab;
  c.misalign = misalign;
  c.seq_lens.assign(static_cast<size_t>(n), 1);
  c.mask_prob = 0.0;
  c.ref = false;
  c.soft = false;
  c.grad = false;
  c.seed = 7000 + static_cast<uint64_t>(vocab) + static_cast<uint64_t>(misalign);
  problem pr;
  make_problem(c, pr);
  std::vector<std::string> what(static_cast<size_t>(n), "clean");
  for (size_t i = 0; i < spots.size(); ++i)
    for (int b = 0; b < 2; ++b) {
      const int64_t t = static_cast<int64_t>(2 * i) + b;
      const float bad = b == 0 ? NAN : INFINITY;
      for (int64_t v = spots[i].col; v < spots[i].col + spots[i].width; ++v) {
        const size_t at = static_cast<size_t>(t * pr.ld + v);
        pr.z[at] = encode(dt, bad, &pr.logits[at * static_cast<size_t>(es)]);
      }
      what[static_cast<size_t>(t)] = std::string(b == 0 ? "NaN" : "+inf") + " at " + spots[i].where +
                                     " (column " + std::to_string(spots[i].col) + ")";
    }
  INFO(dtype_name(dt) << " V=" << vocab << " misalign=" << misalign << " splits=" << k
                      << " prologue=" << sp.pro << " vectors=" << sp.nvec);
  const gpu_result g = run_gpu(pr);
  REQUIRE(g.host_status == status::success);
  REQUIRE(g.device == status::success);
  int64_t bad_rows = 0;
  for (int64_t t = 0; t < n; ++t) {
    INFO("row " << t << ": " << what[static_cast<size_t>(t)] << ": lse " << g.lse[t]
                << ", token log-prob " << g.token_logps[t]);
    if (what[static_cast<size_t>(t)] != "clean") {
      ++bad_rows;
      CHECK(std::isnan(g.lse[t]));
      CHECK(std::isnan(g.token_logps[t]));
    } else {
      const double want = lse_exact(pr, t);
      // The harness's bound for lse (gpu_harness.cuh, error model).
      CHECK(std::fabs(g.lse[t] - want) <= eps_sum(vocab) + 2 * U32 * std::fabs(want));
    }
  }
  CHECK(bad_rows == 2 * static_cast<int64_t>(spots.size()));
}

}  // namespace

TEST_CASE("a NaN or +inf logit anywhere in a scored row gives a NaN lse", "[gpu][small][nan]") {
  for (gc::dtype dt : {gc::dtype::float32, gc::dtype::float16, gc::dtype::bfloat16}) {
    const int w = 16 / dtype_bytes(dt);
    for (int64_t misalign : {0, 1}) {
      check_bad_logits(dt, 37, misalign);          // a few vectors, most threads see nothing
      check_bad_logits(dt, 5, misalign);           // shorter than a vector
      check_bad_logits(dt, 1600 * w + 3, misalign);  // split rows (few rows, long rows)
    }
  }
}

namespace {

/// logits_grad over n = 4 rows whose label logit dominates (p → 1), in two
/// sequences, with lse computed in double and rounded to float.
struct label_rows {
  static constexpr int64_t n = 4, vocab = 21;
  gc::dtype dt;
  bool grad_fp32;
  std::vector<int64_t> labels = {0, 9, 20, 13};  // prologue or body, body, tail, body
  std::vector<float> z, lse, seq_grad = {1.5f, -0.75f};
  dmem dz, dl, doff, dlse, dg, dgrad;
  gc::grad_args a;

  label_rows(gc::dtype d_, bool fp32) : dt(d_), grad_fp32(fp32) {
    const int es = dtype_bytes(dt);
    std::vector<uint8_t> logits(static_cast<size_t>(n * vocab * es));
    z.resize(static_cast<size_t>(n * vocab));
    lse.resize(static_cast<size_t>(n));
    const float gap[n] = {9.0f, 11.0f, 13.0f, 6.0f};  // label logit minus the others
    for (int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const float x = v == labels[t] ? 1.0f : 1.0f - gap[t] - 0.125f * static_cast<float>(v % 3);
        z[t * vocab + v] = encode(dt, x, &logits[static_cast<size_t>((t * vocab + v) * es)]);
        s += std::exp(static_cast<double>(z[t * vocab + v]));
      }
      lse[t] = static_cast<float>(std::log(s));
    }
    dz = upload(logits);
    dl = upload(labels);
    doff = upload(std::vector<int64_t>{0, 2, 4});
    dlse = upload(lse);
    dg = upload(seq_grad);
    dgrad = dmem(static_cast<size_t>(n * vocab * out_bytes()));
    poison(dgrad);
    a.tokens.logits = dz.get();
    a.tokens.logits_dtype = dt;
    a.tokens.n_rows = n;
    a.tokens.vocab = vocab;
    a.tokens.ld = vocab;
    a.tokens.labels = dl.get();
    a.tokens.offsets = doff.get();
    a.tokens.n_seqs = 2;
    a.lse = dlse.get<float>();
    a.grad_seq_logps = dg.get<float>();
    a.grad_logits = dgrad.get();
    a.grad_float32 = grad_fp32;
    CUDA_REQUIRE(cudaDeviceSynchronize());
  }
  int out_bytes() const { return grad_fp32 ? 4 : dtype_bytes(dt); }
  /// The host status of logits_grad; the device status in *device.
  status run(status* device) {
    size_t bytes = 0;
    REQUIRE(gc::logits_grad(nullptr, bytes, a, {}) == status::success);
    dmem ws(bytes);
    const status st = gc::logits_grad(ws.get(), bytes, a, {});
    if (st != status::success) return st;
    REQUIRE(gc::device_status(ws.get(), nullptr, device) == status::success);
    return st;
  }
};

/// The label's gradient g(1 − p) = −g·expm1(z_y − lse) against the same
/// expression in double, on the float lse the kernel is given.
void check_label_gradient(gc::dtype dt, bool grad_fp32) {
  label_rows r(dt, grad_fp32);
  status device = status::internal_error;
  REQUIRE(r.run(&device) == status::success);
  CHECK(device == status::success);
  const int out_es = r.out_bytes();
  const auto got = download<uint8_t>(r.dgrad.get(), static_cast<size_t>(r.n * r.vocab * out_es));
  const gc::dtype out_dt = grad_fp32 ? gc::dtype::float32 : dt;
  for (int64_t t = 0; t < r.n; ++t) {
    const double g = r.seq_grad[static_cast<size_t>(t / 2)];
    const int64_t y = r.labels[static_cast<size_t>(t)];
    const double want = -g * std::expm1(static_cast<double>(r.z[t * r.vocab + y]) - r.lse[t]);
    const double have = decode(out_dt, &got[static_cast<size_t>((t * r.vocab + y) * out_es)]);
    // expm1f is within 1 ulp, z_y − lse and the product by g round once each:
    // 4u relative, then the output's own rounding. g(1 − p) with p from ex2
    // is off by ~u/(1 − p) relative (here 1 − p ≈ 1e-3 .. 1e-5): far outside.
    const double u_out = grad_fp32 || dt == gc::dtype::float32
                             ? 0.0
                             : (dt == gc::dtype::float16 ? 0x1p-11 : 0x1p-8);
    INFO(dtype_name(dt) << " fp32 grad " << grad_fp32 << " row " << t << " label " << y
                        << ": got " << have << ", want " << want);
    CHECK(std::fabs(have - want) <= (4 * U32 + u_out) * std::fabs(want));
  }
}

}  // namespace

TEST_CASE("the label column's gradient keeps its precision as p -> 1", "[gpu][small]") {
  check_label_gradient(gc::dtype::float32, false);
  check_label_gradient(gc::dtype::bfloat16, true);
  check_label_gradient(gc::dtype::float16, true);
  check_label_gradient(gc::dtype::bfloat16, false);
}

namespace {

__global__ void noop_kernel(int) {}

}  // namespace

TEST_CASE("a CUDA error the caller left pending is reported and stays retrievable", "[gpu][small]") {
  label_rows r(gc::dtype::float32, false);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  // 2048 threads a block is never a valid configuration: the launch fails at once.
  d::launch(noop_kernel, dim3(1), dim3(2048), nullptr, 0);
  status device = status::internal_error;
  CHECK(r.run(&device) == status::cuda_error);
  // The library peeked: the caller's code is still there, and only now cleared.
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(r.run(&device) == status::success);
  CHECK(device == status::success);
}
