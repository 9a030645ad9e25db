// bench/gpu/bench_gpu.cu — the GPU benchmarks (docs/benchmarks.md).
//
//   gpu/copy/bytes:B                            cudaMemcpyAsync device to device: the roof
//   gpu/{fused,naive}/{forward,backward,step}/{bf16,fp32}/N:.../V:...
//   gpu/token/{forward,backward}/{bf16,fp32}/N:.../V:...
//
// fused is geopref::cuda: forward = train_step without a gradient (forward
// pass, per-sequence sums, pair loss), step = train_step with one (forward,
// loss, backward), backward = logits_grad alone, from the lse and g_s of an
// untimed train_step without a gradient.
// token is the per-token primitive: forward = token_logps (log-probs and
// lse), backward = token_logps_grad from that lse and a g_t per row (what a
// framework computing its own loss calls; its peer is TRL's
// selective_log_softmax, bench/peers/torch_peers.py --token).
// naive is bench/gpu/naive_kernels.cuh (op by op, an fp32 log-softmax
// materialised). Every iteration is timed with CUDA events around a cold L2
// (gpu/cuda_timer.cuh) and reported as Google Benchmark manual time.
//
// Counters on every row: bytes (per iteration, common/traffic.hpp), GBps,
// frac_copy (of the copy row's rate, measured in this process), extra_MiB
// (device memory beyond inputs and gradient), N, V. After the naive step of a
// shape, its gradient and loss are compared with the fused ones (counters
// check_mismatches, check_max_rel_err); a mismatch fails that row.
//
// Flags (common/cli.hpp): --quick, --rows, --seq-len, --vocab, --dtype, --iters;
// the rest goes to Google Benchmark (--benchmark_out=..., --benchmark_filter=...).
// Exit status: 0, 1 if a check failed, 77 if there is no usable CUDA device.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/synthetic.hpp"
#include "common/traffic.hpp"
#include "geopref/cuda/geopref.cuh"
#include "gpu/cuda_timer.cuh"
#include "gpu/naive_kernels.cuh"
#include "gpu/problem.cuh"

namespace gb = geopref::bench;
namespace gc = geopref::cuda;

namespace {

constexpr float BETA = 0.1f;
using label_t = int32_t;  // TRL's labels are int64; int32 halves their (O(N)) traffic here

bool g_check_failed = false;
double g_copy_gbps = 0;  // set by the copy row
int64_t g_iters = 10;

enum class dt { fp32, bf16 };
size_t dt_bytes(dt d) { return d == dt::bf16 ? 2 : 4; }
gc::dtype dt_api(dt d) { return d == dt::bf16 ? gc::dtype::bfloat16 : gc::dtype::float32; }

double gib(double bytes) { return bytes / double(1 << 30); }

/// Inputs and gradient of one shape, kept while consecutive rows use it.
struct gpu_problem {
  gb::shape s{};
  dt dtype = dt::fp32;
  gb::device_buffer logits, grad, labels, offsets, soft, ref;
  std::string error;  // non-empty: could not be set up

