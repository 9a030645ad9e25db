// bench/gpu/check_naive.cu — the naive baseline checked against the CPU
// reference, element by element, on seeded synthetic problems with awkward
// shapes (V = 1, V not a multiple of any vector width, all-masked sequences).
// A baseline that computed something else would make every speed-up in
// docs/benchmarks.md meaningless. Exit 0: all match; 1: a mismatch (printed);
// 77: no usable CUDA device (ctest reports it as skipped).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/synthetic.hpp"
#include "device_buffer.hpp"
#include "gpu/naive_kernels.cuh"
#include "gpu/problem.cuh"
#include "reference_bridge.hpp"

namespace gb = geopref::bench;

namespace {

#define CHECK_CUDA(call)                                                               \
  do {                                                                                 \
    const cudaError_t e_ = (call);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                   cudaGetErrorString(e_));                                            \
      return false;                                                                    \
    }                                                                                  \
  } while (0)

constexpr float BETA = 0.1f;

// Tolerances, |naive − reference| <= atol + rtol·|reference|:
// - ℓ_t: the fp32 log-softmax has a few ulps of error on lse (|lse| < 20),
//   about 4e-6 per token; L_s sums n_s of them plus fp32 rounding of the sum.
// - g_s (hence every gradient element) moves by |f''/f'|·Δh <= β·Δh ~ 1e-4 of
//   itself; p_v = exp(LP) carries ~1e-5 relative. bf16 output adds its
//   rounding, 2⁻⁹ relative. atol covers the cancellation in g_s(1 − p_y).
// An indexing or sign error is O(1) relative and fails all of these.
constexpr double TOKEN_ATOL = 8e-6;
constexpr double SEQ_RTOL = 2e-6;
constexpr double LOSS_RTOL = 1e-4;
constexpr double GRAD_RTOL_FP32 = 2e-4;
constexpr double GRAD_RTOL_BF16 = 2e-4 + 1.0 / 256.0;
constexpr double GRAD_ATOL_REL = 1e-6;  // times max |g_s|

