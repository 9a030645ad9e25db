// dev/emu/include/cuda_runtime.h — host emulator of the CUDA subset that
// geopref's kernels and GPU tests use (see dev/emu/README.md).
//
// Put this directory first on the include path of a C++ (not nvcc) build and
// define GEOPREF_HOST_EMULATION: kernels then compile as ordinary C++ and
// geopref::cuda::detail::launch runs them through cuda_emu::launch, every
// block of the grid one after another, each block's threads as concurrent
// emulated threads (fibers by default, OS threads on request or under
// ThreadSanitizer). "Device" memory is host memory with guard bands.
//
// What it checks: indexing, masking, barrier and warp-shuffle structure
// (a barrier or shuffle that not every thread of its group reaches is a
// reported fault, not a hang), atomics, error flags, determinism, and the
// bounds of every cudaMemcpy/cudaMemset. What it cannot check: the GPU's
// rounding (math functions are the host's), memory ordering beyond the
// barriers, performance, real memory limits.
#pragma once

#ifndef GEOPREF_HOST_EMULATION
#error "dev/emu/include is the host emulator of CUDA: define GEOPREF_HOST_EMULATION to use it"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

// ---------------------------------------------------------------------------
// Keywords. Kernels are plain functions; shared memory is a static variable
// (one block runs at a time, so one instance per kernel is enough).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static

// ---------------------------------------------------------------------------
// Vector types and built-in variables.
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}

// Per emulated thread. Fibers of one block share an OS thread: the scheduler
// sets threadIdx before it resumes each fiber.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// ---------------------------------------------------------------------------
// Runtime API types.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
inline constexpr unsigned int cudaStreamDefault = 0;
inline constexpr unsigned int cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
  int warpSize;
  int maxThreadsPerBlock;
};

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

// ---------------------------------------------------------------------------
// Runtime API (dev/emu/emu_runtime.cpp). Stream work is queued and runs
// when the host has to see its effect (synchronisation, copies to host
// memory, cudaFree), unordered work latest first; see emu_runtime.cpp.
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemset2DAsync(void* ptr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);

// ---------------------------------------------------------------------------
// Emulator internals used by the device intrinsics below and by the launch
// helper of geopref/cuda/detail/device.cuh.
namespace cuda_emu {

/// Queues a launch on `stream`: when it runs, `thread_body` runs once per
/// thread of every block of the grid (blocks in order, or reversed with
/// GEOPREF_EMU_ORDER=reverse). A bad configuration is the launch's error at
/// once; a fault while it runs (divergent barrier, bad shuffle mask,
/// corrupted guard band) is printed and reported by the next synchronising
/// call, as an asynchronous error is in CUDA. The body owns copies of the
/// kernel's arguments.
void launch(dim3 grid, dim3 block, cudaStream_t stream, std::function<void()> thread_body);

void sync_block();  // __syncthreads
int lane_id();      // the calling thread's lane in its warp
/// One warp shuffle: publishes `bytes` of `in`, waits for the whole warp
/// (mask must be 0xffffffff and the warp full), copies lane src_lane's into `out`.
void warp_exchange(const void* in, void* out, size_t bytes, unsigned int mask, int src_lane);
[[noreturn]] void fault(const char* what);                   // from an emulated thread

}  // namespace cuda_emu

// ---------------------------------------------------------------------------
// Device intrinsics.
inline void __syncthreads() { cuda_emu::sync_block(); }

template <class T>
T __shfl_sync(unsigned int mask, T v, int src_lane, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of a small value");
  if (width != 32) cuda_emu::fault("__shfl_sync: only width 32 is emulated");
  T r;
  cuda_emu::warp_exchange(&v, &r, sizeof(T), mask, src_lane & 31);
  return r;
}
template <class T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
  if (width != 32) cuda_emu::fault("__shfl_xor_sync: only width 32 is emulated");
  return __shfl_sync(mask, v, cuda_emu::lane_id() ^ (lane_mask & 31));
}

// A float's bits and back (a register move on the device); also what the
// emulator's __half and __nv_bfloat16 conversions are written with.
inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Atomics on "device" memory: GCC builtins, sequentially consistent (ThreadSanitizer
// understands them).
inline int atomicMin(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v > old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