  gpu_problem(const gb::shape& shape, dt d) : s(shape), dtype(d) {
    const size_t nv = static_cast<size_t>(s.elements());
    const double need = static_cast<double>(nv) * 2.0 * static_cast<double>(dt_bytes(d));
    if (need > static_cast<double>(gb::free_device_bytes())) {
      error = "inputs and gradient need " + std::to_string(gib(need)) + " GiB, " +
              std::to_string(gib(static_cast<double>(gb::free_device_bytes()))) + " GiB free";
      return;
    }
    const gb::side_inputs side(s);
    logits = gb::device_buffer(nv * dt_bytes(d));
    grad = gb::device_buffer(nv * dt_bytes(d));
    labels = gb::device_buffer(static_cast<size_t>(s.rows) * sizeof(label_t));
    offsets = gb::device_buffer(side.offsets.size() * sizeof(int64_t));
    soft = gb::device_buffer(side.soft.size() * sizeof(float));
    ref = gb::device_buffer(side.ref.size() * sizeof(float));
    if (!logits.ok() || !grad.ok() || !labels.ok() || !offsets.ok() || !soft.ok() || !ref.ok()) {
      error = "device allocation of the inputs failed";
      return;
    }
    cudaMemcpy(offsets.get(), side.offsets.data(), offsets.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(soft.get(), side.soft.data(), soft.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(ref.get(), side.ref.data(), ref.bytes(), cudaMemcpyHostToDevice);
    if (d == dt::bf16)
      gb::fill_problem(logits.get<__nv_bfloat16>(), labels.get<label_t>(), s, gb::DEFAULT_SEED, nullptr);
    else
      gb::fill_problem(logits.get<float>(), labels.get<label_t>(), s, gb::DEFAULT_SEED, nullptr);
    gb::cuda_ok(cudaDeviceSynchronize(), "generating the problem", &error);
  }
};

std::unique_ptr<gpu_problem> g_problem;

/// The problem for (shape, dtype): reuses the cached one, else frees it first.
gpu_problem& problem_for(const gb::shape& s, dt d) {
  if (!g_problem || g_problem->dtype != d || g_problem->s.rows != s.rows ||
      g_problem->s.vocab != s.vocab || g_problem->s.seq_len != s.seq_len) {
    g_problem.reset();
    g_problem = std::make_unique<gpu_problem>(s, d);
  }
  return *g_problem;
}

gb::element_sizes sizes(dt d) {
  return {static_cast<double>(dt_bytes(d)), static_cast<double>(dt_bytes(d)),
          static_cast<double>(sizeof(label_t))};
}

void set_counters(benchmark::State& state, const gb::shape& s, double bytes, double seconds,
                  double extra_bytes) {
  const double gbps = seconds > 0 ? bytes * static_cast<double>(state.iterations()) / seconds / 1e9 : 0;
  state.counters["bytes"] = bytes;
  state.counters["GBps"] = gbps;
  if (g_copy_gbps > 0) state.counters["frac_copy"] = gbps / g_copy_gbps;
  state.counters["extra_MiB"] = extra_bytes / (1024.0 * 1024.0);
  state.counters["N"] = static_cast<double>(s.rows);
  state.counters["V"] = static_cast<double>(s.vocab);
}

// --- the copy roof ---------------------------------------------------------

void bm_copy(benchmark::State& state, size_t bytes) {
  gb::device_buffer src(bytes), dst(bytes);
  if (!src.ok() || !dst.ok()) {
    state.SkipWithError("cannot allocate the copy buffers");
    return;
  }
  cudaMemset(src.get(), 1, bytes);
  gb::event_pair ev;
  gb::l2_flusher l2;
  cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, nullptr);  // warm-up
  double seconds = 0;
  for (auto _ : state) {
    gb::cuda_event_timer timer(state, ev, l2, nullptr, &seconds);
    cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, nullptr);
  }
  std::string err;
  if (!gb::cuda_ok(cudaGetLastError(), "copy", &err)) {
    state.SkipWithError(err.c_str());
    return;
  }
  const double moved = 2.0 * static_cast<double>(bytes);  // read + write
  g_copy_gbps = moved * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["bytes"] = moved;
  state.counters["GBps"] = g_copy_gbps;
  state.counters["frac_copy"] = 1.0;
  state.counters["extra_MiB"] = 0;
}

// --- fused: geopref::cuda::train_step ---------------------------------------

/// A train_step call with its workspace and (O(S)) outputs.
struct fused_call {
  gc::train_args args{};
  geopref::options opt{};
  gb::device_buffer workspace, outputs;
  size_t workspace_bytes = 0;
  geopref::status st = geopref::status::success;