float host_float(float x) { return x; }
float host_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T, class Label>
bool check(const gb::shape& s, const char* name, uint64_t seed) {
  const size_t nv = static_cast<size_t>(s.elements());
  const gb::side_inputs side(s, seed);
  geopref::support::device_buffer logits(nv * sizeof(T)), grad(nv * sizeof(T)),
      labels(static_cast<size_t>(s.rows) * sizeof(Label)),
      offsets(side.offsets.size() * sizeof(int64_t)), soft(side.soft.size() * sizeof(float)),
      ref(side.ref.size() * sizeof(float)), lp(nv * sizeof(float)), dlp(nv * sizeof(float)),
      small(gb::naive::small_floats(s.rows, s.seqs()) * sizeof(float));
  if (!logits.ok() || !grad.ok() || !labels.ok() || !lp.ok() || !dlp.ok() || !small.ok()) {
    std::fprintf(stderr, "check_naive: allocation failed\n");
    return false;
  }
  CHECK_CUDA(cudaMemcpy(offsets.get(), side.offsets.data(), offsets.bytes(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(soft.get(), side.soft.data(), soft.bytes(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(ref.get(), side.ref.data(), ref.bytes(), cudaMemcpyHostToDevice));
  gb::fill_problem(logits.get<T>(), labels.get<Label>(), s, seed, nullptr);
  CHECK_CUDA(cudaMemset(grad.get(), 0xFF, grad.bytes()));  // poison: NaN in both dtypes

  const gb::naive::workspace ws = gb::naive::make_workspace(
      small.get<float>(), lp.get<float>(), dlp.get<float>(), s.rows, s.seqs());
  gb::naive::problem<T, Label> pb;
  pb.logits = logits.get<T>();
  pb.n_rows = s.rows;
  pb.vocab = s.vocab;
  pb.labels = labels.get<Label>();
  pb.offsets = offsets.get<int64_t>();
  pb.n_seqs = s.seqs();
  pb.n_pairs = s.pairs();
  pb.soft_labels = soft.get<float>();
  pb.ref_logps = ref.get<float>();
  pb.beta = BETA;
  gb::naive::forward(pb, ws, nullptr);
  gb::naive::backward(pb, ws, grad.get<T>(), nullptr);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());

  // Bring back inputs and results; the reference sees the same rounded logits.
  std::vector<T> h_logits(nv), h_grad(nv);
  std::vector<Label> h_labels(static_cast<size_t>(s.rows));
  std::vector<float> h_seq(static_cast<size_t>(s.seqs()));
  float h_loss = 0;
  CHECK_CUDA(cudaMemcpy(h_logits.data(), logits.get(), logits.bytes(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_grad.data(), grad.get(), grad.bytes(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_labels.data(), labels.get(), labels.bytes(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(h_seq.data(), ws.seq_logps, h_seq.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(&h_loss, ws.loss, sizeof(float), cudaMemcpyDeviceToHost));

  std::vector<int64_t> labels64(h_labels.begin(), h_labels.end());
  geopref::support::ref_problem g;
  g.dtype = sizeof(T) == 2 ? geopref::support::ref_dtype::bf16 : geopref::support::ref_dtype::f32;
  g.logits = h_logits.data();  // bf16 as raw bits: the same 16 bits the device holds
  g.n_rows = s.rows;
  g.vocab = s.vocab;
  g.ld = s.vocab;
  g.labels = labels64.data();
  g.offsets = side.offsets.data();
  g.n_seqs = s.seqs();
  g.n_pairs = s.pairs();
  g.soft_labels = side.soft_d.data();
  g.ref_logps = side.ref_d.data();
  geopref::options opt;
  opt.loss.type = geopref::loss_type::gdpo;
  opt.loss.beta = BETA;
  geopref::support::ref_result want;
  const geopref::status st = geopref::support::run_reference(g, opt, true, want);
  if (st != geopref::status::success) {
    std::fprintf(stderr, "check_naive %s: reference: %s\n", name, geopref::status_string(st));
    return false;
  }
  const double r_loss = want.loss;
  const std::vector<double>& r_seq = want.seq_logps;
  const std::vector<double>& r_grad = want.grad_logits;

  bool ok = true;
  double worst = 0;  // largest |error| / tolerance seen, reported for tuning
  auto expect = [&](double got, double want, double tol, const char* what, size_t k) {
    const double err = std::fabs(got - want);
    worst = std::max(worst, err / tol);
    if (!(err <= tol)) {  // also catches NaN (poisoned, unwritten output)
      if (ok)
        std::fprintf(stderr, "check_naive %s (seed %llu): %s[%zu] naive %.9g reference %.9g\n",
                     name, static_cast<unsigned long long>(seed), what, k, got, want);
      ok = false;
    }
  };
  for (size_t q = 0; q < r_seq.size(); ++q)
    expect(h_seq[q], r_seq[q],
           TOKEN_ATOL * static_cast<double>(s.seq_len) + SEQ_RTOL * std::fabs(r_seq[q]), "seq_logps", q);
  expect(h_loss, r_loss, LOSS_RTOL * std::max(1.0, std::fabs(r_loss)), "loss", 0);
  double gmax = 0;
  for (double x : r_grad) gmax = std::max(gmax, std::fabs(x));
  const double rtol = sizeof(T) == 2 ? GRAD_RTOL_BF16 : GRAD_RTOL_FP32;
  for (size_t k = 0; k < nv; ++k)
    expect(host_float(h_grad[k]), r_grad[k], GRAD_ATOL_REL * gmax + rtol * std::fabs(r_grad[k]),
           "grad", k);
  std::printf("check_naive %-26s %s (worst error / tolerance %.3g)\n", name, ok ? "ok" : "FAILED",
              worst);
  return ok;
}

}  // namespace

int main() {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("check_naive: no usable CUDA device, skipped\n");
    return 77;
  }
  struct c {
    gb::shape s;
    const char* name;
  };
  const c cases[] = {
      {{4, 1, 2}, "N=4 V=1 L=2"},            // V = 1: every ℓ_t = 0, zero gradient
      {{2, 5, 1}, "N=2 V=5 L=1"},            // every row masked: empty sequences
      {{6, 7, 3}, "N=6 V=7 L=3"},
      {{34, 4099, 17}, "N=34 V=4099 L=17"},  // V prime
      {{64, 1000, 16}, "N=64 V=1000 L=16"},
      {{8, 32000, 4}, "N=8 V=32000 L=4"},
  };
  bool ok = true;
  uint64_t seed = gb::DEFAULT_SEED;
  for (const c& k : cases) {
    ok = check<float, int64_t>(k.s, (std::string("fp32 ") + k.name).c_str(), seed++) && ok;
    ok = check<__nv_bfloat16, int32_t>(k.s, (std::string("bf16 ") + k.name).c_str(), seed++) && ok;
  }
  std::printf("check_naive: %s\n", ok ? "all cases match the reference" : "MISMATCH");
  return ok ? 0 : 1;
}
