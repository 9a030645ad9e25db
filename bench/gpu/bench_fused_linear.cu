// bench/gpu/bench_fused_linear.cu — the fused-linear path
// (geopref/cuda/fused_linear.cuh) against the cuBLAS GEMMs it contains,
// measured in the same process (docs/benchmarks.md, issue 12's target: within
// 1.10× of its GEMMs).
//
//   gpu/fused_linear/gemms/bf16/...   the path's four GEMMs alone, with its chunking:
//                                     logits per chunk twice (pass 1, pass 2),
//                                     grad_H = G·W, grad_W += Gᵀ·H (fp32)
//   gpu/fused_linear/step/bf16/...    fused_linear_step: loss, metrics, grad_H, grad_W
//                                     (two passes: no host copies of offsets / pairs)
//   gpu/fused_linear/gemms_one_pass/... the one-pass path's three GEMMs per segment alone,
//                                     with its plan (TRL's layout: two segments per chunk)
//   gpu/fused_linear/step_one_pass/... fused_linear_step given the host copies (one pass);
//                                     vs_two_pass: its time / the step row's
//   gpu/fused_linear/logps_gemms/...  the logits GEMMs of the forward alone
//   gpu/fused_linear/logps/bf16/...   fused_linear_logps (the reference model's pass)
//
// Counters: ratio (time / the GEMM row of the same shape, measured just
// before), workspace_MiB (chunk + O(N)), logits_MiB (N·V·2, what the unfused
// path would hold, and its gradient as much again), TFLOPs, N, H, V, chunk.
// Flags: --quick (3 iterations), --rows N (16384), --hidden H (4096),
// --vocab V (0: 32000 and 128256), --chunk-mib M (1024); the rest goes to
// Google Benchmark. Exit 77 without a usable device.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "geopref/cuda/fused_linear.cuh"
#include "gpu/cuda_timer.cuh"

namespace gb = geopref::bench;
namespace gc = geopref::cuda;

namespace {

int64_t g_rows = 16384, g_hidden = 4096, g_iters = 10, g_chunk_mib = 1024;
std::vector<int64_t> g_vocabs = {32000, 128256};
cublasHandle_t g_blas = nullptr;
double g_gemm_seconds = 0;  // the last GEMM row's mean, for the ratio

/// Deterministic pseudo-random bf16 in [−a, a] (a hash of the index).
__global__ void fill_bf16(__nv_bfloat16* p, int64_t n, float a, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = __float2bfloat16_rn(a * (static_cast<float>(x & 0xffffff) / 8388608.0f - 1.0f));
  }
}

/// Inputs and outputs of one shape.
struct linear_problem {
  int64_t N, H, V, T = 1024;
  gb::device_buffer hidden, weight, labels, offsets, soft, gh, gw, loss, workspace;
  gc::linear_train_args args;
  std::vector<int64_t> host_offsets;  // the one-pass rows' host copy
  size_t ws_bytes = 0;
  std::string error;

  linear_problem(int64_t n, int64_t h, int64_t v) : N(n), H(h), V(v) {
    const double need = double(N * H + V * H) * 2 * 2 + double(V * H) * 4;
    if (need > double(gb::free_device_bytes())) {
      error = "needs " + std::to_string(need / double(1 << 30)) + " GiB";
      return;
    }
    hidden = gb::device_buffer(size_t(N * H) * 2);
    weight = gb::device_buffer(size_t(V * H) * 2);
    gh = gb::device_buffer(size_t(N * H) * 2);
    gw = gb::device_buffer(size_t(V * H) * 4);
    fill_bf16<<<1024, 256>>>(hidden.get<__nv_bfloat16>(), N * H, 1.0f, 1u);
    fill_bf16<<<1024, 256>>>(weight.get<__nv_bfloat16>(), V * H, 0.02f, 2u);
    const int64_t S = N / T, P = S / 2;
    std::vector<int32_t> lab(static_cast<size_t>(N));
    for (int64_t t = 0; t < N; ++t) lab[t] = t % T == T - 1 ? -100 : int32_t((t * 7919) % V);
    std::vector<int64_t> off(static_cast<size_t>(S + 1));
    for (int64_t s = 0; s <= S; ++s) off[s] = s * T;
    labels = gb::device_buffer::upload(lab);
    offsets = gb::device_buffer::upload(off);
    host_offsets = off;
    soft = gb::device_buffer::upload(std::vector<float>(size_t(P), 0.8f));
    loss = gb::device_buffer(4);
    args.in.hidden = hidden.get();
    args.in.weight = weight.get();
    args.in.type = gc::dtype::bfloat16;
    args.in.n_rows = N;
    args.in.hidden_size = H;
    args.in.vocab = V;
    args.in.labels = labels.get();
    args.in.label_type = gc::index_type::int32;
    args.in.offsets = offsets.get();
    args.in.n_seqs = S;
    args.in.chunk_bytes = size_t(g_chunk_mib) << 20;
    args.in.cublas = g_blas;
    args.n_pairs = P;
    args.soft_labels = soft.get<float>();
    args.loss = loss.get<float>();
    args.grad_hidden = gh.get();
    args.grad_weight = gw.get();
    args.grad_weight_float32 = true;
    if (gc::fused_linear_step(nullptr, ws_bytes, args, geopref::options{}) != geopref::status::success) {
      error = "workspace query failed";
      return;
    }
    workspace = gb::device_buffer(ws_bytes);
    if (!workspace.ok()) error = "workspace allocation failed";
  }

