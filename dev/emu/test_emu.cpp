// dev/emu/test_emu.cpp — the host emulator checked on its own, so that a
// passing emulated GPU test means something: bit-exact half/bfloat16
// conversions (against Eigen), block and grid indices, barriers and shuffles
// with the semantics kernels rely on, atomics, and the faults it must report
// (divergent barriers, bad shuffle masks, writes outside an allocation).
// Every kernel test runs with fibers and with OS threads.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>

#include <Eigen/Core>
#include <cmath>
#include <random>
#include <vector>

#include "geopref/cuda/detail/device.cuh"

using geopref::cuda::detail::launch;

namespace {

/// A float's bits, independently of the emulator's __float_as_uint (which its
/// conversions, under test here, are written with).
uint32_t float_bits(float x) { return Eigen::numext::bit_cast<uint32_t>(x); }

/// The emulator's two 16-bit types, each with Eigen's type of the same
/// format (the oracle) and the emulator's conversions on raw bits.
struct half_type {
  using eigen = Eigen::half;
  static float widen(uint16_t b) { return __half2float(__half{b}); }
  static uint16_t narrow(float x) { return __float2half_rn(x).__x; }
};
struct bfloat16_type {
  using eigen = Eigen::bfloat16;
  static float widen(uint16_t b) { return __bfloat162float(__nv_bfloat16{b}); }
  static uint16_t narrow(float x) { return __float2bfloat16_rn(x).__x; }
};

/// Floats that exercise rounding to T: every value of T, the midpoints
/// between neighbours (ties) and one float ulp either side, and random bit
/// patterns.
template <class T>
std::vector<float> rounding_probes() {
  std::vector<float> v;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float x = T::widen(static_cast<uint16_t>(b));
    const float y = T::widen(static_cast<uint16_t>(b + 1));
    v.push_back(x);
    if (std::isfinite(x) && std::isfinite(y) && (b & 0x7fffu) != 0x7fffu) {
      const float mid = static_cast<float>((static_cast<double>(x) + y) / 2);
      v.push_back(mid);
      v.push_back(std::nextafter(mid, INFINITY));
      v.push_back(std::nextafter(mid, -INFINITY));
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 1000000; ++i)
    v.push_back(Eigen::numext::bit_cast<float>(static_cast<uint32_t>(rng())));
  for (float x : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f, 5.96e-8f,
                  3.4e38f, INFINITY, -INFINITY})
    v.push_back(x);
  return v;
}

/// T's conversions against Eigen's: widening every one of the 65536 bit
/// patterns exactly (any NaN for a NaN), and rounding every probe to the
/// same bits (NaN to 0x7fff, as CUDA's host conversion).
template <class T>
void check_conversions() {
  using E = typename T::eigen;
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float want = static_cast<float>(Eigen::numext::bit_cast<E>(static_cast<uint16_t>(b)));
    const float got = T::widen(static_cast<uint16_t>(b));
    if (std::isnan(want)) CHECK(std::isnan(got));
    else CHECK(float_bits(got) == float_bits(want));
  }
  int64_t bad = 0;
  for (float x : rounding_probes<T>()) {
    const uint16_t got = T::narrow(x), want = Eigen::numext::bit_cast<uint16_t>(E(x));
    if (std::isnan(x) ? got != 0x7fff : got != want) {
      if (++bad < 10) FAIL_CHECK("float " << x << " (" << float_bits(x) << "): got " << got << " want " << want);
    }
  }
  CHECK(bad == 0);
}

/// Runs `body` once with fibers and once with OS threads.
template <class F>
void both_backends(F body) {
  for (const char* threads : {"0", "1"}) {
    setenv("GEOPREF_EMU_THREADS", threads, 1);
    INFO("GEOPREF_EMU_THREADS=" << threads);
    body();
  }
  unsetenv("GEOPREF_EMU_THREADS");
}

template <class T>
T* device_copy(const std::vector<T>& h) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, h.size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

// ---------------------------------------------------------------------------
// Kernels.

__global__ void index_kernel(int* out) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  out[b * nt + t] = static_cast<int>(b * 100000 + t);
}

