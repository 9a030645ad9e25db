// vocab_parallel_nccl — the whole vocab-parallel step through NCCL
// (geopref/nccl.cuh): this process is one rank of a tensor-parallel group
// holding the vocabulary slice [begin, begin + V_r) of every token row; its
// records are all-gathered on the communicator, combined in rank order, and
// the gradient of its own slice is written. Here the group has one rank (one
// GPU, ncclCommInitAll), so the slice is the whole vocabulary and the result
// must equal the single-GPU train_step on the same logits: the example
// checks that and fails loudly otherwise. With K processes, each would pass
// its own slice (geopref::cuda::even_slice) and a communicator from
// ncclCommInitRank (docs/distributed.md).
//
// Exit status: 0 checked, 1 a mismatch or an error, 77 no GPU (skipped).
#include <cuda_runtime.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
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

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("vocab_parallel_nccl: no CUDA device, skipped\n");
    return 77;
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
  float *d_loss = nullptr, *d_grad_ref = nullptr, *d_grad = nullptr;
  gc::vocab_record* d_records = nullptr;
  cudaMalloc(&d_loss, 2 * sizeof(float));
  cudaMalloc(&d_grad_ref, static_cast<size_t>(N * V) * sizeof(float));
  cudaMalloc(&d_grad, static_cast<size_t>(N * V) * sizeof(float));
  cudaMalloc(&d_records, static_cast<size_t>(N) * sizeof(gc::vocab_record));

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

  // The vocab-parallel step of rank 0 of a one-rank group.
  ncclComm_t comm;
  const int dev0 = 0;
  if (ncclCommInitAll(&comm, 1, &dev0) != ncclSuccess) {
    std::printf("vocab_parallel_nccl: ncclCommInitAll failed\n");
    return 1;
  }
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  int64_t width = 0;
  geopref::nccl::train_args va;
  va.train = a;
  va.train.loss = d_loss + 1;
  va.train.grad_logits = d_grad;
  va.slice = gc::even_slice(V, 0, 1, &width);
  va.train.tokens.logits = d_logits + va.slice.begin;  // this rank's slice
  va.train.tokens.vocab = width;
  va.train.grad_logits = d_grad + va.slice.begin;
  va.train.grad_ld = V;
  va.records = d_records;  // [1, N]: the gather buffer of a one-rank group
  ncclResult_t nr = ncclSuccess;
  s = geopref::nccl::train_step(nullptr, bytes, va, opt, comm, stream, &nr);
  if (s != geopref::status::success) return fail("nccl::train_step size", s);
  cudaMalloc(&ws, bytes);
  s = geopref::nccl::train_step(ws, bytes, va, opt, comm, stream, &nr);
  if (s != geopref::status::success) {
    std::printf("vocab_parallel_nccl: NCCL says %s\n", ncclGetErrorString(nr));
    return fail("nccl::train_step", s);
  }
  geopref::status dev = geopref::status::internal_error;
  s = gc::device_status(ws, stream, &dev);
  if (s != geopref::status::success || dev != geopref::status::success)
    return fail("device status", s != geopref::status::success ? s : dev);

  // Same loss and gradient as the single-GPU step, to float rounding: the
  // forward merges the same per-thread sums in a different order.
  const std::vector<float> loss = download(d_loss, 2);
  const std::vector<float> g_ref = download(d_grad_ref, static_cast<size_t>(N * V));
  const std::vector<float> g = download(d_grad, static_cast<size_t>(N * V));
  double worst = 0;
  for (size_t i = 0; i < g.size(); ++i) worst = std::fmax(worst, std::fabs(g[i] - g_ref[i]));
  const double loss_err = std::fabs(loss[1] - loss[0]);
  const bool ok = loss_err <= 1e-6 * (1.0 + std::fabs(loss[0])) && worst <= 1e-7;
  std::printf("vocab_parallel_nccl: 1 rank, N = %lld, V = %lld: loss %.8g (single GPU %.8g), "
              "max |grad diff| %.3g: %s\n",
              static_cast<long long>(N), static_cast<long long>(V), loss[1], loss[0], worst,
              ok ? "ok" : "MISMATCH");
  ncclCommDestroy(comm);
  return ok ? 0 : 1;
}