  int64_t chunk_rows() const {
    const int64_t ldc = (V + 7) / 8 * 8;
    const int64_t c = int64_t(args.in.chunk_bytes / size_t(ldc * 2));
    return c < N ? c : N;
  }
};

/// The path's GEMMs alone, with the path's chunking.
void enqueue_gemms(linear_problem& p, bool backward) {
  const int64_t C = p.chunk_rows(), ldc = (p.V + 7) / 8 * 8;
  auto* chunk = static_cast<char*>(p.workspace.get()) + (p.ws_bytes - size_t(C * ldc * 2) - 512);
  chunk -= reinterpret_cast<uintptr_t>(chunk) % 256;  // any 256-aligned chunk-sized piece
  const float one = 1.0f, zero = 0.0f;
  const int passes = backward ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass)
    for (int64_t r0 = 0; r0 < p.N; r0 += C) {
      const int64_t rows = p.N - r0 < C ? p.N - r0 : C;
      const auto* hc = p.hidden.get<__nv_bfloat16>() + r0 * p.H;
      cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, int(p.V), int(rows), int(p.H), &one,
                   p.weight.get(), CUDA_R_16BF, int(p.H), hc, CUDA_R_16BF, int(p.H), &zero, chunk,
                   CUDA_R_16BF, int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (pass == 0) continue;
      cublasGemmEx(g_blas, CUBLAS_OP_N, CUBLAS_OP_N, int(p.H), int(rows), int(p.V), &one,
                   p.weight.get(), CUDA_R_16BF, int(p.H), chunk, CUDA_R_16BF, int(ldc), &zero,
                   p.gh.get<__nv_bfloat16>() + r0 * p.H, CUDA_R_16BF, int(p.H),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      const float beta = r0 > 0 ? 1.0f : 0.0f;
      cublasGemmEx(g_blas, CUBLAS_OP_N, CUBLAS_OP_T, int(p.H), int(p.V), int(rows), &one, hc,
                   CUDA_R_16BF, int(p.H), chunk, CUDA_R_16BF, int(ldc), &beta, p.gw.get(),
                   CUDA_R_32F, int(p.H), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
}

/// The one-pass path's GEMMs alone, with its plan's segments.
void enqueue_gemms_one_pass(linear_problem& p, const gc::detail::one_pass_plan& plan) {
  const int64_t C = p.chunk_rows(), ldc = (p.V + 7) / 8 * 8;
  auto* chunk = static_cast<char*>(p.workspace.get()) + (p.ws_bytes - size_t(C * ldc * 2) - 512);
  chunk -= reinterpret_cast<uintptr_t>(chunk) % 256;
  const float one = 1.0f, zero = 0.0f;
  bool first = true;
  for (const gc::detail::row_segment& sg : plan.segments) {
    auto* z = chunk + sg.at * ldc * 2;
    const auto* hc = p.hidden.get<__nv_bfloat16>() + sg.row0 * p.H;
    cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, int(p.V), int(sg.rows), int(p.H), &one,
                 p.weight.get(), CUDA_R_16BF, int(p.H), hc, CUDA_R_16BF, int(p.H), &zero, z,
                 CUDA_R_16BF, int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cublasGemmEx(g_blas, CUBLAS_OP_N, CUBLAS_OP_N, int(p.H), int(sg.rows), int(p.V), &one,
                 p.weight.get(), CUDA_R_16BF, int(p.H), z, CUDA_R_16BF, int(ldc), &zero,
                 p.gh.get<__nv_bfloat16>() + sg.row0 * p.H, CUDA_R_16BF, int(p.H),
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    const float beta = first ? 0.0f : 1.0f;
    first = false;
    cublasGemmEx(g_blas, CUBLAS_OP_N, CUBLAS_OP_T, int(p.H), int(p.V), int(sg.rows), &one, hc,
                 CUDA_R_16BF, int(p.H), z, CUDA_R_16BF, int(ldc), &beta, p.gw.get(), CUDA_R_32F,
                 int(p.H), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }
}

enum class row { gemms, step, gemms_one_pass, step_one_pass, logps_gemms, logps };
double g_step_seconds = 0;  // the two-pass step row's mean, for vs_two_pass

void bench_row(benchmark::State& state, row kind, int64_t V) {
  linear_problem p(g_rows, g_hidden, V);
  if (!p.error.empty()) {
    state.SkipWithError(p.error.c_str());
    return;
  }
  cublasSetStream(g_blas, nullptr);
  const gb::event_pair events;
  const gb::l2_flusher l2;
  gc::linear_logps_args la;
  la.in = p.args.in;
  gb::device_buffer seq(size_t(p.args.in.n_seqs) * 4);
  la.seq_logps = seq.get<float>();
  gc::linear_train_args one_pass = p.args;
  one_pass.host_offsets = p.host_offsets.data();  // TRL's layout: pairs null
  gc::detail::one_pass_plan plan;
  if (kind == row::gemms_one_pass || kind == row::step_one_pass) {
    if (!gc::fused_linear_one_pass(one_pass, geopref::options{}) ||
        !gc::detail::build_one_pass_plan(p.host_offsets.data(), p.args.in.n_seqs, nullptr,
                                         p.args.n_pairs, p.chunk_rows(), &plan)) {
      state.SkipWithError("no one-pass plan: a pair does not fit the chunk (raise --chunk-mib)");
      return;
    }
  }
  auto enqueue = [&] {
    switch (kind) {
      case row::gemms: enqueue_gemms(p, true); break;
      case row::gemms_one_pass: enqueue_gemms_one_pass(p, plan); break;
      case row::logps_gemms: enqueue_gemms(p, false); break;
      case row::step: gc::fused_linear_step(p.workspace.get(), p.ws_bytes, p.args, geopref::options{}); break;
      case row::step_one_pass:
        gc::fused_linear_step(p.workspace.get(), p.ws_bytes, one_pass, geopref::options{});
        break;
      case row::logps: {
        size_t b = p.ws_bytes;
        gc::fused_linear_logps(p.workspace.get(), b, la, geopref::options{});
        break;
      }
    }
  };
  enqueue();  // warm-up (cuBLAS heuristics, lazy module loading)
  std::string err;
  if (!gb::cuda_ok(cudaDeviceSynchronize(), "warm-up", &err)) {
    state.SkipWithError(err.c_str());
    return;
  }
  double sum = 0;
  int64_t n = 0;
  for (auto _ : state) {
    const double s = gb::time_once(events, l2, nullptr, enqueue);
    state.SetIterationTime(s);
    sum += s;
    ++n;
  }
  const double mean = n > 0 ? sum / double(n) : 0;
  const bool gemm_row =
      kind == row::gemms || kind == row::gemms_one_pass || kind == row::logps_gemms;
  if (gemm_row) g_gemm_seconds = mean;
  if (kind == row::step) g_step_seconds = mean;
  const int gemm_count = kind == row::gemms || kind == row::step
                             ? 4
                             : (kind == row::gemms_one_pass || kind == row::step_one_pass ? 3 : 1);
  const double flop = 2.0 * double(p.N) * double(p.H) * double(p.V) * gemm_count;
  state.counters["ratio"] = gemm_row || g_gemm_seconds == 0 ? 1.0 : mean / g_gemm_seconds;
  if (kind == row::step_one_pass && g_step_seconds > 0)
    state.counters["vs_two_pass"] = mean / g_step_seconds;
  state.counters["TFLOPs"] = mean > 0 ? flop / mean * 1e-12 : 0;
  state.counters["workspace_MiB"] = double(p.ws_bytes) / double(1 << 20);
  state.counters["logits_MiB"] = double(p.N) * double(p.V) * 2 / double(1 << 20);
  state.counters["N"] = double(p.N);
  state.counters["H"] = double(p.H);
  state.counters["V"] = double(p.V);
  state.counters["chunk"] = double(p.chunk_rows());
}

int64_t flag_value(int& argc, char** argv, const char* name, int64_t def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      const int64_t v = std::strtoll(argv[i + 1], nullptr, 10);
      for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
      argc -= 2;
      return v;
    }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) {
      g_iters = 3;
      for (int j = i; j + 1 <= argc; ++j) argv[j] = argv[j + 1];
      --argc;
      break;
    }
  g_rows = flag_value(argc, argv, "--rows", g_rows);
  g_hidden = flag_value(argc, argv, "--hidden", g_hidden);
  g_chunk_mib = flag_value(argc, argv, "--chunk-mib", g_chunk_mib);
  const int64_t v = flag_value(argc, argv, "--vocab", 0);
  if (v > 0) g_vocabs = {v};
  if (cublasCreate(&g_blas) != CUBLAS_STATUS_SUCCESS) {
    std::printf("cublasCreate failed\n");
    return 1;
  }
  const std::string shape = "/N:" + std::to_string(g_rows) + "/H:" + std::to_string(g_hidden);
  for (int64_t V : g_vocabs) {
    const std::string s = shape + "/V:" + std::to_string(V);
    // Each GEMM row right before the row it is the denominator of.
    benchmark::RegisterBenchmark(("gpu/fused_linear/gemms/bf16" + s).c_str(), bench_row, row::gemms, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gpu/fused_linear/step/bf16" + s).c_str(), bench_row, row::step, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gpu/fused_linear/gemms_one_pass/bf16" + s).c_str(), bench_row,
                                 row::gemms_one_pass, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gpu/fused_linear/step_one_pass/bf16" + s).c_str(), bench_row,
                                 row::step_one_pass, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gpu/fused_linear/logps_gemms/bf16" + s).c_str(), bench_row,
                                 row::logps_gemms, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gpu/fused_linear/logps/bf16" + s).c_str(), bench_row, row::logps, V)
        ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  cublasDestroy(g_blas);
  return 0;
}