/// out[i] = in[(i + 1) % n] through shared memory, behind a barrier.
__global__ void rotate_kernel(const int* in, int* out) {
  __shared__ int smem[256];
  smem[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}

#if !defined(__SANITIZE_THREAD__)
/// The same without the barrier: a race whose outcome depends on the order.
__global__ void racy_rotate_kernel(const int* in, int* out) {
  __shared__ int smem[256];
  smem[threadIdx.x] = in[threadIdx.x];
  out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}
#endif

/// Butterfly sum over each warp (doubles and 64-bit integers), then over the
/// block through the library's block_reduce.
__global__ void reduce_kernel(const double* in, double* warp_sums, long long* counts, double* block_sum) {
  __shared__ double smem[8];
  double v = in[threadIdx.x];
  long long c = 1;
  for (int o = 16; o > 0; o /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
    c += __shfl_xor_sync(0xffffffffu, c, o);
  }
  warp_sums[threadIdx.x] = v;
  counts[threadIdx.x] = c;
  const double s = geopref::cuda::detail::block_reduce<256>(in[threadIdx.x], geopref::cuda::detail::plus{},
                                                            0.0, smem);
  if (threadIdx.x == 0) *block_sum = s;
}

__global__ void atomic_kernel(int* flag) { atomicMin(flag, 1000 - static_cast<int>(threadIdx.x + blockIdx.x)); }

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x < 10) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) __syncthreads();
  out[threadIdx.x] = 1;
}

/// Half of each warp waits at __syncthreads, the other half at a shuffle:
/// neither can complete.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x % 32 < 16) __syncthreads();
  else out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void partial_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 1);
}

__global__ void lane_returns_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

#if !defined(__SANITIZE_ADDRESS__)
__global__ void overrun_kernel(int* out, int n) { out[n + static_cast<int>(threadIdx.x)] = 7; }
#endif

}  // namespace

TEST_CASE("half conversions are bit-exact round-to-nearest-even", "[emu]") {
  check_conversions<half_type>();
}

TEST_CASE("bfloat16 conversions are bit-exact round-to-nearest-even", "[emu]") {
  check_conversions<bfloat16_type>();
}

TEST_CASE("3-D grids and blocks: every thread runs once with its indices", "[emu]") {
  both_backends([] {
    const dim3 grid(3, 2, 2), block(8, 4, 2);
    const size_t n = 12 * 64;
    int* d = device_copy(std::vector<int>(n, -1));
    launch(index_kernel, grid, block, nullptr, d);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const auto h = host_copy(d, n);
    for (size_t i = 0; i < n; ++i) CHECK(h[i] == static_cast<int>(i / 64 * 100000 + i % 64));
    cudaFree(d);
  });
}