  fused_call(const gpu_problem& pb, void* grad, const geopref::logit_transform& tr = {}) {
    const gb::shape& s = pb.s;
    args.tokens.logits = pb.logits.get();
    args.tokens.logit_transform = tr;
    args.tokens.logits_dtype = dt_api(pb.dtype);
    args.tokens.n_rows = s.rows;
    args.tokens.vocab = s.vocab;
    args.tokens.ld = s.vocab;
    args.tokens.labels = pb.labels.get();
    args.tokens.label_type = gc::index_type::int32;
    args.tokens.offsets = pb.offsets.get();
    args.tokens.offset_type = gc::index_type::int64;
    args.tokens.n_seqs = s.seqs();
    args.n_pairs = s.pairs();
    args.soft_labels = pb.soft.get<float>();
    args.ref_logps = pb.ref.get<float>();
    args.grad_logits = grad;
    opt.loss.type = geopref::loss_type::gdpo;
    opt.loss.beta = BETA;
    outputs = gb::device_buffer(static_cast<size_t>(s.seqs() + 1) * sizeof(float));
    args.loss = outputs.get<float>();
    args.seq_logps = outputs.get<float>() + 1;
    st = gc::train_step(nullptr, workspace_bytes, args, opt, nullptr);
    if (st != geopref::status::success) return;
    workspace = gb::device_buffer(std::max<size_t>(workspace_bytes, 1));
    if (!workspace.ok() || !outputs.ok()) st = geopref::status::cuda_error;
  }
  geopref::status run(cudaStream_t stream) {
    return gc::train_step(workspace.get(), workspace_bytes, args, opt, stream);
  }
  /// Device memory beyond inputs and gradient: workspace and outputs.
  double extra_bytes() const {
    return static_cast<double>(workspace_bytes) + static_cast<double>(outputs.bytes());
  }
  /// After a run: the device-side status (synchronises).
  geopref::status device_status() const {
    geopref::status recorded = geopref::status::success;
    const geopref::status s = gc::device_status(workspace.get(), nullptr, &recorded);
    return s != geopref::status::success ? s : recorded;
  }
};

/// A logits_grad call: the backward pass alone, from the lse [N] and g_s [S]
/// that a train_step without a gradient wrote (run once, untimed).
struct grad_call {
  gc::grad_args args{};
  geopref::options opt{};
  gb::device_buffer workspace, lse, seq_grad;
  size_t workspace_bytes = 0;
  geopref::status st = geopref::status::success;

