// bench/gpu/cuda_timer.cuh — CUDA-event timing for Google Benchmark's manual
// time and error checks for the GPU benches (device buffers: dev/support).
//
// cuda_event_timer follows rmm's benchmark timer: construct it at the top of
// the timed loop body, it empties the L2 cache (a memset over an L2-sized
// buffer, before the start event) and records the start event; its destructor
// records the stop event, waits for it and hands the elapsed time to
// state.SetIterationTime. Only device time between the two events counts, so
// launch gaps on the host are not measured and the cache starts cold on every
// iteration (inputs here are also far larger than L2).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "device_buffer.hpp"

namespace geopref::bench {

using support::device_buffer;
using support::free_device_bytes;

/// Throws nothing: records the first CUDA error for the benchmark to report.
inline bool cuda_ok(cudaError_t e, const char* what, std::string* error) {
  if (e == cudaSuccess) return true;
  if (error != nullptr && error->empty())
    *error = std::string(what) + ": " + cudaGetErrorString(e);
  return false;
}

/// A buffer as large as the L2 cache, written before each timed iteration.
class l2_flusher {
 public:
  l2_flusher() {
    int dev = 0, l2 = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev) == cudaSuccess && l2 > 0)
      buffer_ = device_buffer(static_cast<size_t>(l2) * 2);  // 2×: no line survives
  }
  void flush(cudaStream_t stream) const {
    if (buffer_.ok()) cudaMemsetAsync(buffer_.get(), 0, buffer_.bytes(), stream);
  }

 private:
  device_buffer buffer_;
};

/// Two CUDA events, created once per benchmark.
class event_pair {
 public:
  event_pair() {
    cudaEventCreate(&start_);
    cudaEventCreate(&stop_);
  }
  event_pair(const event_pair&) = delete;
  event_pair& operator=(const event_pair&) = delete;
  ~event_pair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

/// Times one iteration on `stream`; see the file comment.
class cuda_event_timer {
 public:
  cuda_event_timer(benchmark::State& state, const event_pair& events, const l2_flusher& l2,
                   cudaStream_t stream, double* seconds_sum)
      : state_(state), events_(events), stream_(stream), seconds_sum_(seconds_sum) {
    l2.flush(stream);
    cudaEventRecord(events_.start(), stream_);
  }
  cuda_event_timer(const cuda_event_timer&) = delete;
  cuda_event_timer& operator=(const cuda_event_timer&) = delete;
  ~cuda_event_timer() {
    cudaEventRecord(events_.stop(), stream_);
    cudaEventSynchronize(events_.stop());
    float ms = 0;
    cudaEventElapsedTime(&ms, events_.start(), events_.stop());
    const double s = static_cast<double>(ms) * 1e-3;
    if (seconds_sum_ != nullptr) *seconds_sum_ += s;
    state_.SetIterationTime(s);
  }

 private:
  benchmark::State& state_;
  const event_pair& events_;
  cudaStream_t stream_;
  double* seconds_sum_;
};

/// Device seconds of whatever `enqueue` puts on `stream`, with a cold L2.
template <class Fn>
double time_once(const event_pair& events, const l2_flusher& l2, cudaStream_t stream,
                 Fn&& enqueue) {
  l2.flush(stream);
  cudaEventRecord(events.start(), stream);
  enqueue();
  cudaEventRecord(events.stop(), stream);
  cudaEventSynchronize(events.stop());
  float ms = 0;
  cudaEventElapsedTime(&ms, events.start(), events.stop());
  return static_cast<double>(ms) * 1e-3;
}

}  // namespace geopref::bench
