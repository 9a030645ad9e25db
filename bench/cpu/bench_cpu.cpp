// bench/cpu/bench_cpu.cpp — the CPU reference against a naive fp32 CPU
// formulation (bench/cpu/naive_cpu.hpp), so the bench target runs and means
// something on a machine without a GPU. Rows:
//
//   cpu/copy/N:.../V:...                       memcpy of a buffer, the bandwidth roof
//   cpu/{reference,naive}/{forward,step}/{fp32,bf16}/N:/V:
//
// Before timing a shape, the naive result is checked against the reference
// (loss and every gradient element); a mismatch fails the row. Counters: bytes
// (per iteration, the model in common/traffic.hpp), GBps, frac_copy (of the
// measured memcpy rate), extra_MiB (memory beyond inputs and gradient; naive
// only — the reference's O(N) scratch is internal).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/synthetic.hpp"
#include "common/traffic.hpp"
#include "cpu/naive_cpu.hpp"
#include "geopref/reference/reference.hpp"

namespace gb = geopref::bench;

namespace {

constexpr float BETA = 0.1f;
bool g_check_failed = false;  // makes the exit status non-zero

/// The inputs of one shape, on the host.
template <class T>
struct host_problem {
  gb::shape s;
  std::vector<T> logits;         // [N, V]
  std::vector<int32_t> labels;   // [N]
  std::vector<int64_t> offsets;  // [S + 1]
  std::vector<double> soft;      // [P]
  std::vector<double> ref;       // [S]

  explicit host_problem(const gb::shape& shape) : s(shape) {
    const uint64_t seed = gb::DEFAULT_SEED;
    logits.resize(static_cast<size_t>(s.elements()));
    labels.resize(static_cast<size_t>(s.rows));
    for (int64_t t = 0; t < s.rows; ++t) {
      const int64_t y = gb::synthetic_label(seed, t, s.seq_len, s.vocab);
      labels[t] = static_cast<int32_t>(y);
      for (int64_t v = 0; v < s.vocab; ++v)
        logits[t * s.vocab + v] = static_cast<T>(gb::synthetic_logit(seed, t, v, y));
    }
    for (int64_t q = 0; q <= s.seqs(); ++q) offsets.push_back(q * s.seq_len);
    for (int64_t i = 0; i < s.pairs(); ++i) soft.push_back(gb::synthetic_soft_label(seed, i));
    for (int64_t q = 0; q < s.seqs(); ++q)
      ref.push_back(gb::synthetic_ref_logp(seed, q, s.scored_rows_per_seq(), s.vocab));
  }

  geopref::reference::inputs<T, int32_t, int64_t> reference_inputs() const {
    auto in = geopref::reference::make_inputs(logits.data(), s.rows, s.vocab, labels.data(),
                                              offsets.data(), s.seqs(), s.pairs());
    in.soft_labels = soft.data();
    in.ref_logps = ref.data();
    return in;
  }

  gb::naive_cpu<T> naive() const {
    return gb::naive_cpu<T>(s, logits.data(), labels.data(), offsets.data(), soft.data(),
                            ref.data(), BETA);
  }
};

geopref::options bench_options() {
  geopref::options opt;
  opt.loss.type = geopref::loss_type::gdpo;
  opt.loss.beta = BETA;
  return opt;
}

/// Checks the naive formulation against the reference on this problem.
/// Empty string when they agree, else what differs.
template <class T>
std::string check_naive(const host_problem<T>& pb) {
  std::vector<double> ref_grad(static_cast<size_t>(pb.s.elements()));
  geopref::reference::outputs out;
  out.grad_logits = ref_grad.data();
  const geopref::status st = geopref::reference::compute(pb.reference_inputs(), bench_options(), out);
  if (st != geopref::status::success) return std::string("reference: ") + geopref::status_string(st);

  auto naive = pb.naive();
  std::vector<float> grad(static_cast<size_t>(pb.s.elements()));
  const double loss = naive.forward();
  naive.backward(grad.data());

  // fp32 throughout in the naive path: each log-softmax sums V exps, whose
  // rounding error is about sqrt(V)·2⁻²⁴ relative (1e-5 at V = 32000, seen);
  // the tolerances leave 100× room for that and still catch any indexing or
  // sign error, which is O(1).
  char msg[256];
  if (!(std::fabs(loss - out.loss) <= 1e-4 * std::max(1.0, std::fabs(out.loss)))) {
    std::snprintf(msg, sizeof msg, "naive loss %.9g, reference %.9g", loss, out.loss);
    return msg;
  }
  double gmax = 0;
  for (double g : ref_grad) gmax = std::max(gmax, std::fabs(g));
  for (size_t k = 0; k < ref_grad.size(); ++k) {
    const double r = ref_grad[k], g = grad[k];
    if (!(std::fabs(g - r) <= 1e-6 * gmax + 1e-3 * std::fabs(r))) {
      std::snprintf(msg, sizeof msg, "grad[%zu]: naive %.9g, reference %.9g", k, g, r);
      return msg;
    }
  }
  return {};
}

// --- the memcpy roof -------------------------------------------------------

double g_copy_gbps = 0;  // set by the copy row, used by every later row

void bm_copy(benchmark::State& state, size_t bytes) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double moved = 2.0 * static_cast<double>(bytes);  // read + write
  g_copy_gbps = moved * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["bytes"] = moved;
  state.counters["GBps"] = g_copy_gbps;
  state.counters["frac_copy"] = 1.0;
}