TEST_CASE("__syncthreads orders shared memory; without it the order shows", "[emu]") {
  std::vector<int> in(256);
  for (int i = 0; i < 256; ++i) in[i] = i * 3 + 1;
  int* d_in = device_copy(in);
  int* d_out = device_copy(std::vector<int>(256, 0));
  both_backends([&] {
    for (const char* order : {"forward", "reverse"}) {
      setenv("GEOPREF_EMU_ORDER", order, 1);
      launch(rotate_kernel, 1, 256, nullptr, d_in, d_out);
      REQUIRE(cudaGetLastError() == cudaSuccess);
      const auto h = host_copy(d_out, 256);
      for (int i = 0; i < 256; ++i) CHECK(h[i] == in[(i + 1) % 256]);
    }
  });
#if !defined(__SANITIZE_THREAD__)  // ThreadSanitizer reports this race itself (checked by hand)
  // With fibers, a missing barrier makes the result depend on the order in
  // which threads run (forward: every thread but the last reads a stale
  // value; reverse: all fresh), so running a test in both orders finds it.
  std::vector<std::vector<int>> got;
  for (const char* order : {"forward", "reverse"}) {
    setenv("GEOPREF_EMU_ORDER", order, 1);
    int* fresh = device_copy(std::vector<int>(256, 0));
    launch(racy_rotate_kernel, 1, 256, nullptr, d_in, fresh);
    got.push_back(host_copy(fresh, 256));
    cudaFree(fresh);
  }
  unsetenv("GEOPREF_EMU_ORDER");
  CHECK(got[0] != got[1]);
#endif
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_CASE("warp shuffles and the library's block_reduce", "[emu]") {
  both_backends([] {
    std::vector<double> in(256);
    for (int i = 0; i < 256; ++i) in[i] = 0.5 * i - 17.25;
    double* d_in = device_copy(in);
    double* d_warp = device_copy(std::vector<double>(256, 0));
    long long* d_count = device_copy(std::vector<long long>(256, 0));
    double* d_sum = device_copy(std::vector<double>(1, 0));
    launch(reduce_kernel, 1, 256, nullptr, d_in, d_warp, d_count, d_sum);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const auto warp = host_copy(d_warp, 256);
    const auto count = host_copy(d_count, 256);
    double total = 0;
    for (int w = 0; w < 8; ++w) {
      double s = 0;
      for (int l = 0; l < 32; ++l) s += in[w * 32 + l];
      total += s;
      for (int l = 0; l < 32; ++l) {
        CHECK(warp[w * 32 + l] == s);  // exact: halves of integers, small sums
        CHECK(count[w * 32 + l] == 32);
      }
    }
    CHECK(host_copy(d_sum, 1)[0] == total);
    for (void* p : {static_cast<void*>(d_in), static_cast<void*>(d_warp), static_cast<void*>(d_count),
                    static_cast<void*>(d_sum)})
      cudaFree(p);
  });
}

TEST_CASE("atomicMin over a grid", "[emu]") {
  both_backends([] {
    int* d = device_copy(std::vector<int>(1, 0x7f7f7f7f));
    launch(atomic_kernel, 4, 128, nullptr, d);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    CHECK(host_copy(d, 1)[0] == 1000 - 127 - 3);
    cudaFree(d);
  });
}

TEST_CASE("faults: divergent barriers and shuffles fail the launch", "[emu]") {
  both_backends([] {
    int* d = device_copy(std::vector<int>(256, 0));
    // Faults are asynchronous errors: the launch succeeds, the next
    // synchronising call reports them.
    launch(early_return_kernel, 2, 256, nullptr, d);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    launch(divergent_barrier_kernel, 1, 256, nullptr, d);
    CHECK(cudaStreamSynchronize(nullptr) == cudaErrorLaunchFailure);
    launch(deadlock_kernel, 1, 64, nullptr, d);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    launch(partial_mask_kernel, 1, 64, nullptr, d);
    std::vector<int> h(64);
    CHECK(cudaMemcpy(h.data(), d, 64 * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure);
    launch(lane_returns_kernel, 1, 64, nullptr, d);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    // The error is reported once, then the emulator works normally again.
    CHECK(cudaGetLastError() == cudaSuccess);
    launch(index_kernel, 1, 32, nullptr, d);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaFree(d);
  });
}

TEST_CASE("launch configuration and copy bounds are checked", "[emu]") {
  int* d = device_copy(std::vector<int>(16, 0));
  launch(index_kernel, 1, 2048, nullptr, d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  launch(index_kernel, dim3(1, 70000), 32, nullptr, d);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  std::vector<int> h(17);
  CHECK(cudaMemcpy(h.data(), d, 17 * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(h.data(), d + 1, 16 * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(h.data(), d + 1, 15 * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(cudaMemset(d + 8, 0, 9 * sizeof(int)) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d, h.data(), 4, cudaMemcpyHostToHost) == cudaSuccess);  // host to host: not checked
  CHECK(cudaFree(h.data()) == cudaErrorInvalidValue);
  CHECK(cudaFree(d) == cudaSuccess);
  // Fresh allocations are poisoned with 0xff bytes.
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, 64) == cudaSuccess);
  CHECK(host_copy(static_cast<int*>(p), 16) == std::vector<int>(16, -1));
  cudaFree(p);
}

#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer reports this write itself
TEST_CASE("a kernel writing past its allocation fails the launch", "[emu]") {
  int* d = device_copy(std::vector<int>(64, 0));
  launch(overrun_kernel, 1, 2, nullptr, d, 64);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK(cudaFree(d) == cudaErrorLaunchFailure);
}
#endif

TEST_CASE("streams: only CUDA's ordering is guaranteed", "[emu]") {
  // Upload on the legacy default stream, then a kernel on another stream.
  // A blocking stream waits for the upload; a non-blocking one does not, and
  // the emulator runs unordered work latest first, so its kernel sees the
  // poison of a fresh allocation instead of the data.
  std::vector<int> in(256);
  for (int i = 0; i < 256; ++i) in[i] = i;
  for (unsigned flags : {cudaStreamDefault, cudaStreamNonBlocking}) {
    cudaStream_t s = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&s, flags) == cudaSuccess);
    void *d_in = nullptr, *d_out = nullptr;
    REQUIRE(cudaMalloc(&d_in, 256 * sizeof(int)) == cudaSuccess);
    REQUIRE(cudaMalloc(&d_out, 256 * sizeof(int)) == cudaSuccess);
    REQUIRE(cudaMemcpy(d_in, in.data(), 256 * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    launch(rotate_kernel, 1, 256, s, static_cast<const int*>(d_in), static_cast<int*>(d_out));
    std::vector<int> out(256);
    REQUIRE(cudaMemcpyAsync(out.data(), d_out, 256 * sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    if (flags == cudaStreamDefault) CHECK(out[0] == 1);
    else CHECK(out[0] == -1);
    // After a device-wide synchronisation the data is there for everyone.
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    launch(rotate_kernel, 1, 256, s, static_cast<const int*>(d_in), static_cast<int*>(d_out));
    REQUIRE(cudaMemcpyAsync(out.data(), d_out, 256 * sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
    CHECK(out[0] == 1);
    CHECK(cudaStreamDestroy(s) == cudaSuccess);
    cudaFree(d_in);
    cudaFree(d_out);
  }
}