  grad_call(const gpu_problem& pb, fused_call& fwd, void* grad) {
    const gb::shape& s = pb.s;
    lse = gb::device_buffer(static_cast<size_t>(s.rows) * sizeof(float));
    seq_grad = gb::device_buffer(static_cast<size_t>(s.seqs()) * sizeof(float));
    if (!lse.ok() || !seq_grad.ok()) {
      st = geopref::status::cuda_error;
      return;
    }
    fwd.args.lse = lse.get<float>();
    fwd.args.grad_seq_logps = seq_grad.get<float>();
    st = fwd.run(nullptr);
    if (st == geopref::status::success) st = fwd.device_status();
    fwd.args.lse = nullptr;
    fwd.args.grad_seq_logps = nullptr;
    if (st != geopref::status::success) return;
    args.tokens = fwd.args.tokens;
    args.lse = lse.get<float>();
    args.grad_seq_logps = seq_grad.get<float>();
    args.grad_logits = grad;
    opt = fwd.opt;
    st = gc::logits_grad(nullptr, workspace_bytes, args, opt, nullptr);
    if (st != geopref::status::success) return;
    workspace = gb::device_buffer(std::max<size_t>(workspace_bytes, 1));
    if (!workspace.ok()) st = geopref::status::cuda_error;
  }
  geopref::status run(cudaStream_t stream) {
    return gc::logits_grad(workspace.get(), workspace_bytes, args, opt, stream);
  }
  /// Device memory beyond inputs and gradient: workspace, lse and g_s.
  double extra_bytes() const {
    return static_cast<double>(workspace_bytes + lse.bytes() + seq_grad.bytes());
  }
  geopref::status device_status() const {
    geopref::status recorded = geopref::status::success;
    const geopref::status s = gc::device_status(workspace.get(), nullptr, &recorded);
    return s != geopref::status::success ? s : recorded;
  }
};

enum class phase { forward, backward, step };
const char* phase_name(phase p) {
  return p == phase::forward ? "forward" : p == phase::backward ? "backward" : "step";
}

/// A warm-up call, then the timed loop (the L2 flushed before each call),
/// then the device's status. False, with the benchmark skipped and why, when
/// any of them fails.
template <class Call>
bool timed_runs(benchmark::State& state, Call& call, const char* name, double* seconds) {
  if (call.run(nullptr) != geopref::status::success ||
      call.device_status() != geopref::status::success) {
    state.SkipWithError((std::string(name) + " failed on the warm-up call").c_str());
    return false;
  }
  gb::event_pair ev;
  gb::l2_flusher l2;
  geopref::status st = geopref::status::success;
  for (auto _ : state) {
    gb::cuda_event_timer timer(state, ev, l2, nullptr, seconds);
    st = call.run(nullptr);
  }
  if (st != geopref::status::success || call.device_status() != geopref::status::success) {
    state.SkipWithError((std::string(name) + " failed while timed").c_str());
    return false;
  }
  return true;
}

void bm_fused(benchmark::State& state, gb::shape s, dt d, phase ph, geopref::logit_transform tr) {
  gpu_problem& pb = problem_for(s, d);
  if (!pb.error.empty()) {
    state.SkipWithError(pb.error.c_str());
    return;
  }
  fused_call fwd(pb, nullptr, tr), step(pb, pb.grad.get(), tr);
  for (const fused_call* c : {&fwd, &step}) {
    if (c->st != geopref::status::success) {
      state.SkipWithError((std::string("train_step: ") + geopref::status_string(c->st)).c_str());
      return;
    }
  }
  if (ph == phase::backward) {
    grad_call bwd(pb, fwd, pb.grad.get());
    if (bwd.st != geopref::status::success) {
      state.SkipWithError((std::string("logits_grad: ") + geopref::status_string(bwd.st)).c_str());
      return;
    }
    double seconds = 0;
    if (!timed_runs(state, bwd, "logits_grad", &seconds)) return;
    set_counters(state, s, gb::fused_backward_bytes(s, sizes(d)), seconds, bwd.extra_bytes());
    return;
  }
  fused_call& main = ph == phase::forward ? fwd : step;
  double seconds = 0;
  if (!timed_runs(state, main, "train_step", &seconds)) return;
  const gb::element_sizes e = sizes(d);
  const double bytes = ph == phase::forward    ? gb::fused_forward_bytes(s, e)
                       : ph == phase::backward ? gb::fused_backward_bytes(s, e)
                                               : gb::fused_step_bytes(s, e);
  set_counters(state, s, bytes, seconds, main.extra_bytes());
}

// --- token: geopref::cuda::token_logps / token_logps_grad -----------------------

void bm_token(benchmark::State& state, gb::shape s, dt d, phase ph) {
  gpu_problem& pb = problem_for(s, d);
  if (!pb.error.empty()) {
    state.SkipWithError(pb.error.c_str());
    return;
  }
  const auto n = static_cast<size_t>(s.rows);
  gb::device_buffer logps(n * sizeof(float)), lse(n * sizeof(float)), g(n * sizeof(float));
  if (!logps.ok() || !lse.ok() || !g.ok()) {
    state.SkipWithError("device allocation of the per-row buffers failed");
    return;
  }
  std::vector<float> g_host(n);
  for (size_t t = 0; t < n; ++t) g_host[t] = 0.5f - static_cast<float>(t % 7) * 0.125f;
  cudaMemcpy(g.get(), g_host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  gc::token_logps_args fa;
  fa.rows.logits = pb.logits.get();
  fa.rows.logits_dtype = dt_api(d);
  fa.rows.n_rows = s.rows;
  fa.rows.vocab = s.vocab;
  fa.rows.ld = s.vocab;
  fa.rows.labels = pb.labels.get();
  fa.rows.label_type = gc::index_type::int32;
  fa.token_logps = logps.get<float>();
  fa.lse = lse.get<float>();
  gc::token_grad_args ba;
  ba.rows = fa.rows;
  ba.lse = lse.get<float>();
  ba.grad_token_logps = g.get<float>();
  ba.grad_logits = pb.grad.get();
  size_t fwd_bytes = 0, bwd_bytes = 0;
  geopref::status st = gc::token_logps(nullptr, fwd_bytes, fa);
  if (st == geopref::status::success) st = gc::token_logps_grad(nullptr, bwd_bytes, ba);
  gb::device_buffer ws(std::max<size_t>({fwd_bytes, bwd_bytes, size_t{1}}));
  if (st != geopref::status::success || !ws.ok()) {
    state.SkipWithError((std::string("token_logps: ") + geopref::status_string(st)).c_str());
    return;
  }
  size_t ws_bytes = ws.bytes();
  auto run = [&]() {
    return ph == phase::forward ? gc::token_logps(ws.get(), ws_bytes, fa)
                                : gc::token_logps_grad(ws.get(), ws_bytes, ba);
  };
  auto recorded = [&]() {
    geopref::status r = geopref::status::success;
    const geopref::status q = gc::device_status(ws.get(), nullptr, &r);
    return q != geopref::status::success ? q : r;
  };
  // The forward once untimed: the backward rows read its lse.
  if (gc::token_logps(ws.get(), ws_bytes, fa) != geopref::status::success ||
      recorded() != geopref::status::success || run() != geopref::status::success ||
      recorded() != geopref::status::success) {
    state.SkipWithError("token_logps failed on the warm-up call");
    return;
  }
  gb::event_pair ev;
  gb::l2_flusher l2;
  double seconds = 0;
  for (auto _ : state) {
    gb::cuda_event_timer timer(state, ev, l2, nullptr, &seconds);
    st = run();
  }
  if (st != geopref::status::success || recorded() != geopref::status::success) {
    state.SkipWithError("token_logps failed while timed");
    return;
  }
  // Forward: the logits once, labels, ℓ and lse. Backward: the logits, the
  // gradient, labels, lse and g.
  const double nv = static_cast<double>(s.elements()), e = static_cast<double>(dt_bytes(d));
  const double rows = static_cast<double>(s.rows) * (sizeof(label_t) + 2 * sizeof(float));
  const double bytes = ph == phase::forward ? nv * e + rows : 2 * nv * e + rows;
  set_counters(state, s, bytes, seconds, static_cast<double>(ws.bytes() + logps.bytes() + lse.bytes() + g.bytes()));
}

// --- naive ---------------------------------------------------------------------

template <class T>
__global__ void compare_kernel(const T* __restrict__ got, const T* __restrict__ want, int64_t n,
                               float atol, float rtol, unsigned long long* mismatches,
                               unsigned int* max_rel_bits) {
  unsigned long long bad = 0;
  float worst = 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const float a = gb::naive::to_float(got[k]), b = gb::naive::to_float(want[k]);
    const float err = fabsf(a - b);
    if (!(err <= atol + rtol * fabsf(b))) ++bad;
    worst = fmaxf(worst, err / (atol + fabsf(b)));
  }
  if (bad != 0) atomicAdd(mismatches, bad);
  atomicMax(max_rel_bits, __float_as_uint(worst));  // non-negative floats order as their bits
}

template <class T>
void bm_naive_t(benchmark::State& state, gpu_problem& pb, phase ph) {
  const gb::shape& s = pb.s;
  const double extra = gb::naive_extra_bytes(s);
  if (extra > static_cast<double>(gb::free_device_bytes())) {
    state.SkipWithError(("naive needs " + std::to_string(gib(extra)) + " GiB beyond the inputs, " +
                         std::to_string(gib(static_cast<double>(gb::free_device_bytes()))) +
                         " GiB free")
                            .c_str());
    return;
  }
  const size_t nv = static_cast<size_t>(s.elements());
  gb::device_buffer lp(nv * sizeof(float)), dlp(nv * sizeof(float)),
      small(gb::naive::small_floats(s.rows, s.seqs()) * sizeof(float));
  if (!lp.ok() || !dlp.ok() || !small.ok()) {
    state.SkipWithError("device allocation for the naive buffers failed");
    return;
  }
  const gb::naive::workspace ws = gb::naive::make_workspace(
      small.get<float>(), lp.get<float>(), dlp.get<float>(), s.rows, s.seqs());
  gb::naive::problem<T, label_t> np;
  np.logits = pb.logits.get<T>();
  np.n_rows = s.rows;
  np.vocab = s.vocab;
  np.labels = pb.labels.get<label_t>();
  np.offsets = pb.offsets.get<int64_t>();
  np.n_seqs = s.seqs();
  np.n_pairs = s.pairs();
  np.soft_labels = pb.soft.get<float>();
  np.ref_logps = pb.ref.get<float>();
  np.beta = BETA;
  T* grad = pb.grad.get<T>();

  // Warm-up, and the forward the backward rows need.
  gb::naive::forward(np, ws, nullptr);
  gb::naive::backward(np, ws, grad, nullptr);
  gb::event_pair ev;
  gb::l2_flusher l2;
  double seconds = 0;
  for (auto _ : state) {
    gb::cuda_event_timer timer(state, ev, l2, nullptr, &seconds);
    if (ph != phase::backward) gb::naive::forward(np, ws, nullptr);
    if (ph != phase::forward) gb::naive::backward(np, ws, grad, nullptr);
  }
  std::string err;
  if (!gb::cuda_ok(cudaDeviceSynchronize(), "naive kernels", &err) ||
      !gb::cuda_ok(cudaGetLastError(), "naive kernels", &err)) {
    state.SkipWithError(err.c_str());
    return;
  }
  const gb::element_sizes e = sizes(pb.dtype);
  const double bytes = ph == phase::forward    ? gb::naive_forward_bytes(s, e)
                       : ph == phase::backward ? gb::naive_backward_bytes(s, e)
                                               : gb::naive_step_bytes(s, e);
  set_counters(state, s, bytes, seconds, extra);

  if (ph != phase::step) return;
  // Cross-check: the fused step writes its gradient into dLP's memory (large
  // enough, no longer needed) and is compared with the naive gradient in
  // `grad`. Tolerance: both compute in fp32 from the same inputs; the
  // per-sequence coefficients differ by ~β·Δh (Δh from fp32 sums of ~500
  // token log-probs, ~1e-3 relative at worst), and bf16 output rounding
  // adds up to 2⁻⁸ relative between two independently rounded results.
  fused_call fc(pb, dlp.get());
  if (fc.st != geopref::status::success || fc.run(nullptr) != geopref::status::success ||
      fc.device_status() != geopref::status::success) {
    state.counters["check_mismatches"] = -1;  // fused path not available: no check
    return;
  }
  const float rtol = pb.dtype == dt::bf16 ? 2e-3f + 1.0f / 128.0f : 2e-3f;
  const float atol = 1e-12f;
  gb::device_buffer counters(sizeof(unsigned long long) + sizeof(unsigned int));
  cudaMemset(counters.get(), 0, counters.bytes());
  auto* mism = counters.get<unsigned long long>();
  auto* worst_bits = reinterpret_cast<unsigned int*>(mism + 1);
  compare_kernel<T><<<1024, 256>>>(dlp.get<T>(), grad, static_cast<int64_t>(nv), atol, rtol, mism,
                                    worst_bits);
  unsigned long long h_mism = 0;
  unsigned int h_worst = 0;
  float loss_naive = 0, loss_fused = 0;
  cudaMemcpy(&h_mism, mism, sizeof h_mism, cudaMemcpyDeviceToHost);
  cudaMemcpy(&h_worst, worst_bits, sizeof h_worst, cudaMemcpyDeviceToHost);
  cudaMemcpy(&loss_naive, ws.loss, sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(&loss_fused, fc.args.loss, sizeof(float), cudaMemcpyDeviceToHost);
  float worst = 0;
  std::memcpy(&worst, &h_worst, sizeof worst);
  const bool loss_ok = std::fabs(loss_naive - loss_fused) <= 1e-3f * std::max(1.0f, std::fabs(loss_naive));
  state.counters["check_mismatches"] = static_cast<double>(h_mism) + (loss_ok ? 0.0 : 1.0);
  state.counters["check_max_rel_err"] = worst;
  if (h_mism != 0 || !loss_ok) {
    g_check_failed = true;
    char msg[200];
    std::snprintf(msg, sizeof msg, "fused and naive disagree: %llu gradient elements, loss %.7g vs %.7g",
                  h_mism, static_cast<double>(loss_fused), static_cast<double>(loss_naive));
    state.SkipWithError(msg);
  }
}

void bm_naive(benchmark::State& state, gb::shape s, dt d, phase ph) {
  gpu_problem& pb = problem_for(s, d);
  if (!pb.error.empty()) {
    state.SkipWithError(pb.error.c_str());
    return;
  }
  if (d == dt::bf16)
    bm_naive_t<__nv_bfloat16>(state, pb, ph);
  else
    bm_naive_t<float>(state, pb, ph);
}

void add_context() {
  int dev = 0;
  cudaDeviceProp p{};
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&p, dev);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  benchmark::AddCustomContext("geopref.device", p.name);
  benchmark::AddCustomContext("geopref.sm_count", std::to_string(p.multiProcessorCount));
  benchmark::AddCustomContext("geopref.l2_MiB", std::to_string(p.l2CacheSize >> 20));
  benchmark::AddCustomContext("geopref.memory_GiB", std::to_string(p.totalGlobalMem >> 30));
  benchmark::AddCustomContext("geopref.cuda_driver", std::to_string(driver));
  benchmark::AddCustomContext("geopref.cuda_runtime", std::to_string(runtime));
  const char* commit = std::getenv("GEOPREF_COMMIT");
  benchmark::AddCustomContext("geopref.commit", commit != nullptr ? commit : "unknown");
  benchmark::AddCustomContext("geopref.iterations", std::to_string(g_iters));
}

}  // namespace

