// geopref/cuda/detail/device.cuh — device helpers shared by the kernels:
// element conversion, 16-byte vectors, deterministic block reductions, the
// status flag.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/status.hpp"

// Template kernels get hidden visibility so that two shared libraries that
// both include these headers do not resolve each other's instantiations
// (cuCollections does the same).
#define GEOPREF_KERNEL __attribute__((visibility("hidden"))) __global__

namespace geopref::cuda::detail {

// ---------------------------------------------------------------------------
// Element conversion. fp32 is the arithmetic type of every kernel.

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// W elements of T that fill 16 bytes: one ld.global.v4 / st.global.v4.
template <class T>
struct vec_width {
  static constexpr int value = static_cast<int>(16 / sizeof(T));
};

/// W elements of U moved as whole 16-byte words (W·sizeof(U) is 16 or 32).
template <class U, int W>
struct alignas(16) vec {
  U v[W];
};

// ---------------------------------------------------------------------------
// Deterministic reductions: a fixed shuffle tree inside each warp, then warp
// 0 combines the per-warp values in warp order. No atomics, so the result
// depends only on the inputs and BLOCK.

__device__ __forceinline__ lse_state shfl_xor(lse_state v, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, v.m, lane_mask),
          __shfl_xor_sync(0xffffffffu, v.s, lane_mask)};
}
__device__ __forceinline__ double shfl_xor(double v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}
__device__ __forceinline__ long long shfl_xor(long long v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}

struct merge_lse {
  __device__ lse_state operator()(lse_state a, lse_state b) const { return lse_merge(a, b); }
};
struct plus {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

/// Reduces one value per thread over the block; every thread gets the result.
/// `smem` holds BLOCK / 32 values. Contains two __syncthreads(), so every
/// thread of the block must call it.
template <int BLOCK, class T, class Op>
__device__ T block_reduce(T v, Op op, T identity, T* smem) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32, at most 1024");
  constexpr int WARPS = BLOCK / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = op(v, shfl_xor(v, o));
  if (lane == 0) smem[warp] = v;
  __syncthreads();  // all per-warp values are in smem
  T r = identity;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) r = op(r, smem[w]);  // every thread, same order
  __syncthreads();  // smem may be reused by the caller after this
  return r;
}

// ---------------------------------------------------------------------------
// The device-side status flag (see workspace.cuh: STATUS_NONE, atomicMin).

__device__ __forceinline__ void record(int* flag, status s) {
  atomicMin(flag, static_cast<int>(s));
}

/// kernel<<<grid, block, 0, stream>>>(args...): every launch of the library
/// goes through here. Under GEOPREF_HOST_EMULATION (dev/emu: a C++ build
/// with the emulator's cuda_runtime.h, dev/emu/README.md) the kernel is queued
/// on the host's emulated stream instead; errors surface as with a real
/// launch (configuration: cudaGetLastError; faults while running: the next
/// synchronising call).
template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
#if defined(GEOPREF_HOST_EMULATION)
  ::cuda_emu::launch(grid, block, stream, [=] { kernel(args...); });  // copies, as a launch does
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

/// 64-bit global thread index and stride for grid-stride loops.
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace geopref::cuda::detail
