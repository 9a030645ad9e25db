// vocab_parallel_nccl — the whole vocab-parallel step through NCCL
// (geopref/nccl.cuh) on every GPU of this machine: K ranks, one per device
// (ncclCommInitAll, one host thread each), rank r holding the vocabulary
// slice [begin_r, begin_r + V_r) of every token row (geopref::cuda::
// even_slice). Each rank's records are all-gathered on the communicator,
// combined in rank order, and the gradient of its own slice is written. The
// result must equal the single-GPU train_step on the whole logits: the loss
// on every rank (and the same bits on every rank), each rank's columns of
// the gradient. Then a failing rank: the last rank gets too small a
// workspace; it must return workspace_too_small and every other rank must
// finish (no hang) with invalid_vocab_records on the device. With one GPU
// the group has one rank and the slice is the whole vocabulary. Across
// processes each rank would pass its own slice and a communicator from
// ncclCommInitRank (docs/distributed.md).
//
// Usage: vocab_parallel_nccl [K]   (K ranks on the first K devices; default all)
// Exit status: 0 checked, 1 a mismatch or an error, 77 no GPU (skipped).
#include <cuda_runtime.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "geopref/cuda/geopref.cuh"
#include "geopref/nccl.cuh"

namespace {

namespace gc = geopref::cuda;

template <class T>
T* upload(const std::vector<T>& v) {
  T* d = nullptr;
  if (cudaMalloc(&d, v.size() * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

int fail(const char* what, geopref::status s) {
  std::printf("vocab_parallel_nccl: %s: %s\n", what, geopref::status_string(s));
  return 1;
}

// One rank's device buffers and results.
struct rank_run {
  int device = 0;
  float* logits = nullptr;  // [N, V], the whole row: the rank reads its columns
  int64_t *labels = nullptr, *offsets = nullptr;
  float *soft = nullptr, *loss = nullptr, *grad = nullptr;  // grad [N, V]: its columns written
  gc::vocab_record* records = nullptr;                      // [K, N]
  cudaStream_t stream = nullptr;
  geopref::status host = geopref::status::internal_error, device_flag = geopref::status::internal_error;
  ncclResult_t nccl = ncclSuccess;
  float loss_value = 0;
  std::vector<float> grad_host;
};

// Rank r's step on its own device and thread; `short_ws`: one byte less
// workspace than asked for (the failing rank).
void run_rank(rank_run& r, const gc::train_args& whole, const geopref::options& opt, int rank,
              int K, ncclComm_t comm, bool short_ws) {
  cudaSetDevice(r.device);
  int64_t width = 0;
  geopref::nccl::train_args va;
  va.train = whole;
  va.slice = gc::even_slice(whole.tokens.vocab, rank, K, &width);
  va.train.tokens.logits = r.logits + va.slice.begin;  // this rank's columns, ld = V
  va.train.tokens.vocab = width;
  va.train.tokens.labels = r.labels;
  va.train.tokens.offsets = r.offsets;
  va.train.soft_labels = r.soft;
  va.train.loss = r.loss;
  va.train.grad_logits = r.grad + va.slice.begin;
  va.train.grad_ld = whole.tokens.vocab;
  va.records = r.records;
  size_t bytes = 0;
  r.host = geopref::nccl::train_step(nullptr, bytes, va, opt, comm, r.stream, &r.nccl);
  if (r.host != geopref::status::success) return;
  void* ws = nullptr;
  if (cudaMalloc(&ws, bytes) != cudaSuccess) {
    // Not the library's failure: the other ranks are not told and wait for
    // this one until NCCL's timeout. An application checks its allocations
    // (or pools them) before the step.
    std::fprintf(stderr, "rank %d: cudaMalloc(%zu) failed\n", rank, bytes);
    r.host = geopref::status::cuda_error;
    return;
  }
  if (short_ws) --bytes;
  r.host = geopref::nccl::train_step(ws, bytes, va, opt, comm, r.stream, &r.nccl);
  // Every rank, the failing one too, reads its device flag: the others'
  // steps ran and must have found the poisoned slot.
  if (gc::device_status(ws, r.stream, &r.device_flag) != geopref::status::success)
    r.device_flag = geopref::status::cuda_error;
  if (r.host == geopref::status::success) {
    cudaMemcpy(&r.loss_value, r.loss, sizeof(float), cudaMemcpyDeviceToHost);
    r.grad_host = download(r.grad, static_cast<size_t>(whole.tokens.n_rows * whole.tokens.vocab));
  }
  cudaFree(ws);
}

// All K ranks at once, one thread each (a single thread driving several
// devices would have to group the collectives, and the step is not one).
void run_group(std::vector<rank_run>& ranks, const gc::train_args& whole,
               const geopref::options& opt, const std::vector<ncclComm_t>& comms, int failing) {
  const int K = static_cast<int>(ranks.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < K; ++r)
    threads.emplace_back(run_rank, std::ref(ranks[r]), std::cref(whole), std::cref(opt), r, K,
                         comms[r], r == failing);
  for (std::thread& t : threads) t.join();
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("vocab_parallel_nccl: no CUDA device, skipped\n");
    return 77;
  }
  const int K = argc > 1 ? std::atoi(argv[1]) : devices;
  if (K < 1 || K > devices) {
    std::printf("vocab_parallel_nccl: K = %s, but %d device(s)\n", argc > 1 ? argv[1] : "?", devices);
    return 1;
  }
  // Four sequences of 24 tokens (two pairs, TRL's layout), V = 5003 (not a
  // multiple of any vector width), a few masked rows, soft labels.
  const int64_t S = 4, T = 24, N = S * T, V = 5003, P = 2;
  std::vector<float> logits(static_cast<size_t>(N * V));
  uint64_t state = 12345;
  auto next = [&state] {  // a small LCG: the example needs no <random> engine state
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(state >> 11) * 0x1p-53;
  };
  for (float& x : logits) x = static_cast<float>(6.0 * next() - 3.0);
  std::vector<int64_t> labels(static_cast<size_t>(N)), offsets;
  for (int64_t t = 0; t < N; ++t) labels[t] = t % 7 == 0 ? -100 : static_cast<int64_t>(next() * V);
  labels[5] = V - 1;  // the last column
  for (int64_t s = 0; s <= S; ++s) offsets.push_back(s * T);
  const std::vector<float> soft = {0.9f, 0.65f};

  float* d_logits = upload(logits);
  int64_t* d_labels = upload(labels);
  int64_t* d_offsets = upload(offsets);
  float* d_soft = upload(soft);
  float *d_loss = nullptr, *d_grad_ref = nullptr;
  cudaMalloc(&d_loss, sizeof(float));
  cudaMalloc(&d_grad_ref, static_cast<size_t>(N * V) * sizeof(float));

  geopref::options opt;
  opt.loss.type = geopref::loss_type::gdpo;
  opt.loss.beta = 0.1;
  gc::train_args a;
  a.tokens.logits = d_logits;
  a.tokens.logits_dtype = gc::dtype::float32;
  a.tokens.n_rows = N;
  a.tokens.vocab = V;
  a.tokens.ld = V;
  a.tokens.labels = d_labels;
  a.tokens.offsets = d_offsets;
  a.tokens.n_seqs = S;
  a.n_pairs = P;
  a.soft_labels = d_soft;
  a.loss = d_loss;
  a.grad_logits = d_grad_ref;
  a.grad_float32 = true;

  // The single-GPU step, for the check.
  size_t bytes = 0;
  geopref::status s = gc::train_step(nullptr, bytes, a, opt);
  if (s != geopref::status::success) return fail("train_step size", s);
  void* ws = nullptr;
  cudaMalloc(&ws, bytes);
  s = gc::train_step(ws, bytes, a, opt);
  if (s != geopref::status::success) return fail("train_step", s);
  cudaFree(ws);

  // The group: rank r on device r, each with its own copy of the inputs.
  std::vector<int> devs(static_cast<size_t>(K));
  for (int r = 0; r < K; ++r) devs[r] = r;
  std::vector<ncclComm_t> comms(static_cast<size_t>(K));
  if (ncclCommInitAll(comms.data(), K, devs.data()) != ncclSuccess) {
    std::printf("vocab_parallel_nccl: ncclCommInitAll over %d device(s) failed\n", K);
    return 1;
  }
  std::vector<rank_run> ranks(static_cast<size_t>(K));
  for (int r = 0; r < K; ++r) {
    rank_run& x = ranks[r];
    x.device = r;
    cudaSetDevice(r);
    x.logits = upload(logits);
    x.labels = upload(labels);
    x.offsets = upload(offsets);
    x.soft = upload(soft);
    cudaMalloc(&x.loss, sizeof(float));
    cudaMalloc(&x.grad, static_cast<size_t>(N * V) * sizeof(float));
    cudaMemset(x.grad, 0, static_cast<size_t>(N * V) * sizeof(float));
    cudaMalloc(&x.records, static_cast<size_t>(K * N) * sizeof(gc::vocab_record));
    cudaStreamCreate(&x.stream);
  }
  cudaSetDevice(0);
  const std::vector<float> loss_ref = download(d_loss, 1);
  const std::vector<float> g_ref = download(d_grad_ref, static_cast<size_t>(N * V));

  // Round 1: every rank well. Same loss as the single-GPU step, to float
  // rounding (the forward merges the same per-thread sums in another order:
  // a few float roundings of the loss, 1e-6 relative; each gradient element
  // (p − 1[v = y])·g_s with |g_s| < 1 moves by a few float roundings of
  // its own size, < 1e-7), the same bits on every rank (the rank-order
  // combine), and each rank's columns of the gradient.
  run_group(ranks, a, opt, comms, -1);
  bool ok = true;
  double worst = 0;
  for (int r = 0; r < K; ++r) {
    const rank_run& x = ranks[r];
    if (x.host != geopref::status::success || x.device_flag != geopref::status::success) {
      std::printf("vocab_parallel_nccl: rank %d: %s, device %s, NCCL %s\n", r,
                  geopref::status_string(x.host), geopref::status_string(x.device_flag),
                  ncclGetErrorString(x.nccl));
      ok = false;
      continue;
    }
    if (std::memcmp(&x.loss_value, &ranks[0].loss_value, sizeof(float)) != 0) {
      std::printf("vocab_parallel_nccl: rank %d's loss %.9g is not rank 0's %.9g\n", r,
                  x.loss_value, ranks[0].loss_value);
      ok = false;
    }
    int64_t width = 0;
    const gc::vocab_slice sl = gc::even_slice(V, r, K, &width);
    for (int64_t t = 0; t < N; ++t)
      for (int64_t v = sl.begin; v < sl.begin + width; ++v)
        worst = std::fmax(worst, std::fabs(x.grad_host[t * V + v] - g_ref[t * V + v]));
  }
  const double loss_err = std::fabs(ranks[0].loss_value - loss_ref[0]);
  ok = ok && loss_err <= 1e-6 * (1.0 + std::fabs(loss_ref[0])) && worst <= 1e-7;
  std::printf("vocab_parallel_nccl: %d rank(s), N = %lld, V = %lld: loss %.8g (single GPU %.8g), "
              "max |grad diff| %.3g: %s\n",
              K, static_cast<long long>(N), static_cast<long long>(V), ranks[0].loss_value,
              loss_ref[0], worst, ok ? "ok" : "MISMATCH");

  // Round 2: the last rank fails before the exchange (too small a
  // workspace). It returns that status; every other rank returns (no hang)
  // and its step reports invalid_vocab_records on the device.
  run_group(ranks, a, opt, comms, K - 1);
  bool failed_ok = ranks[K - 1].host == geopref::status::workspace_too_small;
  for (int r = 0; r + 1 < K; ++r)
    failed_ok = failed_ok && ranks[r].host == geopref::status::success &&
                ranks[r].device_flag == geopref::status::invalid_vocab_records;
  std::printf("vocab_parallel_nccl: rank %d failing: rank %d says %s, the others %s: %s\n", K - 1,
              K - 1, geopref::status_string(ranks[K - 1].host),
              K > 1 ? geopref::status_string(ranks[0].device_flag) : "(none)",
              failed_ok ? "ok" : "WRONG");

  for (int r = 0; r < K; ++r) ncclCommDestroy(comms[r]);
  return ok && failed_ok ? 0 : 1;
}