void set_counters(benchmark::State& state, double bytes, double seconds, double extra_bytes) {
  const double gbps = bytes * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["bytes"] = bytes;
  state.counters["GBps"] = gbps;
  if (g_copy_gbps > 0) state.counters["frac_copy"] = gbps / g_copy_gbps;
  if (extra_bytes >= 0) state.counters["extra_MiB"] = extra_bytes / (1024.0 * 1024.0);
}

// --- reference and naive rows ---------------------------------------------

template <class T>
void bm_reference(benchmark::State& state, std::shared_ptr<const host_problem<T>> pb,
                  bool step, std::string check) {
  if (!check.empty()) {
    state.SkipWithError(check.c_str());
    return;
  }
  const gb::element_sizes e{static_cast<double>(sizeof(T)), 8.0, 4.0};  // grad in double
  std::vector<double> grad(step ? static_cast<size_t>(pb->s.elements()) : 0);
  const auto in = pb->reference_inputs();
  const auto opt = bench_options();
  double seconds = 0;
  for (auto _ : state) {
    geopref::reference::outputs out;
    out.grad_logits = step ? grad.data() : nullptr;
    const auto t0 = std::chrono::steady_clock::now();
    const geopref::status st = geopref::reference::compute(in, opt, out);
    benchmark::DoNotOptimize(out.loss);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (st != geopref::status::success) {
      state.SkipWithError(geopref::status_string(st));
      return;
    }
  }
  set_counters(state, step ? gb::fused_step_bytes(pb->s, e) : gb::fused_forward_bytes(pb->s, e),
               seconds, -1.0);
}

template <class T>
void bm_naive(benchmark::State& state, std::shared_ptr<const host_problem<T>> pb, bool step,
              std::string check) {
  if (!check.empty()) {
    state.SkipWithError(check.c_str());
    return;
  }
  const gb::element_sizes e{static_cast<double>(sizeof(T)), 4.0, 4.0};
  auto naive = pb->naive();
  std::vector<float> grad(step ? static_cast<size_t>(pb->s.elements()) : 0);
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    float loss = naive.forward();
    benchmark::DoNotOptimize(loss);
    if (step) {
      naive.backward(grad.data());
      benchmark::DoNotOptimize(grad.data());
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  set_counters(state, step ? gb::naive_step_bytes(pb->s, e) : gb::naive_forward_bytes(pb->s, e),
               seconds, naive.extra_bytes());
}

template <class T>
void register_shape(const gb::shape& s, const char* dtype) {
  auto pb = std::make_shared<const host_problem<T>>(s);
  const std::string check = check_naive(*pb);  // once per shape, before any timing
  if (!check.empty()) {
    g_check_failed = true;
    std::fprintf(stderr, "bench_cpu: %s V=%lld: naive and reference disagree: %s\n", dtype,
                 static_cast<long long>(s.vocab), check.c_str());
  }
  const std::string tail = std::string("/") + dtype + "/N:" + std::to_string(s.rows) +
                           "/V:" + std::to_string(s.vocab);
  for (bool step : {false, true}) {
    const char* phase = step ? "step" : "forward";
    benchmark::RegisterBenchmark(("cpu/reference/" + std::string(phase) + tail).c_str(),
                                 bm_reference<T>, pb, step, check)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("cpu/naive/" + std::string(phase) + tail).c_str(),
                                 bm_naive<T>, pb, step, check)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  gb::cli_options full, quick, opt;
  full.rows = 512;
  full.seq_len = 64;
  full.vocabs = {4096, 32000};
  full.dtypes = {"fp32", "bf16"};
  quick.rows = 64;
  quick.seq_len = 16;
  quick.vocabs = {1000};  // not a multiple of any vector width
  quick.dtypes = {"fp32", "bf16"};
  std::string error;
  if (!gb::parse_cli(&argc, argv, full, quick, &opt, &error)) {
    std::fprintf(stderr, "bench_cpu: %s\n", error.c_str());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;

  const size_t copy_bytes = size_t{64} << 20;
  benchmark::RegisterBenchmark(("cpu/copy/bytes:" + std::to_string(copy_bytes)).c_str(), bm_copy,
                               copy_bytes)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int64_t v : opt.vocabs) {
    const gb::shape s{opt.rows, v, opt.seq_len};
    if (gb::wants(opt, "fp32")) register_shape<float>(s, "fp32");
    if (gb::wants(opt, "bf16")) register_shape<Eigen::bfloat16>(s, "bf16");
  }
  benchmark::AddCustomContext("geopref.device", "CPU");
  const char* commit = std::getenv("GEOPREF_COMMIT");  // recorded by whoever runs it
  benchmark::AddCustomContext("geopref.commit", commit != nullptr ? commit : "unknown");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return g_check_failed ? 1 : 0;
}