int main(int argc, char** argv) {
  gb::cli_options full, quick, opt;
  full.rows = 16384;
  full.seq_len = 512;  // 32 sequences, 16 pairs
  full.vocabs = {32000, 128256, 256000};
  full.dtypes = {"bf16", "fp32"};
  full.iters = 20;
  quick = full;  // the same shapes (they take seconds of GPU time), fewer iterations
  quick.iters = 5;
  std::string error;
  if (!gb::parse_cli(&argc, argv, full, quick, &opt, &error)) {
    std::fprintf(stderr, "bench_gpu: %s\n", error.c_str());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("bench_gpu: no usable CUDA device, skipped\n");
    return 77;
  }
  g_iters = opt.iters;
  add_context();

  // The roof first: every later row reports a fraction of it. 1 GiB each way.
  const size_t copy_bytes = size_t{1} << 30;
  benchmark::RegisterBenchmark(("gpu/copy/bytes:" + std::to_string(copy_bytes)).c_str(), bm_copy,
                               copy_bytes)
      ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
  for (const std::string& dname : opt.dtypes) {
    const dt d = dname == "bf16" ? dt::bf16 : dt::fp32;
    for (int64_t v : opt.vocabs) {
      const gb::shape s{opt.rows, v, opt.seq_len};
      const std::string tail = "/" + dname + "/N:" + std::to_string(s.rows) + "/V:" + std::to_string(v);
      for (phase ph : {phase::forward, phase::backward, phase::step}) {
        benchmark::RegisterBenchmark(("gpu/fused/" + std::string(phase_name(ph)) + tail).c_str(),
                                     bm_fused, s, d, ph, geopref::logit_transform{})
            ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
      }
      // The logit transform's costliest map, Gemma's soft-cap (docs/math.md §2.1): the
      // same bytes as gpu/fused, so its frac_copy against gpu/fused's is the cost of
      // the tanh (16-bit logits: the MUFU's; float: tanhf).
      for (phase ph : {phase::forward, phase::backward}) {
        benchmark::RegisterBenchmark(("gpu/fused_softcap/" + std::string(phase_name(ph)) + tail).c_str(),
                                     bm_fused, s, d, ph, geopref::logit_transform{1.0, 30.0, 1.0})
            ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
      }
      for (phase ph : {phase::forward, phase::backward}) {
        benchmark::RegisterBenchmark(("gpu/token/" + std::string(phase_name(ph)) + tail).c_str(),
                                     bm_token, s, d, ph)
            ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
      }
      for (phase ph : {phase::forward, phase::backward, phase::step}) {
        benchmark::RegisterBenchmark(("gpu/naive/" + std::string(phase_name(ph)) + tail).c_str(),
                                     bm_naive, s, d, ph)
            ->UseManualTime()->Iterations(g_iters)->Unit(benchmark::kMillisecond);
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_problem.reset();
  return g_check_failed ? 1 : 0;
}
